"""`/manage` without a token: a form that mails a fresh link to a subscribed address and
answers every address the same; rate-limited like sign-up. And retention of the page's
tables."""

from __future__ import annotations

import asyncio
import re

from service.privacy import retention
from tests import people
from tests.manage_support import link_in, mails_to, no_jobs, open_data
from tests.signup_helpers import wait_until

_SESSION_FIELD = re.compile(r'name="session" value="[^"]+"')


async def test_get_shows_a_form_and_the_reason_for_fresh_links(client) -> None:
    response = await client.get("/manage")
    assert response.status_code == 200
    assert '<form method="post" action="/manage">' in response.text
    assert 'id="why-fresh-link"' in response.text and "30 minutes" in response.text


async def test_subscribed_unknown_and_pending_addresses_get_the_same_answer(
    client, db, smtp
) -> None:
    await people.add_subscriber(db, "known@example.org", name="Known")
    await people.add_subscriber(db, "waiting@example.org", status="pending")
    answers = []
    for email in ("known@example.org", "nobody@example.org", "waiting@example.org"):
        response = await client.post("/manage", data={"email": email})
        answers.append((response.status_code, response.text, dict(response.headers)))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == 200 and 'id="sent"' in answers[0][1]
    await wait_until(lambda: no_jobs(db, "manage_link"))
    assert [m.recipients for m in smtp.messages] == [["known@example.org"]]
    # Each address spent one claim of its daily allowance: the same rows were written.
    assert await db.fetchval("SELECT count(*) FROM rate_limits WHERE scope = 'address'") == 3


async def test_the_mailed_link_opens_the_data_page(client, db, smtp) -> None:
    await people.add_subscriber(db, "Known@Example.org", name="Known Person")
    await client.post("/manage", data={"email": "known@example.org"})
    await wait_until(lambda: no_jobs(db, "manage_link"))
    page, _ = await open_data(client, link_in(mails_to(smtp, "known@example.org")[0]))
    assert "Known Person" in page.text and _SESSION_FIELD.search(page.text)


async def test_malformed_and_oversized_addresses_are_400_or_413(client, db) -> None:
    for email in ("", "no-at-sign", "a@b", "x" * 330 + "@example.org", "a\r\nb@example.org"):
        response = await client.post("/manage", data={"email": email})
        assert response.status_code == 400, email
        assert 'aria-invalid="true"' in response.text
    assert (await client.post("/manage", data={"email": "a" * 5000})).status_code == 413
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_requests_are_limited_per_client_ip_like_sign_up(app_factory, db, smtp) -> None:
    async with app_factory(rate_signup_per_ip_hour=3) as (_app, client):
        responses = await asyncio.gather(
            *(client.post("/manage", data={"email": f"p{n}@example.org"}) for n in range(5))
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 200, 429, 429]
        limited = next(r for r in responses if r.status_code == 429)
        assert int(limited.headers["retry-after"]) > 0
        # The sign-up form shares the limit: both mail addresses someone typed.
        signup = await client.post("/subscribe", data={"email": "late@example.org"})
        assert signup.status_code == 429


async def test_one_address_gets_at_most_its_daily_allowance(app_factory, db, smtp) -> None:
    await people.add_subscriber(db, "busy@example.org")
    async with app_factory(rate_confirm_min_interval=0, rate_confirm_per_day=2) as (_a, client):
        for _ in range(4):
            await client.post("/manage", data={"email": "busy@example.org"})
            await wait_until(lambda: no_jobs(db, "manage_link"))
    assert len(smtp.messages) == 2


async def test_retention_deletes_dead_links_and_unconfirmed_address_changes(db, settings) -> None:
    sid = await people.add_subscriber(db, "kept@example.org")
    await db.execute(
        "INSERT INTO manage_links (subscriber_id, created_at, expires_at) VALUES"
        " ($1, now() - interval '2 hours', now() - interval '1 hour'),"
        " ($1, now(), now() + interval '30 minutes')",
        sid,
    )
    await db.execute(
        "INSERT INTO manage_links (subscriber_id, expires_at, used_at, session_until)"
        " VALUES ($1, now() - interval '1 minute', now(), now() + interval '29 minutes')",
        sid,
    )
    await db.execute(
        "INSERT INTO address_changes (subscriber_id, new_email, requested_at)"
        " VALUES ($1, 'stale@example.net', now() - interval '49 hours')",
        sid,
    )
    counts = await retention.purge(db, settings)
    assert (counts["manage_links"], counts["address_changes"]) == (1, 1)
    assert await db.fetchval("SELECT count(*) FROM manage_links") == 2
    assert await people.find_anywhere(db, ("stale@example.net",)) == {}
