"""Changing one's address: the new address confirms (double opt-in), then the old one is
gone from every table; taken addresses, replaced requests, expiry and races."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests import people
from tests.manage_support import (
    ADDRESS_CONFIRM,
    act,
    aged_token,
    arranged_person,
    fresh_link,
    link_in,
    mails_to,
    manage_path,
    no_jobs,
    open_data,
)
from tests.signup_helpers import wait_until

NEW = "ada.new@example.net"


@pytest.fixture
async def person(db) -> people.Person:
    return await arranged_person(db, "Ada.Old@Example.org", "address")


async def _session(client, db, smtp, person) -> str:
    link = await fresh_link(client, smtp, person.id, person.email, db)
    _, session = await open_data(client, link)
    return session


async def _request(client, db, smtp, session: str, new: str = NEW) -> str:
    """Asks for the change on the data page; the confirmation link mailed to `new`."""
    before = len(mails_to(smtp, new))
    response = await act(client, session, "change_address", new_email=new)
    assert response.status_code == 200 and f"We emailed {new}" in response.text
    await wait_until(lambda: no_jobs(db, "address_confirm"))
    assert len(mails_to(smtp, new)) == before + 1
    return link_in(mails_to(smtp, new)[-1])


async def test_the_new_address_confirms_and_then_the_old_one_is_in_no_table(
    client, db, smtp, person
) -> None:
    session = await _session(client, db, smtp, person)
    confirm = await _request(client, db, smtp, session)
    # Until confirmed, the old address is the subscriber's.
    assert await db.fetchval("SELECT email FROM subscribers") == person.email
    assert await people.address_rate_limit_rows(db, None, person.email) == 1
    page = await client.get(confirm)
    assert page.status_code == 200 and NEW in page.text and 'id="confirm-address"' in page.text
    assert await db.fetchval("SELECT email FROM subscribers") == person.email
    done = await client.post(confirm, data={})
    assert done.status_code == 200 and "Your address is changed" in done.text
    assert await db.fetchval("SELECT email FROM subscribers") == NEW
    assert await people.find_anywhere(db, (person.email,)) == {}
    assert await people.address_rate_limit_rows(db, None, person.email) == 0
    event = await db.fetchrow("SELECT * FROM consent_events WHERE kind = 'address_changed'")
    assert (event["source"], event["method"], event["ip"]) == ("manage", "button", "198.51.100.0")
    # Everything else about the person stays, under the new address.
    assert {"consent_events", "opens"} <= set(await people.find_anywhere(db, person.ips))
    # The link worked once: the request row is gone.
    again = await client.post(confirm, data={})
    assert again.status_code == 400
    assert await db.fetchval("SELECT email FROM subscribers") == NEW


async def test_an_address_already_subscribed_gets_the_same_answer_and_no_email(
    client, db, smtp, person
) -> None:
    await people.add_subscriber(db, "taken@example.net")
    session = await _session(client, db, smtp, person)
    taken = await act(client, session, "change_address", new_email="Taken@example.net")
    free = await act(client, session, "change_address", new_email="free@example.net")
    assert taken.status_code == free.status_code == 200
    assert "We emailed Taken@example.net a link" in taken.text
    assert "We emailed free@example.net a link" in free.text
    await wait_until(lambda: no_jobs(db, "address_confirm"))
    assert mails_to(smtp, "taken@example.net") == []
    assert len(mails_to(smtp, "free@example.net")) == 1
    assert await db.fetchval("SELECT new_email FROM address_changes") == "free@example.net"


def _same_shape(html: str, address: str) -> str:
    """The page with the asked-for address and the times blanked out."""
    html = html.replace(address, "NEW").replace(address.lower(), "NEW")
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "TIME", html)


async def test_free_taken_and_over_allowance_addresses_get_the_same_page(
    app_factory, db, smtp, person, settings
) -> None:
    """Whether the new address is free, someone's subscription, or over its daily email
    allowance: the same status, the same answer and the same data page ("waiting for
    confirmation" and the queued email included), and an email only to the free one.
    The pages are compared with the outbox stopped, so that none shows a job the worker
    has or has not taken yet."""
    await people.add_subscriber(db, "taken@example.net")
    await db.execute(
        "INSERT INTO rate_limits (scope, key, window_start, hits, last_at)"
        " VALUES ('address', $1, date_trunc('day', now()), $2, now())",
        await people.address_key_today(db, "limited@example.net"),
        settings.rate_confirm_per_day,
    )
    async with app_factory() as (_app, client):
        session = await _session(client, db, smtp, person)
    answers, pages = {}, {}
    async with app_factory(outbox_concurrency=0) as (_app, client):
        for address in ("taken@example.net", "limited@example.net", "free@example.net"):
            answer = await act(client, session, "change_address", new_email=address)
            page = await act(client, session, "show")
            assert (answer.status_code, page.status_code) == (200, 200), address
            assert f"Waiting for confirmation: your new address {address}" in page.text
            assert "confirmation of your new address" in page.text  # the queued email
            answers[address] = _same_shape(answer.text, address)
            pages[address] = _same_shape(page.text, address)
    assert len(set(answers.values())) == 1, "the answer tells the addresses apart"
    assert len(set(pages.values())) == 1, "the data page tells the addresses apart"
    async with app_factory() as (_app, client):
        await wait_until(lambda: no_jobs(db, "address_confirm"))
    assert mails_to(smtp, "taken@example.net") == mails_to(smtp, "limited@example.net") == []
    assert len(mails_to(smtp, "free@example.net")) == 1


async def test_a_taken_address_request_can_never_be_confirmed_nor_mailed(
    client, db, smtp, person
) -> None:
    await people.add_subscriber(db, "taken@example.net")
    await db.execute(
        "INSERT INTO rate_limits (scope, key, window_start, hits, last_at)"
        " VALUES ('address', $1, date_trunc('day', now()), 100, now())",
        await people.address_key_today(db, "limited@example.net"),
    )
    session = await _session(client, db, smtp, person)
    await act(client, session, "change_address", new_email="limited@example.net")
    await wait_until(lambda: no_jobs(db, "address_confirm"))
    assert mails_to(smtp, "limited@example.net") == []
    await act(client, session, "change_address", new_email="taken@example.net")
    await wait_until(lambda: no_jobs(db, "address_confirm"))
    change_id = await db.fetchval("SELECT id FROM address_changes")
    token = aged_token(ADDRESS_CONFIRM, person.id, change_id, 0)  # as if it had been mailed
    assert (await client.get(f"/manage/address/{token}")).status_code == 400
    assert (await client.post(f"/manage/address/{token}", data={})).status_code == 400
    assert mails_to(smtp, "taken@example.net") == []
    emails = {r["email"] for r in await db.fetch("SELECT email FROM subscribers")}
    assert emails == {person.email, "taken@example.net"}
    # Unsubscribing leaves the taken address's own allowance rows alone.
    assert await people.address_rate_limit_rows(db, None, "taken@example.net") == 1
    await client.post(manage_path(person.id), data={"action": "unsubscribe"})
    assert await people.address_rate_limit_rows(db, None, "taken@example.net") == 1


async def test_own_address_and_malformed_addresses_change_nothing(client, db, smtp, person) -> None:
    session = await _session(client, db, smtp, person)
    same = await act(client, session, "change_address", new_email=person.email.upper())
    assert same.status_code == 200 and "That is your address already" in same.text
    for bad in ("", "not-an-address", "a@b", "x" * 400 + "@example.org", "a\r\nb@example.org"):
        response = await act(client, session, "change_address", new_email=bad)
        assert response.status_code in (400, 413), bad
    assert await db.fetchval("SELECT count(*) FROM address_changes") == 0


async def test_a_newer_request_makes_the_older_link_worthless(client, db, smtp, person) -> None:
    session = await _session(client, db, smtp, person)
    first = await _request(client, db, smtp, session, "first@example.net")
    await db.execute("UPDATE rate_limits SET last_at = now() - interval '1 hour'")
    second = await _request(client, db, smtp, session, "second@example.net")
    assert (await client.post(first, data={})).status_code == 400
    assert await db.fetchval("SELECT email FROM subscribers") == person.email
    assert (await client.post(second, data={})).status_code == 200
    assert await db.fetchval("SELECT email FROM subscribers") == "second@example.net"


async def test_expired_forged_and_erased_address_links_change_nothing(
    client, db, smtp, person
) -> None:
    session = await _session(client, db, smtp, person)
    confirm = await _request(client, db, smtp, session)
    change_id = await db.fetchval("SELECT id FROM address_changes")
    old = f"/manage/address/{aged_token(ADDRESS_CONFIRM, person.id, change_id, 49 * 3600)}"
    forged = confirm[:-2] + ("AA" if not confirm.endswith("AA") else "BB")
    for path in (old, forged, "/manage/address/" + "x" * 5000):
        assert (await client.get(path)).status_code == 400
        assert (await client.post(path, data={})).status_code == 400
    await db.execute("UPDATE address_changes SET requested_at = now() - interval '49 hours'")
    assert (await client.post(confirm, data={})).status_code == 400
    assert await db.fetchval("SELECT email FROM subscribers") == person.email


async def test_a_sign_up_of_the_new_address_before_confirmation_wins(
    client, db, smtp, person
) -> None:
    session = await _session(client, db, smtp, person)
    confirm = await _request(client, db, smtp, session)
    await client.post("/subscribe", data={"email": NEW})
    response = await client.post(confirm, data={})
    assert response.status_code == 409 and "subscribed already" in response.text
    emails = {r["email"] for r in await db.fetch("SELECT email FROM subscribers")}
    assert emails == {person.email, NEW}


async def test_concurrent_confirmations_change_the_address_once(client, db, smtp, person) -> None:
    session = await _session(client, db, smtp, person)
    confirm = await _request(client, db, smtp, session)
    responses = await asyncio.gather(*(client.post(confirm, data={}) for _ in range(6)))
    assert sorted(r.status_code for r in responses) == [200] + [400] * 5
    assert (
        await db.fetchval("SELECT count(*) FROM consent_events WHERE kind = 'address_changed'") == 1
    )


@pytest.mark.parametrize("order", ["together", "unsubscribe_first", "change_first"])
async def test_an_address_change_racing_an_unsubscribe_leaves_neither_address(
    client, db, smtp, person, order
) -> None:
    """Whatever commits first, after both no table holds the old or the new address."""
    session = await _session(client, db, smtp, person)
    confirm = await _request(client, db, smtp, session)

    def unsubscribe():
        return client.post(manage_path(person.id), data={"action": "unsubscribe"})

    def change():
        return client.post(confirm, data={})

    if order == "together":
        unsubscribed, changed = await asyncio.gather(unsubscribe(), change())
    elif order == "unsubscribe_first":
        unsubscribed, changed = await unsubscribe(), await change()
        assert changed.status_code == 400
    else:
        changed, unsubscribed = await change(), await unsubscribe()
        assert changed.status_code == 200
    assert unsubscribed.status_code == 200
    assert changed.status_code in (200, 400)
    assert await people.find_anywhere(db, (*person.traces, NEW)) == {}
    for address in (person.email, NEW):
        assert await people.address_rate_limit_rows(db, None, address) == 0


async def test_a_request_while_the_previous_email_is_being_sent_queues_its_own(
    database_url, db, settings
) -> None:
    """The outbox worker keeps a job locked while it sends, and its composer read the
    request of that moment: a request made meanwhile must get an email job of its own."""
    import datetime

    import asyncpg

    from service.manage import address_change
    from service.web import ratelimit

    sid = await people.add_subscriber(db, "mid@example.org")
    day_key = await ratelimit.key_of_day(db, datetime.datetime.now(datetime.UTC).date())
    assert await address_change.request_change(db, settings, day_key, sid, "a@example.net") == (
        "queued"
    )
    worker = await asyncpg.connect(database_url)
    try:
        sending = worker.transaction()
        await sending.start()
        await worker.fetchval("SELECT id FROM outbox FOR UPDATE")
        outcome = await address_change.request_change(db, settings, day_key, sid, "b@example.net")
        assert outcome == "queued"
        await sending.rollback()
    finally:
        await worker.close()
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE kind = 'address_confirm'") == 2
    assert await db.fetchval("SELECT new_email FROM address_changes") == "b@example.net"
