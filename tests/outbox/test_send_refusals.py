"""A relay in a bad mood (issue 24), against a real aiosmtpd relay and PostgreSQL: only a
refusal of the recipient's mailbox erases, and only when it is no burst; a burst pauses
the campaign (visible on /metrics and the dashboard) until the operator resumes or
cancels; throttles slow the lane down without spending the jobs' attempts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from tests import people, support
from tests.admin.test_dashboard import browser, sign_in
from tests.conftest import running
from tests.signup_helpers import wait_until

SENDER_REJECTED = "550 5.1.8 <bounces@newsletter.test>: Sender address rejected: Domain not found"


class MoodyRelay(support.SmtpSink):
    """Answers each RCPT with `answer(address)` (None: accepted)."""

    def __init__(self, answer: Callable[[str], str | None]) -> None:
        super().__init__()
        self.answer = answer
        self.refused: list[str] = []

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:
        reply = self.answer(address)
        if reply is not None:
            self.refused.append(address)
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"


@contextlib.asynccontextmanager
async def relay(make_settings, answer: Callable[[str], str | None], **overrides):
    sink = MoodyRelay(answer)
    await sink.start()
    try:
        async with running(make_settings(smtp_url=sink.url, **overrides)) as (app, client):
            yield sink, app, client
    finally:
        await sink.stop()


async def send_campaign(db, client, admin_headers, subscribers: int) -> int:
    await people.add_many(db, subscribers)
    campaign_id = await people.add_campaign(db)
    queued = await client.post(f"/admin/api/campaigns/{campaign_id}/send", headers=admin_headers)
    assert queued.json() == {"queued": subscribers}
    return campaign_id


async def paused(db, campaign_id: int) -> str | None:
    return await db.fetchval("SELECT paused_reason FROM campaigns WHERE id = $1", campaign_id)


def metric(app, name: str, **labels: str) -> float:
    return app.state.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_relay_refusing_our_sender_erases_nobody_and_pauses_the_campaign(
    make_settings, db, admin_headers
) -> None:
    """The issue's case: 200 subscribers, every RCPT refused with 5.1.8 (Postfix's
    reject_unknown_sender_domain with a 5xx code)."""
    async with relay(make_settings, lambda _address: SENDER_REJECTED) as (sink, app, client):
        campaign_id = await send_campaign(db, client, admin_headers, 200)
        await wait_until(lambda: paused(db, campaign_id))
        assert await paused(db, campaign_id) == "sender"
        assert await db.fetchval("SELECT count(*) FROM subscribers") == 200
        # the rest wait, parked beyond every claim; nobody is mailed meanwhile
        await asyncio.sleep(0.5)
        refused = len(sink.refused)
        await asyncio.sleep(0.5)
        assert len(sink.refused) == refused
        assert await db.fetchval("SELECT count(*) FROM bounce_counts") == 0
        exposition = (await client.get("/metrics")).text
        assert 'campaigns_paused{reason="sender"} 1.0' in exposition
        assert 'send_refusals_total{category="sender"}' in exposition
        stats = (
            await client.get(f"/admin/api/campaigns/{campaign_id}/stats", headers=admin_headers)
        ).json()
        assert stats["paused"]["reason"] == "sender"
        assert stats["refusals"][0]["category"] == "sender"
        assert stats["refusals"][0]["code"] == "550 5.1.8"
        async with browser(app) as web:
            await sign_in(web)
            page = (await web.get(f"/admin/campaigns/{campaign_id}")).text
            listed = (await web.get("/admin/campaigns")).text
        assert 'id="paused-reason">sender<' in page
        assert "our sender address" in page
        assert f'action="/admin/campaigns/{campaign_id}/resume"' in page
        assert "paused (sender)" in listed
        # the operator fixes the relay and resumes: every email goes out
        sink.answer = lambda _address: None
        resumed = await client.post(
            f"/admin/api/campaigns/{campaign_id}/resume", headers=admin_headers
        )
        assert resumed.status_code == 200
        assert resumed.json()["resumed"] == 200 - await db.fetchval(
            "SELECT sent FROM campaigns WHERE id = $1", campaign_id
        )
        await sink.wait_for(200)
        await wait_until(
            lambda: db.fetchval("SELECT sent = 200 FROM campaigns WHERE id = $1", campaign_id)
        )
        assert await paused(db, campaign_id) is None
        assert 'campaigns_paused{reason="sender"}' not in (await client.get("/metrics")).text
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 200


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("550 5.4.5 Daily user sending quota exceeded", "throttle"),  # Google Workspace
        ("554 Throttling failure: Daily message quota exceeded.", "throttle"),  # Amazon SES
        ("550 5.7.1 Service unavailable; client host blocked", "policy"),
        ("550 5.3.0 Mail system full", "system"),
        ("550 5.1.1 <bounces@newsletter.test>: sender unknown", "sender"),  # quotes us
    ],
)
async def test_refusals_not_about_the_recipients_mailbox_erase_nobody(
    make_settings, db, admin_headers, reply, reason
) -> None:
    async with relay(make_settings, lambda _address: reply) as (_sink, _app, client):
        campaign_id = await send_campaign(db, client, admin_headers, 60)
        await wait_until(lambda: paused(db, campaign_id))
        assert await paused(db, campaign_id) == reason
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 60
    assert await db.fetchval("SELECT count(*) FROM held_refusals") == 0
    assert await db.fetchval("SELECT count(*) FROM bounce_counts") == 0


async def test_a_mailbox_refusal_of_one_recipient_among_many_erases_that_one(
    make_settings, db, admin_headers
) -> None:
    def answer(address: str) -> str | None:
        return (
            f"550 5.1.1 <{address}>: Recipient address rejected" if "reader7@" in address else None
        )

    async with relay(make_settings, answer) as (sink, _app, client):
        campaign_id = await send_campaign(db, client, admin_headers, 100)
        await sink.wait_for(99)
        await wait_until(
            lambda: db.fetchval(
                "SELECT count(*) = 0 FROM subscribers WHERE email = 'reader7@example.org'"
            )
        )
        assert await paused(db, campaign_id) is None
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 99
    row = await db.fetchrow("SELECT event, source, reason, count FROM bounce_counts")
    assert tuple(row) == ("hard", "smtp", "5.1.1", 1)
    assert await db.fetchval("SELECT failed FROM campaigns") == 1


async def test_a_relay_refusing_every_mailbox_pauses_and_erases_nobody(
    make_settings, db, admin_headers
) -> None:
    """5.1.1 for everyone is a relay whose recipient table is wrong, not a dead list: the
    held refusals of the burst are queued again, not applied."""
    refuse = "550 5.1.1 <{}>: Recipient address rejected: User unknown in relay recipient table"
    async with relay(make_settings, refuse.format) as (sink, _app, client):
        campaign_id = await send_campaign(db, client, admin_headers, 80)
        await wait_until(lambda: paused(db, campaign_id))
        assert await paused(db, campaign_id) == "mailbox"
        await asyncio.sleep(0.3)
        assert await db.fetchval("SELECT count(*) FROM subscribers") == 80
        assert await db.fetchval("SELECT count(*) FROM held_refusals") == 0
        # every email still waits to be sent (requeued or parked)
        assert await db.fetchval(
            "SELECT count(*) FROM outbox WHERE campaign_id = $1 AND run_at = 'infinity'",
            campaign_id,
        ) == 80 - len(sink.messages)
        # cancel: the emails not sent are dropped, nobody erased
        cancelled = await client.post(
            f"/admin/api/campaigns/{campaign_id}/cancel", headers=admin_headers
        )
        assert cancelled.json() == {"cancelled": 80}
        assert await paused(db, campaign_id) is None
        assert await db.fetchval("SELECT count(*) FROM outbox") == 0
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 80
    assert await db.fetchval("SELECT count(*) FROM bounce_counts") == 0


@pytest.mark.parametrize(
    "reply", ["421 4.7.0 Try again later, closing connection", "451 4.3.0 Rate limited"]
)
async def test_throttles_slow_the_lane_down_and_keep_the_jobs_attempts(
    make_settings, db, admin_headers, reply
) -> None:
    answers = [reply] * 6

    def answer(_address: str) -> str | None:
        return answers.pop() if answers else None

    async with relay(make_settings, answer, outbox_max_attempts=2) as (sink, app, client):
        await send_campaign(db, client, admin_headers, 10)
        await sink.wait_for(10)
        await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
        assert metric(app, "emails_failed_total", kind="campaign", outcome="throttled") == 6
        assert metric(app, "emails_failed_total", kind="campaign", outcome="gave_up") == 0
    # six throttles, yet with two attempts per job nobody was given up
    assert tuple(await db.fetchrow("SELECT sent, failed FROM campaigns")) == (10, 0)


async def test_the_dashboard_resumes_and_cancels_a_paused_campaign(
    make_settings, db, admin_headers
) -> None:
    async with relay(make_settings, lambda _address: SENDER_REJECTED) as (sink, app, client):
        campaign_id = await send_campaign(db, client, admin_headers, 40)
        await wait_until(lambda: paused(db, campaign_id))
        async with browser(app) as web:
            csrf = await sign_in(web)
            answer = await web.post(f"/admin/campaigns/{campaign_id}/resume", data={"csrf": csrf})
            assert answer.status_code == 303
            assert await paused(db, campaign_id) is None
            await wait_until(lambda: paused(db, campaign_id))  # the relay still refuses
            answer = await web.post(f"/admin/campaigns/{campaign_id}/cancel", data={"csrf": csrf})
            assert answer.status_code == 303
        assert await db.fetchval("SELECT count(*) FROM outbox") == 0
        assert await paused(db, campaign_id) is None
        not_paused = await client.post(
            f"/admin/api/campaigns/{campaign_id}/resume", headers=admin_headers
        )
        assert not_paused.status_code == 409
    assert sink.messages == []
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 40


async def test_a_trip_after_the_campaign_was_cancelled_does_not_pause_it(db) -> None:
    """A batch refused while the operator cancels: the breaker judges its window after the
    cancel and finds the campaign with nothing left to hold back. Pausing it would show a
    cancelled campaign as paused (and let a resume answer 200); it stays as cancelled."""
    from service.outbox import breaker

    campaign_id = await people.add_campaign(db)
    subscriber_id = await people.add_subscriber(db, "held@example.org")
    await db.execute(
        "INSERT INTO outbox (kind, subscriber_id, campaign_id) VALUES ('campaign', $1, $2)",
        subscriber_id,
        campaign_id,
    )
    await db.execute(
        "INSERT INTO held_refusals (subscriber_id, campaign_id, kind, reason, holder)"
        " VALUES ($1, $2, 'campaign', '5.1.1', 'worker')",
        subscriber_id,
        campaign_id,
    )
    assert await breaker.cancel(db, campaign_id) == 1
    assert await db.fetchval("SELECT count(*) FROM held_refusals") == 0
    assert await breaker.pause(db, campaign_id, "mailbox") is False
    assert await db.fetchval("SELECT paused_at FROM campaigns WHERE id = $1", campaign_id) is None
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0
    # A campaign with emails waiting is still paused by a trip.
    other = await people.add_campaign(db, "Summer news")
    await db.execute(
        "INSERT INTO outbox (kind, subscriber_id, campaign_id) VALUES ('campaign', $1, $2)",
        subscriber_id,
        other,
    )
    assert await breaker.pause(db, other, "mailbox") is True
