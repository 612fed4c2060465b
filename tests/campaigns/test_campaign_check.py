"""Checking a campaign before it goes (issue 30): the preview, the test send and editing
until the first send, through the admin API, the real outbox worker and a real SMTP sink."""

from __future__ import annotations

import asyncio
import re

import asyncpg
import dkim as dkimpy
import pytest

from service.campaigns import mail, store
from service.tokens import Tokens
from tests import people, support
from tests.campaigns.test_campaign_send import CAMPAIGN, TOKENS, links_of, send, settled

_PIXEL_TOKEN = re.compile(re.escape(support.PUBLIC_URL) + r"/o/([A-Za-z0-9._-]+)\.gif")


async def _create(client, admin_headers, **changes) -> int:
    created = await client.post(
        "/admin/api/campaigns", json={**CAMPAIGN, **changes}, headers=admin_headers
    )
    assert created.status_code == 201, created.text
    return created.json()["id"]


# -- preview -------------------------------------------------------------------------------


async def test_the_preview_of_a_subscriber_is_byte_for_byte_their_email(
    client, db, smtp, admin_headers
) -> None:
    await people.add_subscriber(db, "ada@example.org", name="Ada <b>", tracking_consent=True)
    campaign_id = await _create(client, admin_headers)
    shown = await client.get(
        f"/admin/api/campaigns/{campaign_id}/preview",
        params={"email": "ADA@example.org"},
        headers=admin_headers,
    )
    assert shown.status_code == 200
    assert shown.headers["cache-control"] == "no-store"
    preview = shown.json()
    assert set(preview) == {"subject", "html", "text"}
    await client.post(f"/admin/api/campaigns/{campaign_id}/send", headers=admin_headers)
    [message] = await smtp.wait_for(1)
    assert preview["subject"] == message.message["Subject"] == "April news for Ada <b>"
    # The wire form's line ends are CRLF; the texts are otherwise the same.
    assert preview["html"] == message.part("html").replace("\r\n", "\n")
    assert preview["text"] == message.part("plain").replace("\r\n", "\n")


async def test_the_sample_preview_fills_the_sample_person_with_links_that_name_nobody(
    client, db, admin_headers
) -> None:
    campaign_id = await _create(client, admin_headers)
    shown = await client.get(f"/admin/api/campaigns/{campaign_id}/preview", headers=admin_headers)
    assert shown.status_code == 200
    preview = shown.json()
    assert preview["subject"] == "April news for Ada Lovelace"
    assert "Dear Ada Lovelace," in preview["html"] and "Dear Ada Lovelace," in preview["text"]
    # The footer, the unsubscribe link and the pixel are there, for subscriber 0 (nobody).
    unsubscribe = re.findall(r"/unsubscribe/([A-Za-z0-9._-]+)", preview["text"])
    assert unsubscribe and {TOKENS.verify_unsubscribe(t) for t in unsubscribe} == {0}
    [pixel] = _PIXEL_TOKEN.findall(preview["html"])
    claim = TOKENS.verify_pixel(pixel)
    assert (claim.subscriber_id, claim.campaign_id) == (0, campaign_id)
    # Fetching the sample's pixel records nothing (PIXEL_MODE=wait answers after the
    # write); a real subscriber's pixel, fetched the same way, is recorded.
    assert (await client.get(f"/o/{pixel}.gif")).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM opens") == 0
    real = await people.add_subscriber(db, "real@example.org", tracking_consent=True)
    await client.get(f"/o/{TOKENS.pixel(real, campaign_id)}.gif")
    assert await db.fetchval("SELECT count(*) FROM opens") == 1


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/admin/api/campaigns/999999/preview", {}),
        ("/admin/api/campaigns/9223372036854775808/preview", {}),
        ("/admin/api/campaigns/{id}/preview", {"email": "nobody@example.org"}),
        ("/admin/api/campaigns/{id}/preview", {"email": "x" * 5000}),
        ("/admin/api/campaigns/{id}/preview", {"email": ""}),
    ],
)
async def test_preview_of_an_unknown_campaign_or_subscriber_is_404(
    client, admin_headers, path, params
) -> None:
    campaign_id = await _create(client, admin_headers)
    answer = await client.get(path.format(id=campaign_id), params=params, headers=admin_headers)
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"


async def test_preview_test_and_edit_need_the_admin_token(client, admin_headers) -> None:
    campaign_id = await _create(client, admin_headers)
    forged = {"Authorization": "Bearer not-the-token"}
    base = f"/admin/api/campaigns/{campaign_id}"
    assert (await client.get(f"{base}/preview", headers=forged)).status_code == 401
    assert (await client.post(f"{base}/test", json={"to": "a@b.example"})).status_code == 401
    assert (await client.patch(base, json={"name": "x"}, headers=forged)).status_code == 401


