"""Erasure leaves nothing about the person in any table; access requests show everything."""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from service.campaigns import store
from service.db.queries import queries
from service.privacy import erasure
from service.tokens import Tokens
from tests import people, support


@pytest.fixture
async def campaign(db) -> int:
    return await people.add_campaign(db)


async def test_the_scan_searches_every_table_including_ones_added_later(db) -> None:
    """The scan must catch a table that a future migration adds and fills with personal
    data: it reads the catalogue, not a list in this file."""
    await db.execute("CREATE TABLE future_feature (note text, seen_from inet)")
    await db.execute(
        "INSERT INTO future_feature VALUES ('mail to later@example.org', '192.0.2.99')"
    )
    found = await people.find_anywhere(db, ("later@example.org", "192.0.2.99"))
    assert found == {"future_feature": {"later@example.org", "192.0.2.99"}}
    assert "subscribers" in await people.base_tables(db)


async def test_the_scan_finds_rows_keyed_by_the_subscriber_id_alone(db, settings, campaign) -> None:
    """Deliveries, jobs, soft bounces and manage links hold no text of the person, only
    the id: the scan looks for the id in every column that holds one."""
    person = await people.add_person(db, settings, "ids@example.org", "id-scan", campaign)
    await db.execute("CREATE TABLE future_queue (subscriber_id bigint)")
    await db.execute("INSERT INTO future_queue VALUES ($1)", person.id)
    found = await people.find_anywhere(db, (person.id,))
    assert set(found) == {
        "subscribers",
        "consent_events",
        "deliveries",
        "outbox",
        "opens",
        "soft_bounces",
        "manage_links",
        "subscriber_topics",
        "future_queue",
    }
    await db.execute(
        "INSERT INTO erasure_journal (subscriber_id, created_at) VALUES ($1, now())", person.id
    )
    assert "erasure_journal" not in await people.find_anywhere(db, (person.id,))


