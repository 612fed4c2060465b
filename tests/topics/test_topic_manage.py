"""The person's page and topics: the footer's long-lived link may leave a topic (as
harmless as unsubscribing) but never join one; joining is consent and needs the fresh
emailed link's page, and sends the topic's welcome."""

from __future__ import annotations

import re

from tests import people
from tests.manage_support import fresh_link, mails_to, manage_path, open_data
from tests.signup_helpers import wait_until

WELCOME = {"subject": "Welcome to Offers", "html": "<p>Hi</p>", "text": "Hi"}


async def _setup(client, db, admin_headers) -> int:
    for slug, extra in (("weekly", {}), ("offers", {"welcome": WELCOME})):
        response = await client.post(
            "/admin/api/topics",
            json={"slug": slug, "name": slug.title(), **extra},
            headers=admin_headers,
        )
        assert response.status_code == 201
    sid = await people.add_subscriber(db, "ada@example.org")
    await db.execute(
        "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
        " SELECT id, $1 FROM topics WHERE slug = 'weekly'",
        sid,
    )
    return sid


async def _slugs(db, sid: int) -> list[str]:
    rows = await db.fetch(
        "SELECT t.slug FROM subscriber_topics st JOIN topics t ON t.id = st.topic_id"
        " WHERE st.subscriber_id = $1 ORDER BY t.slug",
        sid,
    )
    return [r["slug"] for r in rows]


async def test_a_forwarded_footer_link_cannot_join_a_topic(client, db, admin_headers) -> None:
    sid = await _setup(client, db, admin_headers)
    page = await client.get(manage_path(sid))
    assert page.status_code == 200
    # The page offers leaving every topic and shows none as the person's.
    assert set(re.findall(r'name="topics" value="([a-z-]+)"', page.text)) == {"weekly", "offers"}
    assert " checked" not in page.text
    for action in ("topics", "join_topics", "join_topic"):
        answer = await client.post(
            manage_path(sid), data={"action": action, "topics": ["weekly", "offers"]}
        )
        assert answer.status_code == 400
    # The data page's form needs the fresh link's session: a forged one is refused.
    forged = await client.post(
        "/manage/me", data={"session": "x" * 43, "action": "topics", "topics": "offers"}
    )
    assert forged.status_code == 403
    assert await _slugs(db, sid) == ["weekly"]
    assert not await db.fetchval("SELECT count(*) FROM consent_events")
    assert not await db.fetchval("SELECT count(*) FROM outbox WHERE kind = 'welcome'")


async def test_the_footer_link_leaves_a_topic_and_leaving_the_last_one_erases(
    client, db, admin_headers
) -> None:
    sid = await _setup(client, db, admin_headers)
    await db.execute(
        "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
        " SELECT id, $1 FROM topics WHERE slug = 'offers'",
        sid,
    )
    left = await client.post(manage_path(sid), data={"action": "leave_topics", "topics": "offers"})
    assert left.status_code == 200 and 'id="topics-left"' in left.text
    assert await _slugs(db, sid) == ["weekly"]
    event = await db.fetchrow("SELECT kind, topic, method, source FROM consent_events")
    assert tuple(event) == ("topic_left", "offers", None, "manage")

    last = await client.post(manage_path(sid), data={"action": "leave_topics", "topics": "weekly"})
    assert last.status_code == 200 and "You are unsubscribed" in last.text
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0
    assert await db.fetchval("SELECT count(*) FROM consent_events") == 0


async def test_the_fresh_links_page_joins_a_topic_with_evidence_and_its_welcome(
    client, db, smtp, admin_headers
) -> None:
    sid = await _setup(client, db, admin_headers)
    link = await fresh_link(client, smtp, sid, "ada@example.org", db)
    page, session = await open_data(client, link)
    assert re.search(r'name="topics" value="weekly" checked', page.text)
    assert re.search(r'name="topics" value="offers">', page.text)

    saved = await client.post(
        "/manage/me",
        data={"session": session, "action": "topics", "topics": ["weekly", "offers"]},
        headers={"user-agent": "Browser/Join"},
    )
    assert saved.status_code == 200 and "Your topics are saved." in saved.text
    assert await _slugs(db, sid) == ["offers", "weekly"]
    event = await db.fetchrow(
        "SELECT topic, method, user_agent, source FROM consent_events WHERE kind = 'topic_joined'"
    )
    assert tuple(event) == ("offers", None, "Browser/Join", "manage")
    # The person's data page names the topic of each join (sql/147), not as its "How".
    assert re.search(
        r'<td data-label="What">Topic joined</td><td data-label="Topic">offers</td>'
        r'<td data-label="How">\u2014</td>',
        saved.text,
    ), saved.text
    await wait_until(
        lambda: _has(mails_to(smtp, "ada@example.org"), "Welcome to Offers"), timeout=15
    )

    # Leaving (the footer link) and joining again (the data page): no second welcome.
    await client.post(manage_path(sid), data={"action": "leave_topics", "topics": "offers"})
    assert await _slugs(db, sid) == ["weekly"]
    again = await client.post(
        "/manage/me", data={"session": session, "action": "topics", "topics": ["weekly", "offers"]}
    )
    assert again.status_code == 200
    assert await _slugs(db, sid) == ["offers", "weekly"]
    assert not await db.fetchval("SELECT count(*) FROM outbox WHERE kind = 'welcome'")
    welcomes = await db.fetchval(
        "SELECT count(*) FROM deliveries d JOIN topics t ON t.welcome_campaign_id = d.campaign_id"
    )
    assert welcomes == 1
    assert [m.message["Subject"] for m in mails_to(smtp, "ada@example.org")].count(
        "Welcome to Offers"
    ) == 1


async def _has(messages, subject: str) -> bool:
    return any(m.message["Subject"] == subject for m in messages)
