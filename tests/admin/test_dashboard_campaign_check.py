"""The dashboard's steps before "Send…" (issue 30): preview, test send, edit, variables."""

from __future__ import annotations

import asyncio
import html as html_lib
import re

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from service.campaigns import store
from tests import people
from tests.admin.test_dashboard import add_campaign, add_subscriber, browser, sign_in
from tests.campaigns.test_campaign_send import settled

TEMPLATED = {
    "subject": 'December news for {{ name or "you" }}',
    "html": "<p>Hello {{ name }}</p>",
    "text": "Hello {{ name }}\n",
}


@pytest.fixture
async def web(app: Starlette):
    async with browser(app) as client:
        yield client


async def _templated_campaign(db: asyncpg.Connection) -> int:
    return await db.fetchval(
        "INSERT INTO campaigns (name, subject, html, text) VALUES ('December', $1, $2, $3)"
        " RETURNING id",
        TEMPLATED["subject"],
        TEMPLATED["html"],
        TEMPLATED["text"],
    )


async def test_the_campaign_page_offers_preview_and_edit_before_send(web, db) -> None:
    campaign = await _templated_campaign(db)
    await sign_in(web)
    shown = await web.get(f"/admin/campaigns/{campaign}")
    links = re.findall(r'<a class="button" href="([^"]+)"', shown.text)
    assert links[:3] == [
        f"/admin/campaigns/{campaign}/preview",
        f"/admin/campaigns/{campaign}/edit",
        f"/admin/campaigns/{campaign}/send",
    ]
    # The send step shows the subject rendered, not its template.
    step = await web.get(f"/admin/campaigns/{campaign}/send")
    assert "December news for Ada Lovelace" in step.text
    assert "{{" not in step.text


async def test_the_preview_page_shows_the_subject_a_sandboxed_frame_and_the_text(web, db) -> None:
    campaign = await _templated_campaign(db)
    await sign_in(web)
    shown = await web.get(f"/admin/campaigns/{campaign}/preview")
    assert shown.status_code == 200
    assert "December news for Ada Lovelace" in shown.text
    assert f'src="/admin/campaigns/{campaign}/preview/html"' in shown.text
    assert 'sandbox=""' in shown.text
    text = html_lib.unescape(re.search(r'<pre id="preview-text">(.*?)</pre>', shown.text, re.S)[1])
    assert text.startswith("Hello Ada Lovelace\n") and "/unsubscribe/" in text
    csp = shown.headers["content-security-policy"]
    assert "frame-src 'self'" in csp and "script-src" not in csp and "unsafe-inline" not in csp
    assert "<script" not in shown.text and " style=" not in shown.text

    frame = await web.get(f"/admin/campaigns/{campaign}/preview/html")
    assert frame.status_code == 200
    assert frame.text.startswith("<p>Hello Ada Lovelace</p>")
    frame_csp = frame.headers["content-security-policy"]
    assert frame_csp.startswith("sandbox;") and "script-src" not in frame_csp
    assert "frame-ancestors 'self'" in frame_csp
    assert frame.headers["x-frame-options"] == "SAMEORIGIN"
    # The pixel is in the email, but the frame does not fetch it.
    assert "/o/" not in frame.text and "data:image/gif;base64," in frame.text


async def test_previewing_a_subscribers_email_in_the_dashboard_records_no_open(web, db) -> None:
    subscriber = await people.add_subscriber(
        db, "ada@example.com", name="Ada", tracking_consent=True
    )
    campaign = await _templated_campaign(db)
    await sign_in(web)
    shown = await web.get(
        f"/admin/campaigns/{campaign}/preview", params={"email": "ada@example.com"}
    )
    assert shown.status_code == 200
    assert "December news for Ada" in shown.text
    assert "/preview/html?email=ada%40example.com" in shown.text
    assert "tracking image is not loaded here" in shown.text
    frame = await web.get(
        f"/admin/campaigns/{campaign}/preview/html", params={"email": "ada@example.com"}
    )
    assert frame.text.startswith("<p>Hello Ada</p>") and "/o/" not in frame.text
    assert await db.fetchval("SELECT count(*) FROM opens WHERE subscriber_id = $1", subscriber) == 0
    missing = await web.get(
        f"/admin/campaigns/{campaign}/preview", params={"email": "nobody@example.com"}
    )
    assert missing.status_code == 404 and "No subscriber has that address." in missing.text
    assert (await web.get("/admin/campaigns/999999/preview")).status_code == 404
    assert (await web.get("/admin/campaigns/999999/preview/html")).status_code == 404


