"""The subscriber's own page: the footer link, the fresh link, the data page's actions."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, timedelta

import pytest

from tests import people
from tests.manage_support import (
    MANAGE_LINK,
    TOKENS,
    act,
    aged_token,
    arranged_person,
    fresh_link,
    manage_path,
    no_jobs,
    open_data,
    session_of,
)
from tests.signup_helpers import wait_until


@pytest.fixture
async def person(db) -> people.Person:
    return await arranged_person(db, "Ada.Reader@Example.org", "manage")


async def _manage_links(db) -> list:
    return await db.fetch("SELECT * FROM manage_links ORDER BY id")


# -- the footer's link ---------------------------------------------------------------
async def test_footer_link_page_shows_no_personal_data_and_get_changes_nothing(
    client, db, person
) -> None:
    before = await db.fetchrow("SELECT * FROM subscribers WHERE id = $1", person.id)
    response = await client.get(manage_path(person.id))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    for needle in person.needles:
        assert needle.lower() not in response.text.lower()
    for button in ("send-link", "stop-tracking", "unsubscribe"):
        assert f'id="{button}"' in response.text
    assert "forwarded" in response.text  # the one sentence that says why
    assert await db.fetchrow("SELECT * FROM subscribers WHERE id = $1", person.id) == before
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE kind = 'manage_link'") == 0


async def test_footer_link_stop_tracking_deletes_opens_and_records_evidence(
    client, db, person
) -> None:
    response = await client.post(manage_path(person.id), data={"action": "stop_tracking"})
    assert response.status_code == 200 and 'id="tracking-off"' in response.text
    assert await db.fetchval("SELECT count(*) FROM opens WHERE subscriber_id = $1", person.id) == 0
    event = await db.fetchrow(
        "SELECT * FROM consent_events WHERE kind = 'tracking_withdrawn' AND subscriber_id = $1",
        person.id,
    )
    assert event["source"] == "manage" and event["ip"] == "198.51.100.0"


async def test_footer_link_unsubscribe_erases_everything(client, db, person) -> None:
    response = await client.post(manage_path(person.id), data={"action": "unsubscribe"})
    assert response.status_code == 200
    assert await people.find_anywhere(db, person.traces) == {}


async def test_footer_link_with_an_unknown_action_changes_nothing(client, db, person) -> None:
    response = await client.post(manage_path(person.id), data={"action": "drop_tables"})
    assert response.status_code == 400
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1


# -- the fresh link ------------------------------------------------------------------
async def test_fresh_link_goes_to_the_address_on_file_only_and_works_once(
    client, db, smtp, person
) -> None:
    link = await fresh_link(client, smtp, person.id, person.email, db)
    assert [m.to for m in smtp.messages] == ["Ada.Reader@example.org"]
    # GET changes nothing: the link is still unused.
    shown = await client.get(link)
    assert shown.status_code == 200 and 'id="open-data"' in shown.text
    assert "script-src 'nonce-" in shown.headers["content-security-policy"]
    assert (await _manage_links(db))[0]["used_at"] is None
    page, session = await open_data(client, link)
    for needle in (person.email, person.name, *person.ips, person.user_agents[0]):
        assert needle in page.text, needle
    assert "Thunderbird" in page.text and "Subscription confirmed" in page.text
    assert len(session) >= 40 and session not in link
    again = await client.post(link, data={})
    assert again.status_code == 410 and "has been used" in again.text
    assert person.email not in again.text
    assert (await client.get(link)).status_code == 410


async def test_concurrent_posts_of_one_fresh_link_open_it_once(client, db, smtp, person) -> None:
    link = await fresh_link(client, smtp, person.id, person.email, db)
    responses = await asyncio.gather(*(client.post(link, data={}) for _ in range(8)))
    assert sorted(r.status_code for r in responses) == [200] + [410] * 7


async def test_automatic_post_inside_the_scanner_window_does_not_use_the_link(
    app_factory, db, smtp, person
) -> None:
    async with app_factory(scanner_window=600) as (_app, client):
        link = await fresh_link(client, smtp, person.id, person.email, db)
        scanner = await client.post(link, data={"auto": "1"})
        assert scanner.status_code == 200 and person.email not in scanner.text
        assert 'id="open-data"' in scanner.text and "<script" not in scanner.text
        assert (await _manage_links(db))[0]["used_at"] is None
        page, _ = await open_data(client, link)  # the person's button counts
        assert person.email in page.text


async def test_expired_fresh_links_are_refused(client, db, smtp, person) -> None:
    link = await fresh_link(client, smtp, person.id, person.email, db)
    link_id = (await _manage_links(db))[0]["id"]
    old = f"/manage/link/{aged_token(MANAGE_LINK, person.id, link_id, 1801)}"
    for response in (await client.get(old), await client.post(old, data={})):
        assert response.status_code == 400 and person.email not in response.text
    await db.execute("UPDATE manage_links SET expires_at = now() - interval '1 second'")
    response = await client.post(link, data={})
    assert response.status_code == 410 and "expired" in response.text


def _forgeries(person_id: int) -> list[str]:
    real = TOKENS.manage_link(person_id, 1)
    return [
        "x",
        "A" * 52,
        real[:-1] + ("A" if real[-1] != "A" else "B"),  # one character changed
        real + "A",
        "x" * 5000,
        TOKENS.manage(person_id),  # the footer's token is not a fresh link
        TOKENS.unsubscribe(person_id),
        TOKENS.address_confirm(person_id, 1),  # another purpose, same layout
        "%2e%2e",
    ]


async def test_forged_malformed_and_oversized_tokens_are_400_everywhere(
    client, db, smtp, person
) -> None:
    await fresh_link(client, smtp, person.id, person.email, db)
    before = await db.fetch("SELECT * FROM manage_links")
    for token in _forgeries(person.id):
        for path in (f"/manage/link/{token}", f"/manage/address/{token}"):
            for method in ("GET", "POST"):
                response = await client.request(method, path, data={} if method == "POST" else None)
                assert response.status_code in (400, 404), (path, method)
                assert person.email not in response.text
    for token in ("x", "x" * 5000, TOKENS.unsubscribe(person.id), TOKENS.manage_link(person.id, 1)):
        assert (await client.get(f"/manage/{token}")).status_code == 400
        assert (
            await client.post(f"/manage/{token}", data={"action": "unsubscribe"})
        ).status_code == 400
    assert await db.fetch("SELECT * FROM manage_links") == before
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1


async def test_a_link_for_another_subscriber_row_is_refused(client, db, smtp, person) -> None:
    """The token names both the subscriber and the link row: a real link row of someone
    else cannot be combined with another subscriber id."""
    other = await people.add_subscriber(db, "other@example.org")
    await fresh_link(client, smtp, person.id, person.email, db)
    link_id = (await _manage_links(db))[0]["id"]
    response = await client.post(f"/manage/link/{TOKENS.manage_link(other, link_id)}", data={})
    assert response.status_code == 400
    assert (await _manage_links(db))[0]["used_at"] is None


async def test_a_forwarded_email_opens_nothing_personal(client, db, smtp, person) -> None:
    """Whoever got the newsletter forwarded has the footer's link: they can ask for a
    fresh link, but it goes to the subscriber's address, not to them."""
    response = await client.post(manage_path(person.id), data={"action": "send_link"})
    assert response.status_code == 200
    assert person.email not in response.text and person.name not in response.text
    [mail] = await smtp.wait_for(1)
    assert mail.recipients == ["Ada.Reader@example.org"]


