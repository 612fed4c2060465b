"""The public pages a person meets: the form again on an error, links onward, titles,
the favicon, and pages (not bare status lines) for GET /subscribe and an oversized form."""

from __future__ import annotations

import html
import re

import pytest

from tests.signup_helpers import links, subscribe, subscribe_json, wait_until


def title(page: str) -> str:
    return html.unescape(re.search(r"<title>(.*?)</title>", page, re.S).group(1).strip())


def input_value(page: str, name: str) -> str:
    tag = re.search(rf'<input [^>]*name="{name}"[^>]*>', page).group(0)
    return html.unescape(re.search(r'value="([^"]*)"', tag).group(1))


async def test_a_refused_form_comes_back_with_the_message_beside_the_field_and_what_was_typed(
    client, db
) -> None:
    answer = await subscribe(
        client, "ada@example", name="Ada <L>", tracking="1", source="https://site.test/news"
    )
    assert answer.status_code == 400
    page = answer.text
    assert '<form method="post" action="/subscribe">' in page
    # The message sits right after the email field, which points at it.
    email_field = re.search(r'<input id="email"[^>]*>', page).group(0)
    assert 'aria-invalid="true"' in email_field and 'aria-describedby="email-error"' in email_field
    after = page[page.index(email_field) + len(email_field) :]
    assert after.lstrip().startswith('<p class="field-error" id="email-error">')
    assert input_value(page, "email") == "ada@example"
    assert input_value(page, "name") == "Ada <L>"
    assert "Ada &lt;L&gt;" in page  # escaped
    assert re.search(r'name="tracking" value="1" checked', page)
    assert input_value(page, "source") == "https://site.test/news"
    honeypot = re.search(r'<input [^>]*name="website"[^>]*>', page).group(0)
    assert "value=" not in honeypot  # the honeypot is never refilled
    assert "<strong>email</strong>" not in page  # no field keys shown to people
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


async def test_the_form_comes_back_empty_of_the_honeypot_and_unticked(client) -> None:
    answer = await subscribe(client, "", website="")
    assert answer.status_code == 400
    assert "Please enter your email address." in answer.text
    assert not re.search(r'name="tracking"[^>]*checked', answer.text)


async def test_a_refused_form_without_a_source_keeps_the_page_it_came_from(client) -> None:
    answer = await client.post(
        "/subscribe",
        data={"email": "nope"},
        headers={"referer": "https://site.test/join?ref=mail"},
    )
    assert input_value(answer.text, "source") == "https://site.test/join"


async def test_an_overlong_name_is_marked_on_the_name_field(client) -> None:
    answer = await subscribe(client, "ada@example.com", name="x" * 101)
    assert answer.status_code == 400
    assert 'aria-describedby="name-error"' in answer.text
    assert input_value(answer.text, "email") == "ada@example.com"


@pytest.mark.parametrize(("local", "accepted"), [("a" * 64, True), ("a" * 65, False)])
async def test_the_local_part_may_have_at_most_64_characters(client, db, local, accepted) -> None:
    answer = await subscribe_json(client, {"email": f"{local}@example.com"})
    if accepted:
        assert answer.status_code == 202
    else:
        assert answer.status_code == 422
        assert "too long before the @-sign" in answer.json()["errors"]["email"]
        assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


async def test_an_80_character_local_part_is_refused_on_the_form_too(client) -> None:
    answer = await subscribe(client, "a" * 80 + "@example.com")
    assert answer.status_code == 400
    assert 'id="email-error"' in answer.text


async def test_get_on_subscribe_is_a_405_page_that_says_what_the_address_is_for(
    app_factory,
) -> None:
    async with app_factory(site_url="https://site.test/") as (_app, client):
        page = await client.get("/subscribe")
        assert page.status_code == 405
        assert page.headers["allow"] == "POST"
        assert page.headers["content-type"].startswith("text/html")
        assert title(page.text) == "Sign-ups are sent by a form"
        assert '<a href="https://site.test/">' in page.text
        api = await client.get("/subscribe", headers={"accept": "application/json"})
        assert api.status_code == 405 and "errors" in api.json()
        assert (await client.request("OPTIONS", "/subscribe")).status_code == 405


