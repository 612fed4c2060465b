"""`/admin/api/*`: campaigns (create, list, show, send, recipients) and the bearer check."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from service.app import routes
from service.tokens import Tokens
from tests import people, support

CAMPAIGN = {
    "name": "March issue",
    "subject": "News for {{ name or 'you' }}",
    "html": "<h1>Hello {{ name }}</h1><p>Spring is here.</p>",
    "text": "Hello {{ name }}\n\nSpring is here.\n",
}


async def create(client, admin_headers, **changes) -> int:
    response = await client.post(
        "/admin/api/campaigns", json={**CAMPAIGN, **changes}, headers=admin_headers
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


# -- authentication ------------------------------------------------------------------


def admin_routes(settings) -> list[tuple[str, str]]:
    """Every admin API route the app serves (new ones are covered without editing this)."""
    found = []
    for route in routes(settings):
        if route.path.startswith("/admin/api/"):
            path = re.sub(r"\{\w+:int\}", "1", route.path)
            path = re.sub(r"\{\w+(:\w+)?\}", "someone@example.org", path)
            found += [(m, path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return found


BAD_CREDENTIALS = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer wrong-token-0123456789"},
    {"Authorization": f"Bearer {support.ADMIN_TOKEN[:-1]}"},
    {"Authorization": f"Bearer {support.ADMIN_TOKEN}x"},
    {"Authorization": f"Basic {support.ADMIN_TOKEN}"},
    {"Authorization": support.ADMIN_TOKEN},
    {"Authorization": "Bearer " + "x" * 10_000},
]


async def test_every_admin_route_answers_401_without_a_valid_token(client, db, settings) -> None:
    await people.add_subscriber(db, "someone@example.org")
    await people.add_campaign(db)
    targets = admin_routes(settings)
    assert ("POST", "/admin/api/campaigns") in targets
    assert ("DELETE", "/admin/api/subscribers/someone@example.org") in targets
    for method, path in targets:
        for headers in BAD_CREDENTIALS:
            response = await client.request(method, path, headers=headers, json=CAMPAIGN)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["www-authenticate"].startswith("Bearer")
    # Nothing was done on the way.
    assert await db.fetchval("SELECT count(*) FROM campaigns") == 1
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_admin_routes_answer_401_when_no_admin_token_is_configured(app_factory) -> None:
    async with app_factory(admin_tokens=()) as (_app, client):
        response = await client.get("/admin/api/campaigns", headers={"Authorization": "Bearer "})
        assert response.status_code == 401


async def test_a_second_configured_token_is_accepted(app_factory) -> None:
    other = "second-admin-token-abcdefghij"
    async with app_factory(admin_tokens=(support.ADMIN_TOKEN, other)) as (_app, client):
        response = await client.get(
            "/admin/api/campaigns", headers={"Authorization": f"bearer {other}"}
        )
        assert response.status_code == 200


# -- creating ------------------------------------------------------------------------


async def test_create_stores_the_campaign_and_get_shows_it(client, admin_headers) -> None:
    campaign_id = await create(client, admin_headers)
    response = await client.get(f"/admin/api/campaigns/{campaign_id}", headers=admin_headers)
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in CAMPAIGN} == CAMPAIGN
    assert body["recipients"] == body["sent"] == body["failed"] == body["queued"] == 0
    assert body["first_sent_at"] is None
    assert body["created_at"]


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"name": ""}, "name", "must not be empty"),
        ({"name": None}, "name", "is required"),
        ({"subject": 42}, "subject", "must be a string"),
        ({"subject": "two\nlines"}, "subject", "single line"),
        ({"subject": "x" * 301}, "subject", "at most 300"),
        ({"html": "<p>{{ name </p>"}, "html", "template error on line 1"),
        ({"html": "{% for %}"}, "html", "template error"),
        ({"text": "Hi {{ nmae }}"}, "text", "'nmae' is undefined"),
        ({"text": "{{ ''.__class__.__mro__ }}"}, "text", "template error"),
        ({"text": "{{ 1 / 0 }}"}, "text", "ZeroDivisionError"),
        ({"text": "{% for i in range(10**9) %}{% endfor %}"}, "text", "template error"),
        ({"text": "nul\x00byte"}, "text", "NUL"),
        ({"extra": 1}, "extra", "unknown field"),
        ({"html": ["<p>"]}, "html", "must be a string"),
    ],
)
async def test_invalid_campaigns_get_422_with_a_message_per_field(
    client, db, admin_headers, payload, field, message
) -> None:
    body = {**CAMPAIGN, **payload}
    if payload.get("name", "") is None:
        del body["name"]
    response = await client.post("/admin/api/campaigns", json=body, headers=admin_headers)
    assert response.status_code == 422
    fields = response.json()["fields"]
    assert message in fields[field], fields
    assert await db.fetchval("SELECT count(*) FROM campaigns") == 0


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"", 400),
        (b"{", 400),
        (b"\xff\xfe{}", 400),
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b"[1, 2]", 422),
        (b'"a string"', 422),
        (b"null", 422),
        (b"{}", 422),
        (json.dumps({**CAMPAIGN, "html": "x" * 1_100_000}).encode(), 413),
    ],
    ids=[
        "empty",
        "truncated",
        "not-utf8",
        "deeply-nested",
        "array",
        "string",
        "null",
        "{}",
        "huge",
    ],
)
async def test_malformed_and_oversized_bodies_are_refused(
    client, db, admin_headers, content, status
) -> None:
    response = await client.post(
        "/admin/api/campaigns",
        content=content,
        headers={**admin_headers, "content-type": "application/json"},
    )
    assert response.status_code == status
    assert response.json()["error"]
    assert await db.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_a_lying_content_length_is_refused_before_reading(client, admin_headers) -> None:
    response = await client.post(
        "/admin/api/campaigns",
        content=b"{}",
        headers={**admin_headers, "content-length": "99999999999"},
    )
    assert response.status_code == 413


async def test_replaying_a_create_makes_a_second_campaign_that_sends_to_nobody_twice(
    client, db, admin_headers
) -> None:
    """Creation is not idempotent (two campaigns may share a text); sending is."""
    await people.add_many(db, 3)
    first = await create(client, admin_headers)
    second = await create(client, admin_headers)
    assert first != second
    for campaign_id, queued in ((first, 3), (first, 0), (second, 3), (second, 0)):
        response = await client.post(
            f"/admin/api/campaigns/{campaign_id}/send", headers=admin_headers
        )
        assert (response.status_code, response.json()) == (202, {"queued": queued})


# -- listing and showing ---------------------------------------------------------------


async def test_list_is_newest_first_and_pages_with_before(client, admin_headers) -> None:
    ids = [await create(client, admin_headers, name=f"Issue {n}") for n in range(5)]
    page = await client.get("/admin/api/campaigns?limit=2", headers=admin_headers)
    assert page.status_code == 200
    assert [c["id"] for c in page.json()["campaigns"]] == ids[::-1][:2]
    assert "html" not in page.json()["campaigns"][0]
    cursor = page.json()["next_before"]
    rest = await client.get(f"/admin/api/campaigns?before={cursor}", headers=admin_headers)
    assert [c["id"] for c in rest.json()["campaigns"]] == ids[::-1][2:]
    assert rest.json()["next_before"] is None


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=abc",
        "before=0",
        "before=1e3",
        "limit=" + "9" * 40,
    ],
)
async def test_list_refuses_bad_paging_parameters(client, admin_headers, query) -> None:
    response = await client.get(f"/admin/api/campaigns?{query}", headers=admin_headers)
    assert response.status_code == 422


@pytest.mark.parametrize("suffix", ["", "/send", "/recipients"])
@pytest.mark.parametrize("campaign_id", ["999", "0", str(2**63), "9" * 30, "abc", "-1", "1.5"])
async def test_unknown_campaigns_are_404(client, admin_headers, suffix, campaign_id) -> None:
    method = "POST" if suffix == "/send" else "GET"
    response = await client.request(
        method, f"/admin/api/campaigns/{campaign_id}{suffix}", headers=admin_headers
    )
    assert response.status_code == 404


# -- sending -----------------------------------------------------------------------------


async def test_send_queues_one_job_per_active_subscriber(client, db, admin_headers) -> None:
    await people.add_many(db, 5)
    await people.add_subscriber(db, "pending@example.org", status="pending")
    campaign_id = await create(client, admin_headers)
    response = await client.post(f"/admin/api/campaigns/{campaign_id}/send", headers=admin_headers)
    assert response.status_code == 202
    assert response.json() == {"queued": 5}
    row = await db.fetchrow(
        "SELECT recipients, first_sent_at FROM campaigns WHERE id = $1", campaign_id
    )
    assert row["recipients"] == 5 and row["first_sent_at"] is not None
    assert (
        await db.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1", campaign_id)
        == 5
    )


async def test_concurrent_sends_of_one_campaign_queue_each_subscriber_once(
    client, db, admin_headers
) -> None:
    await people.add_many(db, 200)
    campaign_id = await create(client, admin_headers)
    responses = await asyncio.gather(
        *(
            client.post(f"/admin/api/campaigns/{campaign_id}/send", headers=admin_headers)
            for _ in range(6)
        )
    )
    assert {r.status_code for r in responses} == {202}
    assert sum(r.json()["queued"] for r in responses) == 200
    assert await db.fetchval("SELECT recipients FROM campaigns WHERE id = $1", campaign_id) == 200


async def test_a_later_send_reaches_only_new_subscribers(client, db, admin_headers) -> None:
    await people.add_many(db, 4)
    campaign_id = await create(client, admin_headers)
    path = f"/admin/api/campaigns/{campaign_id}/send"
    assert (await client.post(path, headers=admin_headers)).json() == {"queued": 4}
    await people.add_subscriber(db, "newcomer@example.org")
    assert (await client.post(path, headers=admin_headers)).json() == {"queued": 1}
    assert await db.fetchval("SELECT recipients FROM campaigns WHERE id = $1", campaign_id) == 5


# -- recipients export ------------------------------------------------------------------


async def test_recipients_streams_one_ndjson_line_per_active_subscriber_with_own_links(
    client, db, admin_headers
) -> None:
    await people.add_many(db, 2500)
    await people.add_subscriber(db, "pending@example.org", status="pending")
    consenting = await people.add_subscriber(
        db, "consent@example.org", name='Zoë "Z"', tracking_consent=True
    )
    campaign_id = await create(client, admin_headers)
    response = await client.get(
        f"/admin/api/campaigns/{campaign_id}/recipients", headers=admin_headers
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert len(lines) == 2501
    tokens = Tokens((support.TEST_KEY,), 3600)
    ids = dict(await db.fetch("SELECT email, id FROM subscribers"))
    for line in lines:
        sid = ids[line["email"]]
        unsub = line["unsubscribe_url"].removeprefix(f"{support.PUBLIC_URL}/unsubscribe/")
        assert tokens.verify_unsubscribe(unsub) == sid
        pixel = line["pixel_url"].removeprefix(f"{support.PUBLIC_URL}/o/").removesuffix(".gif")
        claim = tokens.verify_pixel(pixel)
        # A personal pixel only for the one who consented; the campaign's own for the rest.
        personal = sid if line["email"] == "consent@example.org" else None
        assert (claim.subscriber_id, claim.campaign_id) == (personal, campaign_id)
    assert len({line["pixel_url"] for line in lines}) == 2
    last = lines[-1]
    assert last["email"] == "consent@example.org" and last["name"] == 'Zoë "Z"'
    assert last["tracking_url"] == f"{support.PUBLIC_URL}/tracking/{tokens.tracking(consenting)}"
    assert lines[0]["tracking_url"] is None
    assert "pending@example.org" not in response.text