async def test_erasure_makes_a_fresh_link_and_its_session_worthless(
    client, db, smtp, person
) -> None:
    link = await fresh_link(client, smtp, person.id, person.email, db)
    second = await fresh_link_after_interval(client, db, smtp, person)
    _, session = await open_data(client, link)
    assert (await act(client, session, "unsubscribe")).status_code == 200
    assert await people.find_anywhere(db, person.traces) == {}
    assert await db.fetchval("SELECT count(*) FROM manage_links") == 0
    assert (await client.post(second, data={})).status_code == 400
    assert (await act(client, session, "show")).status_code == 403


async def fresh_link_after_interval(client, db, smtp, person) -> str:
    """A second fresh link: the address's allowance asks for RATE_CONFIRM_MIN_INTERVAL
    between two emails, so the first claim is moved back in time."""
    await db.execute("UPDATE rate_limits SET last_at = now() - interval '1 hour'")
    return await fresh_link(client, smtp, person.id, person.email, db)


async def test_link_requests_spend_the_address_allowance_of_sign_up(
    client, db, smtp, person
) -> None:
    await fresh_link(client, smtp, person.id, person.email, db)
    await asyncio.gather(
        *(client.post(manage_path(person.id), data={"action": "send_link"}) for _ in range(5))
    )
    # A sign-up of the same address now gets no email either: one allowance.
    await client.post("/subscribe", data={"email": person.email})
    await client.get("/healthz")
    await _outbox_settled(db)
    assert len(smtp.messages) == 1


async def _outbox_settled(db) -> None:
    await wait_until(lambda: no_jobs(db, "manage_link"))
    await wait_until(lambda: no_jobs(db, "confirm"))