# -- test send -----------------------------------------------------------------------------


async def test_a_test_send_arrives_marked_signed_without_pixel_and_counted_nowhere(
    app_factory, db, smtp, admin_headers, tmp_path
) -> None:
    dkim = support.dkim_key(tmp_path)
    real = await people.add_subscriber(db, "real@example.org", tracking_consent=True)
    async with app_factory(
        dkim_private_key_file=dkim.path, dkim_selector="news", dkim_domain="newsletter.test"
    ) as (_app, client):
        campaign_id = await _create(client, admin_headers)
        answer = await client.post(
            f"/admin/api/campaigns/{campaign_id}/test",
            json={"to": "operator@shop.example"},
            headers=admin_headers,
        )
        assert answer.status_code == 202, answer.text
        [message] = await smtp.wait_for(1)
        await settled(db)
        assert message.recipients == ["operator@shop.example"]
        assert message.message["Subject"] == "[Test] April news for Ada Lovelace"
        assert message.message["X-Newsletter-Test"] == "yes"
        assert dkimpy.verify(message.raw, dnsfunc=dkim.dnsfunc("news", "newsletter.test"))
        # No pixel at all; its links (footer and header) name nobody real.
        assert "/o/" not in message.part("html")
        found = links_of(message)
        assert found["pixel"] is None
        assert found["header"] == 0 and found["html"] == {0} and found["text"] == {0}
        # Following its one-click unsubscribe erases nobody.
        token = message.message["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]
        posted = await client.post(f"/unsubscribe/{token}", content=b"List-Unsubscribe=One-Click")
        assert posted.status_code == 200
    assert await db.fetchval("SELECT count(*) FROM subscribers WHERE id = $1", real) == 1
    row = await db.fetchrow(
        "SELECT recipients, sent, failed, first_sent_at FROM campaigns WHERE id = $1", campaign_id
    )
    assert tuple(row) == (0, 0, 0, None)
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 0
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0  # the address is gone too
    stats = await client_stats(app_factory, admin_headers, campaign_id)
    assert (stats["recipients"], stats["opens"]) == (0, 0)


async def client_stats(app_factory, admin_headers, campaign_id) -> dict:
    async with app_factory() as (_app, client):
        answer = await client.get(
            f"/admin/api/campaigns/{campaign_id}/stats", headers=admin_headers
        )
    assert answer.status_code == 200
    return answer.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": "not an address"}, "to"),
        ({"to": ""}, "to"),
        ({"to": None}, "to"),
        ({"to": ["a@b.example"]}, "to"),
        ({"to": "a@b.example\r\nBcc: victim@example.org"}, "to"),
        ({"to": "x" * 300 + "@example.org"}, "to"),
        ({}, "to"),
        ({"to": "a@b.example", "bcc": "c@d.example"}, "bcc"),
        (["a@b.example"], "body"),
    ],
)
async def test_a_test_send_to_a_bad_address_is_a_422_field_error_and_queues_nothing(
    client, db, admin_headers, body, field
) -> None:
    campaign_id = await _create(client, admin_headers)
    answer = await client.post(
        f"/admin/api/campaigns/{campaign_id}/test", json=body, headers=admin_headers
    )
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["fields"]
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_test_send_malformed_oversized_or_of_an_unknown_campaign(
    client, db, admin_headers
) -> None:
    campaign_id = await _create(client, admin_headers)
    url = f"/admin/api/campaigns/{campaign_id}/test"
    malformed = await client.post(url, content=b"{not json", headers=admin_headers)
    assert malformed.status_code == 400
    huge = await client.post(
        url, content=b'{"to": "' + b"a" * 10_000 + b'@b.example"}', headers=admin_headers
    )
    assert huge.status_code == 413
    unknown = await client.post(
        "/admin/api/campaigns/999999/test", json={"to": "a@b.example"}, headers=admin_headers
    )
    assert unknown.status_code == 404
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_test_sends_are_limited_per_operator_and_campaign(
    app_factory, db, admin_headers
) -> None:
    other = "another-admin-token-of-at-least-some-length"
    async with app_factory(
        campaign_test_per_hour=3, admin_tokens=(support.ADMIN_TOKEN, other), outbox_concurrency=0
    ) as (_app, client):
        first = await _create(client, admin_headers)
        second = await _create(client, admin_headers)

        async def test(campaign_id: int, headers: dict[str, str]) -> int:
            answer = await client.post(
                f"/admin/api/campaigns/{campaign_id}/test",
                json={"to": "operator@shop.example"},
                headers=headers,
            )
            return answer.status_code

        # Concurrent requests: the count is one statement per request, so exactly 3 pass.
        codes = await asyncio.gather(*(test(first, admin_headers) for _ in range(5)))
        assert sorted(codes) == [202, 202, 202, 429, 429]
        limited = await client.post(
            f"/admin/api/campaigns/{first}/test",
            json={"to": "operator@shop.example"},
            headers=admin_headers,
        )
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        # Another campaign, or another operator, has an allowance of its own.
        assert await test(second, admin_headers) == 202
        assert await test(first, {"Authorization": f"Bearer {other}"}) == 202
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE kind = 'campaign_test'") == 5