async def test_after_an_unsubscribe_no_table_holds_the_address_ips_or_user_agents(
    client, db, settings, campaign
) -> None:
    person = await people.add_person(db, settings, "Erase.Me@Example.org", "unsub-scan", campaign)
    other = await people.add_person(db, settings, "keep.me@example.org", "other-scan-x", campaign)
    before = await people.find_anywhere(db, person.traces)
    assert {"subscribers", "consent_events", "opens"} <= set(before)  # the scan sees them

    token = Tokens((support.TEST_KEY,), 3600).unsubscribe(person.id)
    response = await client.post(
        f"/unsubscribe/{token}",
        content="List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200

    assert await people.find_anywhere(db, person.traces) == {}
    assert await people.address_rate_limit_rows(db, settings, person.email) == 0
    # The control: the other person is still found everywhere they were.
    assert {"subscribers", "consent_events", "opens"} <= set(
        await people.find_anywhere(db, other.traces)
    )


async def test_after_an_admin_erasure_no_table_holds_the_address_ips_or_user_agents(
    client, db, settings, admin_headers, campaign
) -> None:
    person = await people.add_person(db, settings, "Gdpr+News@Example.org", "admin-scan", campaign)
    assert await people.find_anywhere(db, person.traces)

    path = f"/admin/api/subscribers/{quote(person.email)}"
    response = await client.delete(path, headers=admin_headers)
    assert response.status_code == 204
    assert response.content == b""

    assert await people.find_anywhere(db, person.traces) == {}
    assert await people.address_rate_limit_rows(db, settings, person.email) == 0
    assert (await client.get(path, headers=admin_headers)).status_code == 404


async def test_admin_erasure_is_idempotent_and_finds_the_address_in_any_case(
    client, db, settings, admin_headers, campaign
) -> None:
    person = await people.add_person(db, settings, "Twice@Example.org", "twice", campaign)
    first = await client.delete("/admin/api/subscribers/TWICE@example.ORG", headers=admin_headers)
    second = await client.delete("/admin/api/subscribers/twice@example.org", headers=admin_headers)
    assert (first.status_code, second.status_code) == (204, 204)
    assert await people.find_anywhere(db, person.traces) == {}
    assert await db.fetchval("SELECT sum(unsubscribes) FROM list_daily") == 1


async def test_admin_erasure_of_an_unknown_or_malformed_address_is_204(
    client, admin_headers
) -> None:
    for email in ("nobody@example.org", "not an address", "a" * 400, "%00", "x@y/../z"):
        response = await client.delete(
            f"/admin/api/subscribers/{quote(email, safe='')}", headers=admin_headers
        )
        assert response.status_code == 204, email


async def test_erasure_removes_rate_limit_rows_of_an_address_with_no_subscriber_left(
    client, db, settings, admin_headers
) -> None:
    """E.g. a sign-up that was cancelled: the address's rate-limit rows are about them too."""
    await db.execute(
        "INSERT INTO rate_limits (scope, key, window_start, hits) VALUES ('address', $1, now(), 2)",
        await people.address_key_today(db, "gone@example.org"),
    )
    export = await client.get("/admin/api/subscribers/gone@example.org", headers=admin_headers)
    assert export.status_code == 200
    assert export.json()["subscriber"] is None
    assert [row["hits"] for row in export.json()["rate_limits"]] == [2]
    response = await client.delete("/admin/api/subscribers/gone@example.org", headers=admin_headers)
    assert response.status_code == 204
    assert await people.address_rate_limit_rows(db, settings, "gone@example.org") == 0


async def test_the_access_export_holds_every_column_of_the_subscriber_row(
    client, db, settings, admin_headers, campaign
) -> None:
    """A column added to `subscribers` by a migration is about the person: the export
    (the admin API's, the person's download and page) must show it (GDPR Art. 15)."""
    await people.add_person(db, settings, "columns@example.org", "access", campaign)
    response = await client.get("/admin/api/subscribers/columns@example.org", headers=admin_headers)
    columns = await db.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'subscribers'"
    )
    internal = {"id"}  # the row's key, which the export leaves out
    assert {c["column_name"] for c in columns} - internal == set(response.json()["subscriber"])


async def test_access_request_returns_everything_stored_about_the_address(
    client, db, settings, admin_headers, campaign
) -> None:
    person = await people.add_person(db, settings, "reader@example.org", "access", campaign)
    response = await client.get("/admin/api/subscribers/READER@example.org", headers=admin_headers)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert data["subscriber"]["email"] == person.email
    assert data["subscriber"]["name"] == person.name
    assert data["subscriber"]["status"] == "active"
    assert data["subscriber"]["tracking_consent"] is True
    assert [e["kind"] for e in data["consent_events"]] == ["signup", "tracking_granted", "confirm"]
    assert {e["ip"] for e in data["consent_events"]} == set(person.ips)
    assert {e["user_agent"] for e in data["consent_events"]} == {person.user_agents[0]}
    assert len(data["opens"]) == 2
    assert {o["ip"] for o in data["opens"]} == set(person.ips)
    assert {o["user_agent"] for o in data["opens"]} == {person.user_agents[1]}
    assert all(o["campaign_name"] and o["at"] for o in data["opens"])
    assert len(data["deliveries"]) == 2
    assert [j["kind"] for j in data["queued_emails"]] == ["campaign"]
    assert len(data["rate_limits"]) == 1
    # Looking changes nothing.
    assert set(await people.find_anywhere(db, person.traces)) >= {"subscribers", "opens"}