# -- the data page's actions ---------------------------------------------------------
async def test_session_is_refused_when_missing_forged_or_over(client, db, smtp, person) -> None:
    link = await fresh_link(client, smtp, person.id, person.email, db)
    _, session = await open_data(client, link)
    for bad in (
        "",
        "x",
        session[:-1] + "A" if session[-1] != "A" else session[:-1] + "B",
        "s" * 5000,
    ):
        response = await act(client, bad, "name", name="Mallory")
        assert response.status_code in (403, 413), bad[:10]
        assert person.email not in response.text
    await db.execute("UPDATE manage_links SET session_until = now() - interval '1 second'")
    assert (await act(client, session, "name", name="Mallory")).status_code == 403
    assert await db.fetchval("SELECT name FROM subscribers") == person.name


async def test_name_is_corrected_and_bad_names_change_nothing(client, db, smtp, person) -> None:
    link = await fresh_link(client, smtp, person.id, person.email, db)
    _, session = await open_data(client, link)
    response = await act(client, session, "name", name="  Ada Lovelace ")
    assert response.status_code == 200 and "Your name is saved" in response.text
    assert await db.fetchval("SELECT name FROM subscribers") == "Ada Lovelace"
    for bad in ("a" * 101, "Ada\nBcc: x@example.org", "Ada\u202eevil"):
        response = await act(client, session, "name", name=bad)
        assert response.status_code == 400 and 'id="name-error"' in response.text
    assert await db.fetchval("SELECT name FROM subscribers") == "Ada Lovelace"
    oversized = await act(client, session, "name", name="a" * 4000)
    assert oversized.status_code == 413
    assert (await act(client, session, "no_such_action")).status_code == 400


async def test_download_is_the_admin_export(client, db, smtp, person, admin_headers) -> None:
    link = await fresh_link(client, smtp, person.id, person.email, db)
    _, session = await open_data(client, link)
    download = await act(client, session, "download")
    assert download.status_code == 200
    assert download.headers["content-disposition"].startswith("attachment")
    assert download.headers["cache-control"] == "no-store"
    admin = await client.get(f"/admin/api/subscribers/{person.email}", headers=admin_headers)
    assert download.json() == admin.json()
    assert download.json()["subscriber"]["email"] == person.email
    assert len(download.json()["opens"]) == 2
    # The link used here, and the unused one people.add_person made.
    used = sorted(row["used_at"] is not None for row in download.json()["manage_links"])
    assert used == [False, True]


async def test_the_data_page_and_its_download_show_the_soft_bounces(
    client, db, smtp, person
) -> None:
    campaign = await people.add_campaign(db, "Winter news")
    # Only this test's bounce (people.add_person leaves one of its own, for the scans).
    await db.execute("DELETE FROM soft_bounces WHERE subscriber_id = $1", person.id)
    await db.execute(
        "INSERT INTO soft_bounces (subscriber_id, campaign_id, at)"
        " VALUES ($1, $2, '2026-11-02T10:00:00Z')",
        person.id,
        campaign,
    )
    link = await fresh_link(client, smtp, person.id, person.email, db)
    page, session = await open_data(client, link)
    section = page.text.split('id="data-soft-bounces"', 1)[1].split("</section>", 1)[0]
    assert "came back undelivered" in section
    assert "2026-11-02 10:00 UTC" in section and "Winter news" in section
    download = await act(client, session, "download")
    assert [b["campaign_name"] for b in download.json()["soft_bounces"]] == ["Winter news"]


async def test_tracking_is_granted_with_evidence_and_withdrawn_with_the_opens(
    client, db, smtp, person
) -> None:
    await db.execute("UPDATE subscribers SET tracking_consent = false")
    link = await fresh_link(client, smtp, person.id, person.email, db)
    page, session = await open_data(client, link)
    assert 'id="allow-tracking"' in page.text
    granted = await act(client, session, "allow_tracking")
    assert granted.status_code == 200 and 'id="stop-tracking"' in granted.text
    assert await db.fetchval("SELECT tracking_consent FROM subscribers") is True
    event = await db.fetchrow(
        "SELECT * FROM consent_events WHERE kind = 'tracking_granted' ORDER BY id DESC LIMIT 1"
    )
    assert (event["source"], event["method"], event["ip"]) == ("manage", "button", "198.51.100.0")
    await act(client, session, "allow_tracking")  # twice: no second event
    assert (
        await db.fetchval("SELECT count(*) FROM consent_events WHERE kind = 'tracking_granted'")
        == 2
    )  # the arranged one and this one
    withdrawn = await act(client, session, "stop_tracking")
    assert withdrawn.status_code == 200
    assert await db.fetchval("SELECT count(*) FROM opens") == 0
    assert await db.fetchval("SELECT tracking_consent FROM subscribers") is False