# -- edit until the first send -------------------------------------------------------------


async def test_an_edit_before_the_send_changes_what_is_sent(
    client, db, smtp, admin_headers
) -> None:
    await people.add_subscriber(db, "ada@example.org", name="Ada")
    campaign_id = await _create(client, admin_headers)
    edited = await client.patch(
        f"/admin/api/campaigns/{campaign_id}",
        json={"subject": "May news for {{ name }}", "text": "Hello {{ name }}, fixed.\n"},
        headers=admin_headers,
    )
    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert body["subject"] == "May news for {{ name }}" and body["name"] == CAMPAIGN["name"]
    assert body["html"] == CAMPAIGN["html"]
    await client.post(f"/admin/api/campaigns/{campaign_id}/send", headers=admin_headers)
    [message] = await smtp.wait_for(1)
    assert message.message["Subject"] == "May news for Ada"
    assert message.part("plain").startswith("Hello Ada, fixed.")


async def test_an_edit_is_refused_with_409_once_the_send_started(
    client, db, smtp, admin_headers
) -> None:
    await people.add_subscriber(db, "ada@example.org")
    campaign_id, queued = await send(client, admin_headers)
    assert queued == 1
    refused = await client.patch(
        f"/admin/api/campaigns/{campaign_id}", json={"name": "Renamed"}, headers=admin_headers
    )
    assert refused.status_code == 409
    assert refused.json()["error"] == "already_sent"
    assert (
        await db.fetchval("SELECT name FROM campaigns WHERE id = $1", campaign_id) == "April issue"
    )


async def test_a_scheduled_send_that_has_not_started_can_still_be_edited(
    client, db, admin_headers
) -> None:
    campaign_id = await _create(client, admin_headers)
    scheduled = await client.post(
        f"/admin/api/campaigns/{campaign_id}/send",
        json={"at": "2099-01-01T09:00:00Z"},
        headers=admin_headers,
    )
    assert scheduled.status_code == 202
    edited = await client.patch(
        f"/admin/api/campaigns/{campaign_id}", json={"name": "Renamed"}, headers=admin_headers
    )
    assert edited.status_code == 200
    assert edited.json()["scheduled_at"] is not None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": "Hi {{ nmae }}"}, "subject"),
        ({"html": "<p>{% if %}</p>"}, "html"),
        ({"name": ""}, "name"),
        ({"name": "two\nlines"}, "name"),
        ({"subject": 5}, "subject"),
        ({"text": "x" * 200_001}, "text"),
        ({"topics": ["no-such-topic"]}, "topics"),
        ({"topics": "weekly"}, "topics"),
        ({"id": 5}, "id"),
        ({"first_sent_at": None}, "first_sent_at"),
        ({}, "body"),
        ([], "body"),
    ],
)
async def test_an_edit_is_validated_as_creation_is(client, db, admin_headers, body, field) -> None:
    campaign_id = await _create(client, admin_headers)
    answer = await client.patch(
        f"/admin/api/campaigns/{campaign_id}", json=body, headers=admin_headers
    )
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["fields"]
    if answer.json()["fields"][field].startswith("template error"):  # with the variables
        assert answer.json()["variables"] == [v.name for v in store.VARIABLES]
    if body == {"subject": "Hi {{ nmae }}"}:
        assert "unsubscribe_url" in answer.json()["fields"]["subject"]
    row = await db.fetchrow(
        "SELECT name, subject, html, text FROM campaigns WHERE id = $1", campaign_id
    )
    assert dict(row) == {k: CAMPAIGN[k] for k in ("name", "subject", "html", "text")}


async def test_an_edit_malformed_oversized_or_of_an_unknown_campaign(client, admin_headers) -> None:
    campaign_id = await _create(client, admin_headers)
    url = f"/admin/api/campaigns/{campaign_id}"
    assert (await client.patch(url, content=b"{", headers=admin_headers)).status_code == 400
    huge = b'{"html": "' + b"a" * (store.MAX_REQUEST_BYTES + 1) + b'"}'
    assert (await client.patch(url, content=huge, headers=admin_headers)).status_code == 413
    missing = await client.patch(
        "/admin/api/campaigns/999999", json={"name": "x"}, headers=admin_headers
    )
    assert missing.status_code == 404