async def test_a_test_send_from_the_dashboard_goes_out_marked_and_says_so_once(
    web, db, smtp
) -> None:
    campaign = await _templated_campaign(db)
    csrf = await sign_in(web)
    answer = await web.post(
        f"/admin/campaigns/{campaign}/test", data={"csrf": csrf, "to": "me@shop.example"}
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/admin/campaigns/{campaign}/preview"
    assert "Test email queued" in (await web.get(answer.headers["location"])).text
    assert "Test email queued" not in (await web.get(answer.headers["location"])).text
    [message] = await smtp.wait_for(1)
    assert message.recipients == ["me@shop.example"]
    assert message.message["Subject"] == "[Test] December news for Ada Lovelace"
    await settled(db)
    row = await db.fetchrow("SELECT recipients, sent, first_sent_at FROM campaigns")
    assert tuple(row) == (0, 0, None)


@pytest.mark.parametrize("to", ["", "not-an-address", "a@b.example\r\nBcc: x@y.example"])
async def test_a_bad_test_address_is_a_field_error_on_the_page(web, db, to) -> None:
    campaign = await _templated_campaign(db)
    csrf = await sign_in(web)
    answer = await web.post(f"/admin/campaigns/{campaign}/test", data={"csrf": csrf, "to": to})
    assert answer.status_code == 422
    assert 'id="test-error"' in answer.text and 'aria-invalid="true"' in answer.text
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_test_sends_from_the_dashboard_are_limited(app_factory, db) -> None:
    async with app_factory(campaign_test_per_hour=2, outbox_concurrency=0) as (app, _client):
        async with browser(app) as web:
            campaign = await _templated_campaign(db)
            csrf = await sign_in(web)
            codes = []
            for _ in range(3):
                answer = await web.post(
                    f"/admin/campaigns/{campaign}/test",
                    data={"csrf": csrf, "to": "me@shop.example"},
                )
                codes.append(answer.status_code)
            assert codes == [303, 303, 429]
            assert "test sends for this hour are used up" in answer.text


async def test_the_forms_show_the_variables_the_renderer_fills(web, db) -> None:
    campaign = await _templated_campaign(db)
    await sign_in(web)
    for path in ("/admin/campaigns/new", f"/admin/campaigns/{campaign}/edit"):
        shown = await web.get(path)
        assert shown.status_code == 200
        aside = shown.text[shown.text.index('<aside id="variables"') :]
        listed = re.findall(r"<dt><code>([a-z_]+)</code></dt>", aside)
        assert listed == [variable.name for variable in store.VARIABLES]


async def test_a_campaign_is_edited_from_the_form_until_its_send_starts(web, db) -> None:
    await add_subscriber(db, "reader@example.com")
    campaign = await _templated_campaign(db)
    csrf = await sign_in(web)
    form = await web.get(f"/admin/campaigns/{campaign}/edit")
    assert "December news for {{ name or &#34;you&#34; }}" in form.text  # the template, to edit
    fields = {"csrf": csrf, "name": "December", "text": "Hi {{ name }}\n", "topics": ""}
    bad = await web.post(
        f"/admin/campaigns/{campaign}/edit",
        data={**fields, "subject": "Typo {{ nmae }}", "html": "<p>x</p>"},
    )
    assert bad.status_code == 422
    assert 'id="subject-error"' in bad.text and "variables: email, manage_url" in bad.text
    assert 'value="Typo {{ nmae }}"' in bad.text  # the values are kept
    saved = await web.post(
        f"/admin/campaigns/{campaign}/edit",
        data={**fields, "subject": "December news, fixed", "html": "<p>Fixed</p>"},
    )
    assert saved.status_code == 303
    assert saved.headers["location"] == f"/admin/campaigns/{campaign}/preview"
    assert "December news, fixed" in (await web.get(saved.headers["location"])).text
    row = await db.fetchrow("SELECT subject, html, text FROM campaigns WHERE id = $1", campaign)
    assert tuple(row) == ("December news, fixed", "<p>Fixed</p>", "Hi {{ name }}\n")

    sent = await web.post(f"/admin/campaigns/{campaign}/send", data={"csrf": csrf})
    assert sent.status_code == 303
    refused = await web.post(
        f"/admin/campaigns/{campaign}/edit",
        data={**fields, "subject": "Too late", "html": "<p>x</p>"},
    )
    assert refused.status_code == 409 and "send has started" in refused.text
    assert (await web.get(f"/admin/campaigns/{campaign}/edit")).status_code == 409
    page = await web.get(f"/admin/campaigns/{campaign}")
    assert f'href="/admin/campaigns/{campaign}/edit"' not in page.text
    assert await db.fetchval("SELECT subject FROM campaigns WHERE id = $1", campaign) == (
        "December news, fixed"
    )


async def test_concurrent_dashboard_edits_and_send_never_change_a_started_campaign(
    app: Starlette, db
) -> None:
    await add_subscriber(db, "reader@example.com")
    campaign = await add_campaign(db)
    async with browser(app) as web:
        csrf = await sign_in(web)

        async def edit(i: int) -> httpx.Response:
            return await web.post(
                f"/admin/campaigns/{campaign}/edit",
                data={"csrf": csrf, "name": f"v{i}", "subject": f"v{i}", "html": "h", "text": "t"},
            )

        send = web.post(f"/admin/campaigns/{campaign}/send", data={"csrf": csrf})
        *edits, sent = await asyncio.gather(*(edit(i) for i in range(5)), send)
    assert sent.status_code == 303
    assert {e.status_code for e in edits} <= {303, 409}
    # Every edit that was saved was saved before the send started (the send lock).
    accepted = {f"v{i}" for i, e in enumerate(edits) if e.status_code == 303}
    subject = await db.fetchval("SELECT subject FROM campaigns WHERE id = $1", campaign)
    assert subject in accepted or (not accepted and subject == "What is new")
