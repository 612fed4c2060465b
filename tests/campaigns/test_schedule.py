"""Scheduled sends (issue 28) through the admin API, the real worker loop, PostgreSQL and
a real SMTP server: sent at the time, once, across a restart; cancelled before it starts;
refused once the send started and for a time that is past, malformed or without offset."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests import people

POLL = 0.1  # SCHEDULE_POLL_INTERVAL of these tests
CAMPAIGN = {"name": "Scheduled", "subject": "Hello {{ name }}", "html": "<p>Hi</p>", "text": "Hi"}


def rfc3339(at: datetime) -> str:
    return at.isoformat()


async def until(check: Callable[[], Awaitable[object]], what: str, timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


async def create(client, admin_headers) -> int:
    created = await client.post("/admin/api/campaigns", json=CAMPAIGN, headers=admin_headers)
    assert created.status_code == 201, created.text
    return created.json()["id"]


async def state(db: asyncpg.Connection, campaign_id: int) -> asyncpg.Record:
    return await db.fetchrow(
        "SELECT scheduled_at, first_sent_at, recipients,"
        " (SELECT count(*) FROM deliveries WHERE campaign_id = $1) AS deliveries"
        " FROM campaigns WHERE id = $1",
        campaign_id,
    )


async def test_a_scheduled_send_starts_at_its_time_and_mails_everyone_once(
    app_factory, db, smtp, admin_headers
) -> None:
    await people.add_many(db, 5)
    async with app_factory(schedule_poll_interval=POLL) as (_app, client):
        campaign_id = await create(client, admin_headers)
        at = datetime.now(UTC) + timedelta(seconds=1.5)
        answer = await client.post(
            f"/admin/api/campaigns/{campaign_id}/send",
            json={"at": rfc3339(at.astimezone(UTC))},
            headers=admin_headers,
        )
        assert answer.status_code == 202, answer.text
        assert datetime.fromisoformat(answer.json()["scheduled_at"]) == at
        shown = await client.get(f"/admin/api/campaigns/{campaign_id}", headers=admin_headers)
        assert datetime.fromisoformat(shown.json()["scheduled_at"]) == at
        before = await state(db, campaign_id)
        assert before["deliveries"] == 0 and before["first_sent_at"] is None
        assert await db.fetchval("SELECT count(*) FROM outbox") == 0

        messages = await smtp.wait_for(5, timeout=20)
        after = await state(db, campaign_id)
        # Not before its time; how soon after it is SCHEDULE_POLL_INTERVAL's matter (about
        # 1 s with the default 2 s poll, measured), not a wall-clock bound of this test.
        assert after["first_sent_at"] >= at
        assert after["scheduled_at"] is None
        await asyncio.sleep(5 * POLL)  # a later look queues nothing again
        assert (await state(db, campaign_id))["deliveries"] == 5
    assert Counter(m.to for m in smtp.messages) == Counter(m.to for m in messages)
    assert len(smtp.messages) == 5 and len({m.to for m in smtp.messages}) == 5
    shown = shown.json()
    assert shown["first_sent_at"] is None  # as the API showed it before the time


async def test_a_schedule_survives_a_restart_and_is_sent_once_after_it(
    app_factory, db, smtp, admin_headers
) -> None:
    await people.add_many(db, 3)
    async with app_factory(schedule_poll_interval=POLL) as (_app, client):
        campaign_id = await create(client, admin_headers)
        at = datetime.now(UTC) + timedelta(seconds=3)  # after the app below has stopped
        answer = await client.post(
            f"/admin/api/campaigns/{campaign_id}/send",
            json={"at": rfc3339(at)},
            headers=admin_headers,
        )
        assert answer.status_code == 202, answer.text
    # Stopped before the time; the time passes while nothing runs.
    assert datetime.now(UTC) < at, "the app took too long to stop"
    await asyncio.sleep(max((at - datetime.now(UTC)).total_seconds(), 0) + 0.5)
    assert (await state(db, campaign_id))["scheduled_at"] == at
    assert smtp.messages == []
    async with app_factory(schedule_poll_interval=POLL) as (_app, _client):
        await smtp.wait_for(3, timeout=20)
        await asyncio.sleep(5 * POLL)
    after = await state(db, campaign_id)
    assert after["scheduled_at"] is None and after["deliveries"] == 3
    assert len(smtp.messages) == 3 and len({m.to for m in smtp.messages}) == 3


async def test_a_cancelled_schedule_sends_nothing_and_cancelling_twice_is_a_conflict(
    app_factory, db, smtp, admin_headers
) -> None:
    await people.add_many(db, 2)
    async with app_factory(schedule_poll_interval=POLL) as (_app, client):
        campaign_id = await create(client, admin_headers)
        at = datetime.now(UTC) + timedelta(seconds=2)
        path = f"/admin/api/campaigns/{campaign_id}/send"
        assert (
            await client.post(path, json={"at": rfc3339(at)}, headers=admin_headers)
        ).status_code == 202
        cancelled = await client.delete(path, headers=admin_headers)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json() == {"scheduled_at": None}
        await asyncio.sleep((at - datetime.now(UTC)).total_seconds() + 10 * POLL)
        assert (await state(db, campaign_id))["deliveries"] == 0
        again = await client.delete(path, headers=admin_headers)
        assert again.status_code == 409 and again.json()["error"] == "not_scheduled"
        missing = await client.delete("/admin/api/campaigns/999999/send", headers=admin_headers)
        assert missing.status_code == 404
    assert smtp.messages == []


async def test_once_the_send_started_scheduling_and_cancelling_are_conflicts(
    app_factory, db, smtp, admin_headers
) -> None:
    await people.add_many(db, 2)
    async with app_factory(schedule_poll_interval=POLL) as (_app, client):
        # Started by a schedule that came due ...
        fired = await create(client, admin_headers)
        at = datetime.now(UTC) + timedelta(seconds=1)
        path = f"/admin/api/campaigns/{fired}/send"
        assert (
            await client.post(path, json={"at": rfc3339(at)}, headers=admin_headers)
        ).status_code == 202
        await until(
            lambda: db.fetchval("SELECT first_sent_at FROM campaigns WHERE id = $1", fired),
            "the send",
        )
        late = await client.delete(path, headers=admin_headers)
        assert late.status_code == 409 and late.json()["error"] == "already_sent"
        # ... or by a send now.
        now = await create(client, admin_headers)
        path = f"/admin/api/campaigns/{now}/send"
        assert (await client.post(path, headers=admin_headers)).json() == {"queued": 2}
        later = rfc3339(datetime.now(UTC) + timedelta(hours=1))
        refused = await client.post(path, json={"at": later}, headers=admin_headers)
        assert refused.status_code == 409 and refused.json()["error"] == "already_sent"
        assert (await client.delete(path, headers=admin_headers)).status_code == 409
        assert (await state(db, now))["scheduled_at"] is None
        await smtp.wait_for(4, timeout=20)


async def test_sending_now_ends_a_waiting_schedule(app_factory, db, smtp, admin_headers) -> None:
    await people.add_many(db, 2)
    async with app_factory(schedule_poll_interval=POLL) as (_app, client):
        campaign_id = await create(client, admin_headers)
        path = f"/admin/api/campaigns/{campaign_id}/send"
        at = datetime.now(UTC) + timedelta(seconds=2)
        await client.post(path, json={"at": rfc3339(at)}, headers=admin_headers)
        assert (await client.post(path, headers=admin_headers)).json() == {"queued": 2}
        assert (await state(db, campaign_id))["scheduled_at"] is None
        await people.add_subscriber(db, "joined-later@example.org")
        await asyncio.sleep((at - datetime.now(UTC)).total_seconds() + 10 * POLL)
        # The schedule's time passed: nobody was queued again, not even the newcomer.
        assert (await state(db, campaign_id))["deliveries"] == 2


@pytest.mark.parametrize(
    ("at", "message"),
    [
        ("2001-01-01T00:00:00Z", "must be in the future"),
        ("tomorrow at nine", "must be an RFC 3339 time"),
        ("2031-01-31T09:00:00", "must be an RFC 3339 time"),  # no offset
        ("2031-01-31", "must be an RFC 3339 time"),
        ("2031-02-31T09:00:00Z", "is not a valid date and time"),
        ("2031-01-31T25:00:00+01:00", "is not a valid date and time"),
        ("9999-12-31T23:30:00-02:00", "is not a valid date and time"),  # past year 9999 in UTC
        ("2031-01-31T09:00:00.1234567891+01:00", "must be an RFC 3339 time"),  # too long
        (1924502400, "must be an RFC 3339 time"),
        (None, "must be an RFC 3339 time"),
    ],
)
async def test_a_past_malformed_or_offsetless_at_is_a_field_error(
    client, db, admin_headers, at, message
) -> None:
    campaign_id = await create(client, admin_headers)
    answer = await client.post(
        f"/admin/api/campaigns/{campaign_id}/send", json={"at": at}, headers=admin_headers
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["fields"]["at"].startswith(message)
    assert (await state(db, campaign_id))["scheduled_at"] is None


async def test_the_send_body_takes_only_at(client, db, admin_headers) -> None:
    campaign_id = await create(client, admin_headers)
    path = f"/admin/api/campaigns/{campaign_id}/send"
    later = rfc3339(datetime.now(UTC) + timedelta(days=1))
    unknown = await client.post(path, json={"at": later, "when": 1}, headers=admin_headers)
    assert unknown.status_code == 422 and unknown.json()["fields"] == {"when": "unknown field"}
    not_json = await client.post(path, content=b"at=tomorrow", headers=admin_headers)
    assert not_json.status_code == 400
    assert (await state(db, campaign_id))["deliveries"] == 0
    # A schedule may be moved while it waits; an offset is kept as the same instant.
    first = await client.post(path, json={"at": later}, headers=admin_headers)
    moved_to = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    moved = await client.post(
        path,
        json={"at": moved_to.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + "-00:00"},
        headers=admin_headers,
    )
    assert first.status_code == moved.status_code == 202
    assert (await state(db, campaign_id))["scheduled_at"] == moved_to


async def backends_waiting(db: asyncpg.Connection, count: int, timeout: float = 20.0) -> None:
    """Returns once `count` backends of this test's database wait for a lock: evidence of
    who is blocked, where sleeping a while and seeing nothing happen proves nothing."""
    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    await until(lambda: _at_least(db.fetchval(query), count), f"{count} lock waits", timeout)


async def _at_least(value: Awaitable[int], count: int) -> bool:
    return await value >= count


async def test_a_cancellation_or_a_new_time_during_the_queueing_waits_and_finds_it_started(
    app_factory, db, database_url, smtp, admin_headers
) -> None:
    """The claim holds the campaign until its queueing commits: what comes meanwhile waits,
    then answers 409, and the send goes out whole, once."""
    await people.add_many(db, 3)
    blocker = await asyncpg.connect(database_url)
    try:
        async with app_factory(schedule_poll_interval=POLL) as (_app, client):
            campaign_id = await create(client, admin_headers)
            path = f"/admin/api/campaigns/{campaign_id}/send"
            held = blocker.transaction()
            await held.start()
            # The queueing statement locks every recipient FOR KEY SHARE: it waits for this.
            await blocker.execute("SELECT id FROM subscribers ORDER BY id LIMIT 1 FOR UPDATE")
            at = datetime.now(UTC) + timedelta(seconds=1)
            scheduled = await client.post(path, json={"at": rfc3339(at)}, headers=admin_headers)
            assert scheduled.status_code == 202
            await backends_waiting(db, 1)  # the claimed schedule's queueing
            later = rfc3339(datetime.now(UTC) + timedelta(hours=1))
            cancel = asyncio.create_task(client.delete(path, headers=admin_headers))
            move = asyncio.create_task(client.post(path, json={"at": later}, headers=admin_headers))
            await backends_waiting(db, 3)
            assert not cancel.done() and not move.done()
            await held.rollback()
            cancelled, moved = await cancel, await move
            assert cancelled.status_code == 409 and cancelled.json()["error"] == "already_sent"
            assert moved.status_code == 409 and moved.json()["error"] == "already_sent"
            after = await state(db, campaign_id)
            assert after["scheduled_at"] is None and after["deliveries"] == 3
            await smtp.wait_for(3, timeout=20)
            await asyncio.sleep(5 * POLL)
    finally:
        await blocker.close()
    assert sorted(m.to for m in smtp.messages) == sorted({m.to for m in smtp.messages})
    assert len(smtp.messages) == 3


@pytest.mark.slow
async def test_a_large_scheduled_send_is_queued_although_it_outlasts_the_command_timeout(
    app_factory, db, admin_headers
) -> None:
    """Queueing a quarter of a million subscribers takes seconds, more than this
    DB_COMMAND_TIMEOUT: the scheduled send still goes out whole (a connection of its own)."""
    await people.add_many(db, 250_000)
    async with app_factory(
        schedule_poll_interval=POLL, db_command_timeout=0.5, outbox_concurrency=0
    ) as (_app, client):
        campaign_id = await create(client, admin_headers)
        at = datetime.now(UTC) + timedelta(seconds=1)
        path = f"/admin/api/campaigns/{campaign_id}/send"
        assert (
            await client.post(path, json={"at": rfc3339(at)}, headers=admin_headers)
        ).status_code == 202
        query = "SELECT recipients FROM campaigns WHERE id = $1"
        assert await until(lambda: db.fetchval(query, campaign_id), "the queueing", 60) == 250_000