async def test_an_edit_can_set_and_clear_the_topics(client, db, admin_headers) -> None:
    made = await client.post(
        "/admin/api/topics", json={"slug": "weekly", "name": "Weekly"}, headers=admin_headers
    )
    assert made.status_code == 201, made.text
    campaign_id = await _create(client, admin_headers)
    url = f"/admin/api/campaigns/{campaign_id}"
    set_ = await client.patch(url, json={"topics": ["weekly"]}, headers=admin_headers)
    assert set_.status_code == 200 and set_.json()["topics"] == ["weekly"]
    cleared = await client.patch(url, json={"topics": None}, headers=admin_headers)
    assert cleared.status_code == 200 and cleared.json()["topics"] is None


async def _waits_for_the_send_lock(db: asyncpg.Connection, edit: asyncio.Task) -> None:
    """Positive evidence that the edit is blocked on an advisory lock of this database
    (pg_locks); an edit that answers first did not wait for the send."""
    while not await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    ):
        assert not edit.done(), f"the edit answered without waiting: {edit.result().status_code}"
        await asyncio.sleep(0.01)


async def test_an_edit_racing_a_send_is_either_sent_or_refused(
    app_factory, database_url, db, admin_headers
) -> None:
    """A send that holds the campaign's send lock (queue_send: the lock, then the
    recipients, then the campaign row) makes an edit wait; the edit then finds the send
    started (409) and the row unchanged. A plain conditional UPDATE would not wait here
    (the send has not touched the row yet) and would change a campaign being queued."""
    await people.add_subscriber(db, "ada@example.org")
    async with app_factory(outbox_concurrency=0) as (_app, client):
        campaign_id = await _create(client, admin_headers)
        holder = await asyncpg.connect(database_url)
        try:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute(
                "SELECT pg_advisory_xact_lock(1852597089, ($1 % 2147483647)::int)", campaign_id
            )
            edit = asyncio.create_task(
                client.patch(
                    f"/admin/api/campaigns/{campaign_id}",
                    json={"name": "Renamed"},
                    headers=admin_headers,
                )
            )
            await _waits_for_the_send_lock(db, edit)
            # The send's last step: the campaign row says the send started.
            await holder.execute(
                "UPDATE campaigns SET first_sent_at = now(), recipients = 1 WHERE id = $1",
                campaign_id,
            )
            await transaction.commit()
            answer = await edit
        finally:
            await holder.close()
    assert answer.status_code == 409
    assert await db.fetchval("SELECT name FROM campaigns WHERE id = $1", campaign_id) == (
        "April issue"
    )


async def test_concurrent_edits_and_a_send_leave_one_consistent_campaign(
    client, db, smtp, admin_headers
) -> None:
    await people.add_subscriber(db, "ada@example.org", name="Ada")
    campaign_id = await _create(client, admin_headers)
    url = f"/admin/api/campaigns/{campaign_id}"
    edits = [
        client.patch(
            url, json={"subject": f"Version {i} for {{{{ name }}}}"}, headers=admin_headers
        )
        for i in range(6)
    ]
    sending = client.post(f"{url}/send", headers=admin_headers)
    *answers, sent = await asyncio.gather(*edits, sending)
    assert sent.status_code == 202 and sent.json()["queued"] == 1
    assert {a.status_code for a in answers} <= {200, 409}
    [message] = await smtp.wait_for(1)
    stored = await db.fetchval("SELECT subject FROM campaigns WHERE id = $1", campaign_id)
    # What went out is what the campaign holds: no edit landed after the send started.
    assert message.message["Subject"] == stored.replace("{{ name }}", "Ada")


# -- one list of variables -----------------------------------------------------------------


def test_the_renderer_fills_exactly_the_listed_variables(settings) -> None:
    tokens = Tokens((support.TEST_KEY,), 3600)
    links = mail.Links.mint(settings, tokens, 1, 1, True)
    filled = mail.template_variables(settings, "a@b.example", None, links)
    assert list(filled) == [v.name for v in store.VARIABLES] == list(store.SAMPLE_VARIABLES)


async def test_only_a_test_job_goes_without_a_subscriber_and_only_it_holds_an_address(
    db,
) -> None:
    campaign_id = await people.add_campaign(db)
    subscriber = await people.add_subscriber(db, "ada@example.org")
    for kind, sid, test_campaign, address in (
        ("confirm", None, None, None),
        ("confirm", subscriber, campaign_id, "a@b.example"),
        ("campaign_test", subscriber, campaign_id, "a@b.example"),
        ("campaign_test", None, None, "a@b.example"),
        ("campaign_test", None, campaign_id, None),
    ):
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await db.execute(
                "INSERT INTO outbox (kind, subscriber_id, test_campaign_id, test_email)"
                " VALUES ($1, $2, $3, $4)",
                kind,
                sid,
                test_campaign,
                address,
            )
        assert refused.value.constraint_name == "outbox_test_check", kind
