"""Topics (issue 28) through the real app, PostgreSQL, outbox worker and SMTP server:
the admin API, the sign-up field, the confirmation, topic campaigns, List-Id, the topic
one-click unsubscribe and the welcome email."""

from __future__ import annotations

import json
import re

import pytest

from service import tokens as tokens_module
from service.tokens import Tokens
from tests import people, support
from tests.signup_helpers import links, wait_until

TOKENS = Tokens((support.TEST_KEY,), 3600)
_UNSUB = re.compile(re.escape(support.PUBLIC_URL) + r"/unsubscribe/([A-Za-z0-9._-]+)")
_PIXEL = re.compile(re.escape(support.PUBLIC_URL) + r"/o/([A-Za-z0-9._-]+)\.gif")
CAMPAIGN = {"name": "Issue", "subject": "Hello {{ name }}", "html": "<p>Hi</p>", "text": "Hi"}
WELCOME = {"subject": "Welcome to Weekly", "html": "<p>Welcome {{ name }}</p>", "text": "Welcome"}


async def _topic(client, admin_headers, slug: str, **fields) -> dict:
    body = {"slug": slug, "name": slug.title(), "description": f"About {slug}", **fields}
    response = await client.post("/admin/api/topics", json=body, headers=admin_headers)
    assert response.status_code == 201, response.text
    return response.json()


async def _member(db, email: str, *slugs: str) -> int:
    sid = await people.add_subscriber(db, email)
    for slug in slugs:
        await db.execute(
            "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
            " SELECT id, $2 FROM topics WHERE slug = $1",
            slug,
            sid,
        )
    return sid


async def _topics_of(db, sid: int) -> list[str]:
    return [
        r["slug"]
        for r in await db.fetch(
            "SELECT t.slug FROM subscriber_topics st JOIN topics t ON t.id = st.topic_id"
            " WHERE st.subscriber_id = $1 ORDER BY t.slug",
            sid,
        )
    ]


async def _confirm_paths(client, db, smtp, email: str, **payload) -> dict[str, str]:
    response = await client.post("/subscribe", json={"email": email, **payload})
    assert response.status_code == 202, response.text
    messages = await wait_until(lambda: _async(smtp.to(email)))
    # The worker records the send just after the relay took it: then it is in the past.
    await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
    await db.execute("UPDATE subscribers SET confirm_sent_at = now() - interval '1 minute'")
    return links(messages[-1])


async def _async(value):
    return value


# -- the admin API -------------------------------------------------------------------