async def test_opening_the_same_session_twice_at_once_is_fine(client, db, smtp, person) -> None:
    link = await fresh_link(client, smtp, person.id, person.email, db)
    _, session = await open_data(client, link)
    names = [f"Name {n}" for n in range(6)]
    responses = await asyncio.gather(*(act(client, session, "name", name=n) for n in names))
    assert all(r.status_code == 200 for r in responses)


async def test_pages_hold_no_session_in_any_url(client, db, smtp, person) -> None:
    link = await fresh_link(client, smtp, person.id, person.email, db)
    page, session = await open_data(client, link)
    assert "?session=" not in page.text and f"/{session}" not in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert session_of(page) == session


# -- how people reach the page -------------------------------------------------------
async def test_the_confirmed_page_links_the_manage_page(client, db, smtp) -> None:
    await client.post("/subscribe", data={"email": "new.reader@example.org"})
    [mail] = await smtp.wait_for(1)
    confirm = re.search(r"/confirm/[A-Za-z0-9_-]+", mail.part("plain")).group(0)
    done = await client.post(confirm, data={"choices": "1", "name": "New Reader"})
    assert done.status_code == 200 and "Subscription confirmed" in done.text
    path = re.search(r'href="(/manage/[A-Za-z0-9_-]+)" id="manage-link"', done.text).group(1)
    sid = await db.fetchval("SELECT id FROM subscribers")
    assert path == manage_path(sid)
    page = await client.get(path)
    assert page.status_code == 200 and 'id="send-link"' in page.text


async def test_a_campaign_emails_footer_link_opens_the_page(
    client, db, smtp, admin_headers
) -> None:
    sid = await people.add_subscriber(db, "footer@example.org", name="Foot Er")
    created = await client.post(
        "/admin/api/campaigns",
        json={"name": "n", "subject": "s", "html": "<p>{{ manage_url }}</p>", "text": "t"},
        headers=admin_headers,
    )
    await client.post(f"/admin/api/campaigns/{created.json()['id']}/send", headers=admin_headers)
    [mail] = await smtp.wait_for(1)
    paths = set(re.findall(r"http://newsletter\.test(/manage/[A-Za-z0-9_-]+)", mail.part("plain")))
    paths |= set(re.findall(r"http://newsletter\.test(/manage/[A-Za-z0-9_-]+)", mail.part("html")))
    assert paths == {manage_path(sid)}
    response = await client.post(manage_path(sid), data={"action": "send_link"})
    assert response.status_code == 200
    [_, link_mail] = await smtp.wait_for(2)
    assert link_mail.recipients == ["footer@example.org"]


async def test_a_fresh_link_opens_once_across_two_replicas(app_factory, db, smtp, person) -> None:
    """Two apps on one database, as two replicas: the link's row decides, not a replica's
    memory."""
    async with app_factory() as (_a, first), app_factory() as (_b, second):
        link = await fresh_link(first, smtp, person.id, person.email, db)
        responses = await asyncio.gather(
            *(client.post(link, data={}) for client in (first, second) * 4)
        )
        assert sorted(r.status_code for r in responses) == [200] + [410] * 7
        opened = next(r for r in responses if r.status_code == 200)
        # The page's session works on the other replica too.
        session = session_of(opened)
        for client in (first, second):
            assert (await act(client, session, "show")).status_code == 200


async def test_a_link_request_the_allowance_holds_back_says_when_to_ask_again(
    client, db, smtp, person
) -> None:
    """The confirmation (here: the first link) spent the address's allowance for
    RATE_CONFIRM_MIN_INTERVAL: the page says so and when, instead of "we emailed you"."""
    await fresh_link(client, smtp, person.id, person.email, db)
    await _outbox_settled(db)
    response = await client.post(manage_path(person.id), data={"action": "send_link"})
    assert response.status_code == 200
    assert "We emailed you a link" not in response.text
    assert "We could not email you a link just now." in response.text
    claimed = await db.fetchval("SELECT last_at FROM rate_limits WHERE scope = 'address'")
    next_at = (claimed + timedelta(minutes=10)).astimezone(UTC)
    assert "The next can go in 10 minutes" in response.text
    assert f"(at {next_at:%H:%M} UTC)" in response.text
    await client.get("/healthz")
    await _outbox_settled(db)
    assert len(smtp.messages) == 1