async def test_access_request_includes_the_soft_bounces(
    client, db, settings, admin_headers, campaign
) -> None:
    person = await people.add_person(db, settings, "reader@example.org", "bounces", campaign)
    # Only this test's bounces (add_person leaves one of its own, for the scans).
    await db.execute("DELETE FROM soft_bounces WHERE subscriber_id = $1", person.id)
    await db.execute(
        "INSERT INTO soft_bounces (subscriber_id, campaign_id, at) VALUES"
        " ($1, 0, '2026-11-01T10:00:00Z'), ($1, $2, '2026-11-02T10:00:00Z')",
        person.id,
        campaign,
    )
    response = await client.get("/admin/api/subscribers/reader@example.org", headers=admin_headers)
    assert response.status_code == 200
    bounces = response.json()["soft_bounces"]
    assert [(b["campaign_id"], b["campaign_name"]) for b in bounces] == [
        (None, None),  # the confirmation email
        (campaign, "Spring news"),
    ]
    assert [b["at"][:10] for b in bounces] == ["2026-11-01", "2026-11-02"]


async def test_access_request_includes_held_refusals_and_the_address_date(
    client, db, settings, admin_headers, campaign
) -> None:
    person = await people.add_person(db, settings, "reader@example.org", "held", campaign)
    await db.execute(
        "INSERT INTO held_refusals (subscriber_id, campaign_id, kind, reason, holder)"
        " VALUES ($1, $2, 'campaign', '5.1.1', 'worker-a')",
        person.id,
        campaign,
    )
    response = await client.get("/admin/api/subscribers/reader@example.org", headers=admin_headers)
    assert response.status_code == 200
    data = response.json()
    held = data["held_refusals"]
    assert [(h["campaign_id"], h["campaign_name"], h["reason"]) for h in held] == [
        (campaign, "Spring news", "5.1.1")
    ]
    assert "email_since" in data["subscriber"]


async def test_access_request_for_an_unknown_address_is_404(client, admin_headers) -> None:
    for email in ("nobody@example.org", "", "a" * 400, "no-at-sign", "%ff%fe"):
        response = await client.get(f"/admin/api/subscribers/{email}", headers=admin_headers)
        assert response.status_code == 404, email
        assert response.json()["error"] == "not_found"


async def test_erasure_waits_for_an_in_flight_send_and_then_removes_the_job(
    database_url, db, settings, campaign
) -> None:
    """The outbox worker keeps a job row locked while it talks SMTP: an erasure must not
    commit before that send ends, so that no email leaves after the erasure."""
    person = await people.add_person(db, settings, "inflight@example.org", "inflight", campaign)
    worker = await asyncpg.connect(database_url)
    eraser = await asyncpg.connect(database_url)
    try:
        sending = worker.transaction()
        await sending.start()
        await worker.fetchrow(
            "SELECT id FROM outbox WHERE subscriber_id = $1 FOR UPDATE SKIP LOCKED", person.id
        )
        erase = asyncio.create_task(erasure.erase_subscriber(eraser, person.id))
        await support.lock_waited_on(db, eraser.get_server_pid())
        assert not erase.done(), "the erasure committed while a send was in flight"
        await sending.commit()
        assert await asyncio.wait_for(erase, 5) is True
    finally:
        await worker.close()
        await eraser.close()
    assert await people.find_anywhere(db, person.traces) == {}


async def test_erase_subscriber_reports_whether_someone_was_there(db, settings, campaign) -> None:
    person = await people.add_person(db, settings, "once@example.org", "once", campaign)
    assert await erasure.erase_subscriber(db, person.id) is True
    assert await erasure.erase_subscriber(db, person.id) is False
    assert await erasure.erase_subscriber(db, 10**12) is False