async def test_admin_creates_lists_changes_and_deletes_topics_with_subscriber_counts(
    client, db, admin_headers
) -> None:
    created = await _topic(client, admin_headers, "weekly", default=True)
    assert created == {
        "slug": "weekly",
        "name": "Weekly",
        "description": "About weekly",
        "default": True,
        "subscribers": 0,
        "welcome": None,
    }
    await _topic(client, admin_headers, "offers")
    await _member(db, "a@example.org", "weekly", "offers")
    await _member(db, "b@example.org", "weekly")
    pending = await _member(db, "c@example.org", "weekly")
    await db.execute("UPDATE subscribers SET status = 'pending' WHERE id = $1", pending)

    listed = (await client.get("/admin/api/topics", headers=admin_headers)).json()["topics"]
    assert [(t["slug"], t["subscribers"]) for t in listed] == [("offers", 1), ("weekly", 2)]

    changed = await client.patch(
        "/admin/api/topics/offers",
        json={"name": "Offers", "default": True, "welcome": WELCOME},
        headers=admin_headers,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["default"] is True
    assert changed.json()["welcome"]["subject"] == WELCOME["subject"]

    assert (
        await client.delete("/admin/api/topics/offers", headers=admin_headers)
    ).status_code == 204
    assert (
        await client.delete("/admin/api/topics/offers", headers=admin_headers)
    ).status_code == 204
    assert await db.fetchval("SELECT count(*) FROM subscriber_topics") == 3
    missing = await client.patch("/admin/api/topics/offers", json={}, headers=admin_headers)
    assert missing.status_code == 404


async def test_admin_topic_errors_are_field_level_and_a_token_is_needed(
    client, admin_headers
) -> None:
    await _topic(client, admin_headers, "weekly")
    taken = await client.post(
        "/admin/api/topics", json={"slug": "weekly", "name": "Again"}, headers=admin_headers
    )
    assert taken.status_code == 409
    bad = await client.post(
        "/admin/api/topics",
        json={"slug": "Not A Slug", "name": "", "default": "yes", "welcome": {"subject": "x"}},
        headers=admin_headers,
    )
    assert bad.status_code == 422
    assert set(bad.json()["fields"]) == {
        "slug",
        "name",
        "default",
        "welcome.html",
        "welcome.text",
    }
    renamed = await client.patch(
        "/admin/api/topics/weekly", json={"slug": "other"}, headers=admin_headers
    )
    assert renamed.status_code == 422
    assert (await client.get("/admin/api/topics")).status_code == 401
    no_token = await client.post("/admin/api/topics", json={"slug": "x", "name": "X"})
    assert no_token.status_code == 401


# -- sign-up and confirmation --------------------------------------------------------


async def test_an_unknown_topic_is_a_field_error_and_stores_nothing(
    client, db, admin_headers
) -> None:
    await _topic(client, admin_headers, "weekly")
    response = await client.post(
        "/subscribe", json={"email": "ada@example.org", "topics": ["weekly", "nope"]}
    )
    assert response.status_code == 422
    assert "nope" in response.json()["errors"]["topics"]
    form = await client.post("/subscribe", data={"email": "ada@example.org", "topics": "nope"})
    assert form.status_code == 400
    assert "nope" in form.text
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


async def test_form_topics_are_shown_on_the_confirmation_page_and_joined_with_evidence(
    client, db, smtp, admin_headers
) -> None:
    await _topic(client, admin_headers, "weekly", default=True)
    await _topic(client, admin_headers, "offers")
    await _topic(client, admin_headers, "events")
    # A form's checkboxes: the field repeated.
    response = await client.post(
        "/subscribe",
        content="email=ada%40example.org&topics=offers&topics=events",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    messages = await wait_until(lambda: _async(smtp.to("ada@example.org")))
    paths = links(messages[-1])

    page = await client.get(paths["confirm"])
    ticked = set(re.findall(r'name="topics" value="([a-z-]+)" checked', page.text))
    shown = set(re.findall(r'name="topics" value="([a-z-]+)"', page.text))
    assert ticked == {"offers", "events"}
    assert shown == {"offers", "events", "weekly"}  # the other choices too
    sid = await db.fetchval("SELECT id FROM subscribers")
    assert await _topics_of(db, sid) == []  # a sign-up grants nothing

    # The person keeps offers, drops events and adds weekly, then presses the button.
    done = await client.post(
        paths["confirm"],
        data={"choices": "1", "topics": ["offers", "weekly"]},
        headers={"user-agent": "Browser/Topics"},
    )
    assert done.status_code == 200
    assert await _topics_of(db, sid) == ["offers", "weekly"]
    events = await db.fetch(
        "SELECT kind, topic, method, ip, user_agent, consent_text_version FROM consent_events"
        " WHERE kind LIKE 'topic%' ORDER BY topic"
    )
    assert [(e["kind"], e["topic"], e["method"]) for e in events] == [
        ("topic_joined", "offers", None),
        ("topic_joined", "weekly", None),
    ]
    assert {(e["ip"], e["user_agent"], e["consent_text_version"]) for e in events} == {
        ("198.51.100.0", "Browser/Topics", "v1")
    }
    export = await client.get("/admin/api/subscribers/ada@example.org", headers=admin_headers)
    exported = [(e["kind"], e["topic"]) for e in export.json()["consent_events"]]
    assert ("topic_joined", "offers") in exported and ("topic_joined", "weekly") in exported
    assert [t["slug"] for t in export.json()["topics"]] == ["offers", "weekly"]


async def test_a_sign_up_naming_no_topic_joins_the_default_topics_on_confirmation(
    client, db, smtp, admin_headers
) -> None:
    await _topic(client, admin_headers, "weekly", default=True)
    await _topic(client, admin_headers, "offers")
    paths = await _confirm_paths(client, db, smtp, "ada@example.org")
    assert (await client.post(paths["confirm"], data={"auto": "1"})).status_code == 200
    sid = await db.fetchval("SELECT id FROM subscribers WHERE status = 'active'")
    assert await _topics_of(db, sid) == ["weekly"]


# -- campaigns -----------------------------------------------------------------------


async def test_a_topic_campaign_goes_to_the_active_members_of_any_of_its_topics_once(
    client, db, smtp, admin_headers
) -> None:
    for slug in ("weekly", "offers", "events"):
        await _topic(client, admin_headers, slug)
    both = await _member(db, "both@example.org", "weekly", "offers")
    weekly = await _member(db, "weekly@example.org", "weekly")
    await _member(db, "events@example.org", "events")
    await _member(db, "none@example.org")
    pending = await _member(db, "pending@example.org", "weekly")
    await db.execute("UPDATE subscribers SET status = 'pending' WHERE id = $1", pending)

    unknown = await client.post(
        "/admin/api/campaigns", json={**CAMPAIGN, "topics": ["nope"]}, headers=admin_headers
    )
    assert unknown.status_code == 422 and "topics" in unknown.json()["fields"]
    created = await client.post(
        "/admin/api/campaigns",
        json={**CAMPAIGN, "topics": ["weekly", "offers"]},
        headers=admin_headers,
    )
    campaign_id = created.json()["id"]
    shown = await client.get(f"/admin/api/campaigns/{campaign_id}", headers=admin_headers)
    assert shown.json()["topics"] == ["offers", "weekly"]

    export = await client.get(
        f"/admin/api/campaigns/{campaign_id}/recipients", headers=admin_headers
    )
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert sorted(line["email"] for line in lines) == ["both@example.org", "weekly@example.org"]

    queued = await client.post(f"/admin/api/campaigns/{campaign_id}/send", headers=admin_headers)
    assert queued.json() == {"queued": 2}
    assert sorted(
        r["subscriber_id"]
        for r in await db.fetch(
            "SELECT subscriber_id FROM deliveries WHERE campaign_id = $1", campaign_id
        )
    ) == sorted([both, weekly])

    everyone = await client.post("/admin/api/campaigns", json=CAMPAIGN, headers=admin_headers)
    sent = await client.post(
        f"/admin/api/campaigns/{everyone.json()['id']}/send", headers=admin_headers
    )
    assert sent.json() == {"queued": 4}  # without topics: every active subscriber, as today


async def _send_topic_campaign(client, db, smtp, admin_headers, topics) -> int:
    created = await client.post(
        "/admin/api/campaigns", json={**CAMPAIGN, "topics": topics}, headers=admin_headers
    )
    campaign_id = created.json()["id"]
    await client.post(f"/admin/api/campaigns/{campaign_id}/send", headers=admin_headers)
    await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
    return campaign_id


async def test_a_topic_email_has_list_id_and_its_one_click_leaves_only_its_topics(
    client, db, smtp, admin_headers, settings
) -> None:
    await _topic(client, admin_headers, "weekly")
    await _topic(client, admin_headers, "offers")
    sid = await _member(db, "two@example.org", "weekly", "offers")
    await _send_topic_campaign(client, db, smtp, admin_headers, ["offers"])
    [message] = smtp.to("two@example.org")
    assert message.message["List-Id"] == "<offers.newsletter.test>"
    header = message.message["List-Unsubscribe"].strip("<>")
    assert _UNSUB.fullmatch(header)
    assert header in message.part("html") and header in message.part("plain")

    page = await client.get(header.removeprefix(support.PUBLIC_URL))
    assert "Leave Offers?" in page.text and "Weekly" in page.text

    one_click = await client.post(
        header.removeprefix(support.PUBLIC_URL),
        content="List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded", "user-agent": "Mail/1"},
    )
    assert one_click.status_code == 200
    assert "You left Offers" in one_click.text and "Weekly" in one_click.text
    # Nothing erased: the subscriber, their evidence and their other topic stay.
    assert await db.fetchval("SELECT status FROM subscribers WHERE id = $1", sid) == "active"
    assert await _topics_of(db, sid) == ["weekly"]
    left = await db.fetchrow(
        "SELECT topic, method, user_agent FROM consent_events WHERE kind = 'topic_left'"
    )
    assert tuple(left) == ("offers", None, "Mail/1")
    # Idempotent: a second one-click leaves nothing more and erases nothing.
    again = await client.post(header.removeprefix(support.PUBLIC_URL))
    assert again.status_code == 200
    assert await _topics_of(db, sid) == ["weekly"]


async def test_the_one_click_of_a_one_topic_subscriber_erases_everything(
    client, db, smtp, admin_headers, settings
) -> None:
    campaign = await people.add_campaign(db)
    person = await people.add_person(db, settings, "one@example.org", "one-topic", campaign)
    other = await people.add_person(db, settings, "other@example.org", "other-topic", campaign)
    assert await _topics_of(db, person.id) == ["weekly"]
    await db.execute("DELETE FROM outbox")  # add_person's queued jobs, due tomorrow
    weekly_campaign = await _send_topic_campaign(client, db, smtp, admin_headers, ["weekly"])
    [message] = smtp.to("one@example.org")
    header = message.message["List-Unsubscribe"].strip("<>")
    assert "subscriber_topics" in await people.find_anywhere(db, person.traces)

    response = await client.post(
        header.removeprefix(support.PUBLIC_URL),
        content="List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert "You are unsubscribed" in response.text
    assert await people.find_anywhere(db, person.traces) == {}
    assert "subscriber_topics" in await people.find_anywhere(db, other.traces)
    assert await db.fetchval("SELECT count(*) FROM campaigns WHERE id = $1", weekly_campaign)


async def test_the_plain_unsubscribe_link_still_erases_a_topic_member_at_once(
    client, db, admin_headers
) -> None:
    await _topic(client, admin_headers, "weekly")
    await _topic(client, admin_headers, "offers")
    sid = await _member(db, "two@example.org", "weekly", "offers")
    response = await client.post(f"/unsubscribe/{TOKENS.unsubscribe(sid)}")
    assert response.status_code == 200 and "You are unsubscribed" in response.text
    assert await db.fetchval("SELECT count(*) FROM subscriber_topics") == 0
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


# -- the welcome email ---------------------------------------------------------------


async def test_a_welcome_goes_once_to_each_person_confirming_into_the_topic(
    client, db, smtp, admin_headers
) -> None:
    weekly = await _topic(client, admin_headers, "weekly", default=True, welcome=WELCOME)
    await _topic(client, admin_headers, "offers")  # no welcome message
    welcome_id = weekly["welcome"]["campaign_id"]
    listed = await client.get("/admin/api/campaigns", headers=admin_headers)
    assert welcome_id not in [c["id"] for c in listed.json()["campaigns"]]

    paths = await _confirm_paths(client, db, smtp, "ada@example.org", topics=["weekly", "offers"])
    await client.post(paths["confirm"])
    await wait_until(lambda: _async(len(smtp.to("ada@example.org")) == 2))
    await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
    welcome = smtp.to("ada@example.org")[-1]
    assert welcome.message["Subject"] == "Welcome to Weekly"
    assert welcome.message["List-Id"] == "<weekly.newsletter.test>"
    assert welcome.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = welcome.message["List-Unsubscribe"].strip("<>")
    html = welcome.part("html")
    assert unsubscribe in html and "/manage/" in html
    [pixel] = _PIXEL.findall(html)
    assert TOKENS.verify_pixel(pixel).campaign_id == welcome_id

    # Its opens are counted under it.
    assert (await client.get(f"/o/{pixel}.gif")).status_code == 200
    stats = await client.get(f"/admin/api/campaigns/{welcome_id}/stats", headers=admin_headers)
    assert stats.json()["recipients"] == 1
    await wait_until(
        lambda: _opens(client, admin_headers, welcome_id),
        timeout=15,
    )

    # Confirming again (the link of an active subscriber) queues no second welcome.
    await client.post(paths["confirm"])
    assert (
        await db.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1", welcome_id) == 1
    )
    assert not await db.fetchval("SELECT count(*) FROM outbox")
    assert len(smtp.to("ada@example.org")) == 2


async def _opens(client, admin_headers, campaign_id: int) -> bool:
    stats = await client.get(f"/admin/api/campaigns/{campaign_id}/stats", headers=admin_headers)
    return stats.json()["opens"] >= 1


@pytest.mark.parametrize("payload", [{"topics": "weekly"}, {"topics": [1]}, {"topics": []}])
async def test_a_campaign_topics_field_must_be_a_list_of_slugs(
    client, admin_headers, payload
) -> None:
    await _topic(client, admin_headers, "weekly")
    response = await client.post(
        "/admin/api/campaigns", json={**CAMPAIGN, **payload}, headers=admin_headers
    )
    assert response.status_code == 422 and "topics" in response.json()["fields"]


# -- import ----------------------------------------------------------------------------


async def test_import_lines_may_carry_topics(client, db, admin_headers) -> None:
    await _topic(client, admin_headers, "weekly", default=True)
    await _topic(client, admin_headers, "offers")
    lines = [
        {
            "email": "active@example.org",
            "consented_at": "2024-03-01T10:00:00Z",
            "consent_source": "shop checkout",
            "topics": ["offers"],
        },
        {
            "email": "default@example.org",
            "consented_at": "2024-03-01T10:00:00Z",
            "consent_source": "shop checkout",
        },
        {"email": "pending@example.org", "topics": ["offers", "weekly"]},
        {"email": "bad@example.org", "topics": ["nope"]},
        {"email": "worse@example.org", "topics": "offers"},
    ]
    response = await client.post(
        "/admin/api/subscribers/import",
        content="\n".join(json.dumps(line) for line in lines),
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["imported"], result["pending"], result["skipped"]) == (2, 1, 2)
    assert [e["line"] for e in result["errors"]] == [4, 5]
    assert "nope" in result["errors"][0]["error"]

    def sid(email: str):
        return db.fetchval("SELECT id FROM subscribers WHERE email = $1", email)

    active = await sid("active@example.org")
    assert await _topics_of(db, active) == ["offers"]
    assert await _topics_of(db, await sid("default@example.org")) == ["weekly"]
    joined = await db.fetchrow(
        "SELECT at, source, method, topic FROM consent_events"
        " WHERE subscriber_id = $1 AND kind = 'topic_joined'",
        active,
    )
    assert (joined["at"].isoformat(), joined["source"], joined["method"], joined["topic"]) == (
        "2024-03-01T10:00:00+00:00",
        "shop checkout",
        "import",
        "offers",
    )
    pending = await sid("pending@example.org")
    assert await _topics_of(db, pending) == []  # until the person confirms
    requested = await db.fetchval("SELECT topics_requested FROM subscribers WHERE id = $1", pending)
    assert len(requested) == 2
    assert not await db.fetchval("SELECT count(*) FROM outbox WHERE kind = 'welcome'")


async def test_the_demo_form_offers_the_topics_and_a_bad_one_keeps_the_ticks(
    app_factory, admin_headers
) -> None:
    async with app_factory(demo_page=True) as (_app, client):
        await _topic(client, admin_headers, "weekly", default=True)
        await _topic(client, admin_headers, "offers")
        demo = await client.get("/")
        assert re.findall(r'name="topics" value="([a-z-]+)"( checked)?', demo.text) == [
            ("offers", ""),
            ("weekly", " checked"),
        ]
        again = await client.post(
            "/subscribe",
            content="email=ada%40example.org&topics=offers&topics=gone",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert again.status_code == 400 and "Unknown topics: gone" in again.text
        assert re.findall(r'name="topics" value="([a-z-]+)"( checked)?', again.text) == [
            ("offers", " checked"),
            ("weekly", ""),
        ]


async def test_a_form_refused_for_another_reason_offers_the_topics_with_the_ticks_kept(
    app_factory, admin_headers
) -> None:
    """A bad address, a too-long name, the network's sign-up limit: the form comes back
    with the topics to choose from, ticked as the person ticked them (not the defaults)."""
    ticks = "topics=offers&topics=events"
    async with app_factory(rate_signup_per_ip_hour=2) as (_app, client):
        await _topic(client, admin_headers, "weekly", default=True)
        await _topic(client, admin_headers, "offers")
        await _topic(client, admin_headers, "events")
        form = {"content-type": "application/x-www-form-urlencoded"}
        bad_address = await client.post(
            "/subscribe", content=f"email=not-an-address&{ticks}", headers=form
        )
        long_name = await client.post(
            "/subscribe", content=f"email=ada%40example.org&name={'x' * 500}&{ticks}", headers=form
        )
        for _ in range(2):  # the network's allowance spent
            await client.post("/subscribe", content="email=bob%40example.org", headers=form)
        limited = await client.post(
            "/subscribe", content=f"email=cy%40example.org&{ticks}", headers=form
        )
    for answer, status in ((bad_address, 400), (long_name, 400), (limited, 429)):
        assert answer.status_code == status, answer.text
        assert re.findall(r'name="topics" value="([a-z-]+)"( checked)?', answer.text) == [
            ("events", " checked"),
            ("offers", " checked"),
            ("weekly", ""),
        ], answer.text


def test_a_topic_campaigns_unsubscribe_token_names_the_campaign_and_only_unsubscribes() -> None:
    token = TOKENS.unsubscribe_campaign(41, 7)
    assert TOKENS.verify_unsubscribe_any(token) == (41, 7)
    assert TOKENS.verify_unsubscribe_any(TOKENS.unsubscribe(41)) == (41, None)
    for other in (TOKENS.pixel(41, 7), TOKENS.manage(41), TOKENS.tracking(41)):
        with pytest.raises(tokens_module.InvalidToken):
            TOKENS.verify_unsubscribe_any(other)
    with pytest.raises(tokens_module.InvalidToken):
        TOKENS.verify_unsubscribe(token)