async def test_an_oversized_form_gets_the_form_page_and_json_gets_json(client, db) -> None:
    big = "x" * 9000
    form = await subscribe(client, "a@example.com", name=big)
    assert form.status_code == 413
    assert form.headers["content-type"].startswith("text/html")
    assert "larger than 8192 bytes" in form.text
    assert '<form method="post" action="/subscribe">' in form.text
    api = await subscribe_json(client, {"email": "a@example.com", "pad": big})
    assert api.status_code == 413
    assert "larger than 8192 bytes" in api.json()["errors"]["body"]
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


async def test_the_favicon_is_served_and_declared(client, app_factory) -> None:
    icon = await client.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO header
    async with app_factory(demo_page=True) as (_app, demo):
        page = await demo.get("/")
    assert '<link rel="icon" href="/favicon.ico">' in page.text


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"site_url": "https://www.site.test/news"}, "https://www.site.test/news"),
        ({"confirmed_url": "https://www.site.test/welcome"}, "https://www.site.test/"),
        ({"demo_page": True}, "/"),
        ({}, None),
    ],
)
async def test_check_your_inbox_links_back_to_the_site(app_factory, overrides, expected) -> None:
    async with app_factory(**overrides) as (_app, client):
        page = (await subscribe(client, "ada@example.com")).text
    assert title(page) == "Check your inbox"
    onward = re.search(r'<p class="onward"><a href="([^"]*)">', page)
    assert (onward.group(1) if onward else None) == expected


async def test_confirmed_and_expired_link_pages_lead_onward(app_factory, db, smtp) -> None:
    async with app_factory(site_url="https://site.test/") as (_app, client):
        await subscribe(client, "ada@example.com")
        [message] = await wait_until(lambda: _mail(smtp))
        paths = links(message)
        await db.execute("UPDATE subscribers SET confirm_sent_at = now() - interval '1 hour'")
        done = await client.post(paths["confirm"])
        invalid = await client.get("/confirm/not-a-token")
    assert "Subscription confirmed" in done.text
    assert '<a href="https://site.test/">Back to the website</a>' in done.text
    assert invalid.status_code == 400
    assert '<a href="https://site.test/">Sign up again</a>' in invalid.text


async def _mail(smtp):
    return smtp.messages


async def test_the_cancel_result_page_has_its_own_title(client, db, smtp) -> None:
    await subscribe(client, "ada@example.com")
    [message] = await wait_until(lambda: _mail(smtp))
    cancel = links(message)["cancel"]
    assert title((await client.get(cancel)).text) == "Remove this sign-up"
    assert title((await client.post(cancel)).text) == "Sign-up removed"


@pytest.mark.parametrize("path", ["/no-such-page", "/confirm/"])
async def test_an_unknown_path_answers_an_html_page_like_the_others(client, path) -> None:
    answer = await client.get(path)
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")
    assert "<h1>Page not found</h1>" in answer.text
    assert "Content-Security-Policy" in answer.headers
    api = await client.get("/admin/api/no-such-thing")
    assert api.status_code == 404 and api.json() == {"error": "Not Found"}


@pytest.mark.parametrize("path", ["/unsubscribe/", "/unsubscribe"])
async def test_unsubscribe_without_a_token_says_how_to_unsubscribe_without_the_link(
    client, path
) -> None:
    answer = await client.get(path, follow_redirects=False)
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/html")
    assert "This unsubscribe link is not valid" in answer.text
    # No promise that nothing keeps (nobody reads replies): the way that works instead.
    assert "reply" not in answer.text
    assert '<a href="/manage">Enter your address</a>' in answer.text