async def test_after_a_real_signup_confirm_campaign_and_open_an_unsubscribe_leaves_nothing(
    app_factory, db, smtp, admin_headers
) -> None:
    """The same search after the data was written by the real endpoints (sign-up with
    tracking consent, confirmation, campaign, pixel fetch), with full IPs kept."""
    address, name = "Real.Person@Example.org", "Real Person Zq"
    ips = ("203.0.113.201", "198.51.100.77")
    agents = ("SignupAgent/42 (scan test)", "PixelAgent/7 (scan test)")
    async with app_factory(ip_mode="full", tracking_mode="consent") as (app, admin):

        def client_from(ip: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(ip, 40000))
            return httpx.AsyncClient(transport=transport, base_url=support.PUBLIC_URL)

        async with client_from(ips[0]) as browser:
            signup = await browser.post(
                "/subscribe",
                data={"email": address, "name": name, "tracking": "1", "source": "scan"},
                headers={"user-agent": agents[0]},
            )
            assert signup.status_code in (200, 303)
            [confirmation] = await smtp.wait_for(1)
            confirm_path = re.search(r"/confirm/[A-Za-z0-9._-]+", confirmation.part("plain"))
            # The person confirms with the page's form, keeping the tracking box ticked.
            confirmed = await browser.post(
                confirm_path.group(0),
                data={"choices": "1", "name": name, "tracking": "1"},
                headers={"user-agent": agents[0]},
            )
            assert confirmed.status_code in (200, 303)
        campaign = await admin.post(
            "/admin/api/campaigns",
            json={"name": "n", "subject": "s", "html": "<p>{{ name }}</p>", "text": "t"},
            headers=admin_headers,
        )
        sent = await admin.post(
            f"/admin/api/campaigns/{campaign.json()['id']}/send", headers=admin_headers
        )
        assert sent.json() == {"queued": 1}
        [_, mail] = await smtp.wait_for(2)
        pixel = re.search(r"/o/[A-Za-z0-9._-]+\.gif", mail.part("html")).group(0)
        async with client_from(ips[1]) as reader:
            assert (await reader.get(pixel, headers={"user-agent": agents[1]})).status_code == 200
        deadline = time.monotonic() + 10
        while not await db.fetchval("SELECT count(*) FROM opens"):
            assert time.monotonic() < deadline, "the open was not recorded"
            await asyncio.sleep(0.05)

        sid = await db.fetchval("SELECT id FROM subscribers")
        needles = (sid, address, name, *ips, *agents)
        before = await people.find_anywhere(db, needles)
        assert {"subscribers", "consent_events", "opens", "deliveries"} <= set(before), before

        unsubscribe = mail.message["List-Unsubscribe"].strip("<>")
        response = await admin.post(
            unsubscribe.removeprefix(support.PUBLIC_URL), content="List-Unsubscribe=One-Click"
        )
        assert response.status_code == 200
        assert await people.find_anywhere(db, needles) == {}


async def test_no_job_can_be_queued_for_a_subscriber_who_is_gone(db) -> None:
    """deliveries and outbox carry no foreign keys (sql/130): each statement that queues a
    job locks its subscriber row instead, and queues nothing for a row that is gone."""
    gone = await people.add_subscriber(db, "gone@example.org")
    await db.execute("DELETE FROM subscribers WHERE id = $1", gone)
    assert await queries("manage").queue_link_email.fetchval(db, id=gone) is None
    assert await queries("manage").queue_address_email.fetchval(db, id=gone) == 0
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_deleting_a_campaign_deletes_its_deliveries_and_jobs(db) -> None:
    """The service never deletes a campaign, but an operator's SQL may: the row trigger
    that replaced the foreign keys' cascade (sql/130) still removes what named it."""
    await people.add_many(db, 20)
    kept, dropped = await people.add_campaign(db), await people.add_campaign(db)
    for campaign_id in (kept, dropped):
        assert await store.queue_send(db, campaign_id) == 20
    await db.execute("DELETE FROM campaigns WHERE id = $1", dropped)
    jobs = await db.fetch("SELECT campaign_id, count(*) FROM outbox GROUP BY 1")
    deliveries = await db.fetch("SELECT campaign_id, count(*) FROM deliveries GROUP BY 1")
    assert [tuple(r) for r in jobs] == [tuple(r) for r in deliveries] == [(kept, 20)]
