"""The operator's side of the subscriber's page: the dashboard's subscriber list and
`PATCH /admin/api/subscribers/{email}`."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import quote

import pytest

from service.admin.dashboard.subscriber_list import PAGE_SIZE
from tests import people
from tests.admin.test_dashboard import browser, sign_in
from tests.manage_support import link_in, mails_to, no_jobs
from tests.signup_helpers import wait_until

_ROW = re.compile(r'<th scope="row">([^<]+)</th>')


@pytest.fixture
async def web(app):
    async with browser(app) as client:
        yield client


def _listed(html: str) -> list[str]:
    return _ROW.findall(html)


def _next_cursor(html: str) -> dict[str, str]:
    return {
        name: re.search(
            rf'name="{name}" value="([^"]*)"',
            html.split('id="filters"')[1].split("next-page")[0].rsplit("<form", 1)[1],
        ).group(1)
        for name in ("after_key", "after_id")
    }


# -- the dashboard's list --------------------------------------------------------------
async def test_list_pages_through_everyone_once_in_address_order(web, db) -> None:
    await people.add_many(db, PAGE_SIZE + 7, prefix="reader")
    await people.add_subscriber(db, "Zed@Example.org", status="pending")
    csrf = await sign_in(web)
    first = await web.get("/admin/subscribers/list")
    assert first.status_code == 200
    seen = _listed(first.text)
    assert len(seen) == PAGE_SIZE and 'id="next-page"' in first.text
    second = await web.post(
        "/admin/subscribers/list", data={"csrf": csrf, **_next_cursor(first.text)}
    )
    seen += _listed(second.text)
    assert 'id="next-page"' not in second.text and 'id="first-page"' in second.text
    assert len(seen) == len(set(seen)) == PAGE_SIZE + 8
    assert seen == sorted(seen, key=str.lower)
    assert "/admin/subscribers/list?" not in first.text  # nothing personal in a URL


async def test_list_filters_by_status_and_address_prefix(web, db) -> None:
    await people.add_subscriber(db, "anna@example.org")
    await people.add_subscriber(db, "Anton@example.org", status="pending")
    await people.add_subscriber(db, "bert@example.org")
    await people.add_subscriber(db, "an_x@example.org")
    await people.add_subscriber(db, "an%y@example.org")
    csrf = await sign_in(web)

    async def listed(**form: str) -> list[str]:
        response = await web.post("/admin/subscribers/list", data={"csrf": csrf, **form})
        assert response.status_code == 200
        return _listed(response.text)

    assert await listed(prefix="AN") == [
        "an%y@example.org",
        "an_x@example.org",
        "anna@example.org",
        "Anton@example.org",
    ]
    assert await listed(prefix="an_") == ["an_x@example.org"]  # _ is literal
    assert await listed(prefix="an%") == ["an%y@example.org"]  # % too
    assert await listed(prefix="an", status="pending") == ["Anton@example.org"]
    assert await listed(status="active", prefix="b") == ["bert@example.org"]
    assert await listed(prefix="nobody") == []


async def test_list_rows_lead_to_the_data_view_and_the_erase_action(web, db) -> None:
    await people.add_subscriber(db, "row@example.org", name="Row Person")
    csrf = await sign_in(web)
    page = await web.get("/admin/subscribers/list")
    assert 'action="/admin/subscribers"' in page.text
    assert 'action="/admin/subscribers/erase"' in page.text
    view = await web.post("/admin/subscribers", data={"csrf": csrf, "email": "row@example.org"})
    assert "Row Person" in view.text
    ask = await web.post(
        "/admin/subscribers/erase", data={"csrf": csrf, "email": "row@example.org"}
    )
    assert 'id="confirm-erase"' in ask.text
    lookup = await web.get("/admin/subscribers")
    assert 'id="all-subscribers"' in lookup.text and 'id="email"' in lookup.text


async def test_list_refuses_bad_filters_forged_csrf_and_no_session(web, app, db) -> None:
    csrf = await sign_in(web)
    for form in (
        {"status": "deleted"},
        {"prefix": "a\x00b"},
        {"prefix": "x" * 400},
        {"after_id": "-1"},
        {"after_id": "9" * 30},
        {"after_key": "k" * 400},
    ):
        response = await web.post("/admin/subscribers/list", data={"csrf": csrf, **form})
        assert response.status_code == 400, form
    forged = await web.post("/admin/subscribers/list", data={"csrf": "x" * 40})
    assert forged.status_code == 403
    async with browser(app) as stranger:
        assert (await stranger.get("/admin/subscribers/list")).status_code == 303
        assert (await stranger.post("/admin/subscribers/list", data={})).status_code in (303, 403)


async def test_list_uses_the_address_index(db) -> None:
    await people.add_many(db, 2000)
    await db.execute("ANALYZE subscribers")
    plan = "\n".join(
        r[0]
        for r in await db.fetch(
            "EXPLAIN SELECT id FROM subscribers WHERE lower(email) COLLATE \"C\" LIKE 'reader12%'"
            " AND (lower(email) COLLATE \"C\", id) > ('', 0)"
            ' ORDER BY lower(email) COLLATE "C", id LIMIT 51'
        )
    )
    assert "subscribers_email_order" in plan, plan


# -- PATCH /admin/api/subscribers/{email} ----------------------------------------------
async def test_patch_corrects_the_name(client, db, admin_headers) -> None:
    await people.add_subscriber(db, "Fix.Me@Example.org", name="Wrong")
    response = await client.patch(
        "/admin/api/subscribers/fix.me@example.org", json={"name": " Right "}, headers=admin_headers
    )
    assert response.status_code == 200
    assert response.json() == {"name": "Right", "address_change": None}
    assert response.headers["cache-control"] == "no-store"
    assert await db.fetchval("SELECT name FROM subscribers") == "Right"
    cleared = await client.patch(
        "/admin/api/subscribers/Fix.Me@Example.org", json={"name": None}, headers=admin_headers
    )
    assert cleared.status_code == 200 and await db.fetchval("SELECT name FROM subscribers") is None


async def test_patch_of_the_address_goes_through_the_new_address_confirmation(
    client, db, smtp, admin_headers
) -> None:
    sid = await people.add_subscriber(db, "old@example.org", name="Mover")
    response = await client.patch(
        "/admin/api/subscribers/old@example.org",
        json={"email": "New@Example.net"},
        headers=admin_headers,
    )
    assert response.status_code == 202
    assert response.json() == {"address_change": "confirmation_sent"}
    assert (
        await db.fetchval("SELECT email FROM subscribers WHERE id = $1", sid) == "old@example.org"
    )
    await wait_until(lambda: no_jobs(db, "address_confirm"))
    [mail] = mails_to(smtp, "New@example.net")
    assert (await client.post(link_in(mail), data={})).status_code == 200
    assert (
        await db.fetchval("SELECT email FROM subscribers WHERE id = $1", sid) == "New@example.net"
    )
    assert await people.find_anywhere(db, ("old@example.org",)) == {}


async def test_patch_answers_taken_unknown_and_pending(client, db, admin_headers) -> None:
    await people.add_subscriber(db, "one@example.org")
    await people.add_subscriber(db, "two@example.org")
    await people.add_subscriber(db, "wait@example.org", status="pending")
    path = "/admin/api/subscribers/"
    taken = await client.patch(
        path + "one@example.org", json={"email": "two@example.org"}, headers=admin_headers
    )
    assert taken.status_code == 409 and taken.json()["error"] == "taken"
    unknown = await client.patch(
        path + "nobody@example.org", json={"name": "x"}, headers=admin_headers
    )
    assert unknown.status_code == 404
    pending = await client.patch(
        path + "wait@example.org", json={"email": "w2@example.org"}, headers=admin_headers
    )
    assert pending.status_code == 409 and pending.json()["error"] == "not_active"
    assert await db.fetchval("SELECT count(*) FROM address_changes") == 0


@pytest.mark.parametrize(
    "body, status",
    [
        (b"", 400),
        (b"{", 400),
        (b"[]", 422),
        (b"{}", 422),
        (b'{"status": "active"}', 422),
        (b'{"name": 5}', 422),
        (b'{"name": "' + b"a" * 101 + b'"}', 422),
        (b'{"name": "a\\nb"}', 422),
        (b'{"email": "not an address"}', 422),
        (b'{"email": null}', 422),
        (b'{"name": "' + b"a" * 3000 + b'"}', 413),
        (b"\xff\xfe", 400),
    ],
)
async def test_patch_refuses_malformed_and_oversized_bodies(
    client, db, admin_headers, body, status
) -> None:
    await people.add_subscriber(db, "same@example.org", name="Same")
    response = await client.patch(
        "/admin/api/subscribers/same@example.org",
        content=body,
        headers={**admin_headers, "content-type": "application/json"},
    )
    assert response.status_code == status, response.text
    assert await db.fetchval("SELECT name FROM subscribers") == "Same"


async def test_patch_needs_the_admin_token(client, db) -> None:
    await people.add_subscriber(db, "safe@example.org", name="Safe")
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        response = await client.patch(
            f"/admin/api/subscribers/{quote('safe@example.org')}",
            json={"name": "X"},
            headers=headers,
        )
        assert response.status_code == 401
    assert await db.fetchval("SELECT name FROM subscribers") == "Safe"


async def test_concurrent_patches_leave_one_request_whose_link_alone_works(
    client, db, smtp, admin_headers
) -> None:
    """Each request replaces the one before: emails of earlier requests may have left
    already, but only the link of the request that is left changes the address."""
    await people.add_subscriber(db, "race@example.org")
    responses = await asyncio.gather(
        *(
            client.patch(
                "/admin/api/subscribers/race@example.org",
                json={"email": f"new{n}@example.net"},
                headers=admin_headers,
            )
            for n in range(5)
        )
    )
    assert all(r.status_code == 202 for r in responses)
    assert await db.fetchval("SELECT count(*) FROM address_changes") == 1
    current = await db.fetchval("SELECT new_email FROM address_changes")
    await wait_until(lambda: no_jobs(db, "address_confirm"))
    assert mails_to(smtp, current), "the current request's email was not sent"
    outcomes = {}
    for mail in smtp.messages:
        outcomes[mail.recipients[0]] = (await client.post(link_in(mail), data={})).status_code
    assert outcomes[current] == 200
    assert [code for to, code in outcomes.items() if to != current] == [400] * (len(outcomes) - 1)
    assert await db.fetchval("SELECT email FROM subscribers") == current
