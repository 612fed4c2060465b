"""The dashboard's topics page: the topics with their subscriber counts, adding one with
its welcome message, deleting one; CSRF-checked like every dashboard form."""

from __future__ import annotations

import re

from tests import people
from tests.admin.test_dashboard import browser, sign_in


async def test_the_dashboard_lists_topics_with_counts_adds_and_deletes(app, db) -> None:
    async with browser(app) as web:
        csrf = await sign_in(web)
        empty = await web.get("/admin/topics")
        assert empty.status_code == 200 and "No topics yet" in empty.text

        added = await web.post(
            "/admin/topics",
            data={
                "csrf": csrf,
                "slug": "weekly",
                "name": "Weekly digest",
                "default": "1",
                "welcome_subject": "Welcome",
                "welcome_html": "<p>Hi {{ name }}</p>",
                "welcome_text": "Hi {{ name }}",
            },
        )
        assert added.status_code == 303
        bad = await web.post("/admin/topics", data={"csrf": csrf, "slug": "Bad Slug", "name": ""})
        assert bad.status_code == 422 and "lower-case" in bad.text
        forged = await web.post("/admin/topics", data={"csrf": "x", "slug": "x", "name": "X"})
        assert forged.status_code == 403

        sid = await people.add_subscriber(db, "ada@example.org")
        await db.execute(
            "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
            " SELECT id, $1 FROM topics WHERE slug = 'weekly'",
            sid,
        )
        listed = await web.get("/admin/topics")
        row = re.search(r"<tr>\s*<td[^>]*>Weekly digest</td>(.*?)</tr>", listed.text, re.S)
        assert row, listed.text
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
        assert cells[:3] == ["<code>weekly</code>", "yes", "1"]
        assert "Welcome" in cells[3]

        deleted = await web.post("/admin/topics/weekly/delete", data={"csrf": csrf})
        assert deleted.status_code == 303
        assert not await db.fetchval("SELECT count(*) FROM topics")
        assert not await db.fetchval("SELECT count(*) FROM subscriber_topics")


async def test_the_send_confirmation_counts_a_topic_campaigns_recipients(
    app, db, client, admin_headers
) -> None:
    for slug in ("weekly", "offers"):
        await client.post(
            "/admin/api/topics", json={"slug": slug, "name": slug}, headers=admin_headers
        )
    for n, slugs in enumerate((["weekly"], ["weekly", "offers"], ["offers"], [])):
        sid = await people.add_subscriber(db, f"r{n}@example.org")
        for slug in slugs:
            await db.execute(
                "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
                " SELECT id, $1 FROM topics WHERE slug = $2",
                sid,
                slug,
            )
    created = await client.post(
        "/admin/api/campaigns",
        json={"name": "n", "subject": "s", "html": "h", "text": "t", "topics": ["weekly"]},
        headers=admin_headers,
    )
    async with browser(app) as web:
        await sign_in(web)
        page = await web.get(f"/admin/campaigns/{created.json()['id']}/send")
    assert page.status_code == 200
    assert re.search(r"\b2 (people|subscribers|recipients)", page.text), page.text
    # It says whom: the topic's active members, named, not the whole list's count.
    count = re.search(r'<p id="recipient-count">(.*?)</p>', page.text, re.S)
    assert count, page.text
    assert "The list has" not in count.group(1)
    assert re.search(r"<strong>2</strong> people", count.group(1)), count.group(1)
    assert "weekly" in count.group(1) and "offers" not in count.group(1)


async def test_the_send_confirmation_names_several_topics_counts_each_person_once(
    app, db, client, admin_headers
) -> None:
    for slug, name in (("weekly", "Weekly digest"), ("offers", "Offers"), ("events", "Events")):
        made = await client.post(
            "/admin/api/topics", json={"slug": slug, "name": name}, headers=admin_headers
        )
        assert made.status_code == 201
    # weekly+offers: 3 people (one in both); events only and no topic: not recipients; a
    # pending member is no recipient either.
    for n, slugs in enumerate(
        (["weekly"], ["weekly", "offers"], ["offers"], ["events"], [], ["weekly"])
    ):
        status = "pending" if n == 5 else "active"
        sid = await people.add_subscriber(db, f"p{n}@example.org", status=status)
        for slug in slugs:
            await db.execute(
                "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
                " SELECT id, $1 FROM topics WHERE slug = $2",
                sid,
                slug,
            )
    created = await client.post(
        "/admin/api/campaigns",
        json={
            "name": "n",
            "subject": "s",
            "html": "h",
            "text": "t",
            "topics": ["weekly", "offers"],
        },
        headers=admin_headers,
    )
    async with browser(app) as web:
        await sign_in(web)
        page = await web.get(f"/admin/campaigns/{created.json()['id']}/send")
    assert page.status_code == 200
    count = re.search(r'<p id="recipient-count">(.*?)</p>', page.text, re.S)
    assert count, page.text
    assert re.search(r"<strong>3</strong> people", count.group(1)), count.group(1)
    assert "Offers, Weekly digest" in count.group(1) and "each once" in count.group(1)
    assert "Events" not in count.group(1)
    assert 'id="confirm-send">Send to 3 subscribers' in page.text


async def test_a_dashboard_campaign_may_name_topics(app, db, client, admin_headers) -> None:
    await client.post(
        "/admin/api/topics", json={"slug": "weekly", "name": "Weekly"}, headers=admin_headers
    )
    fields = {"name": "n", "subject": "s", "html": "<p>h</p>", "text": "t"}
    async with browser(app) as web:
        csrf = await sign_in(web)
        bad = await web.post("/admin/campaigns", data={"csrf": csrf, **fields, "topics": "nope"})
        assert bad.status_code == 422 and 'id="topics-error"' in bad.text
        made = await web.post("/admin/campaigns", data={"csrf": csrf, **fields, "topics": "weekly"})
        assert made.status_code == 303
        plain = await web.post("/admin/campaigns", data={"csrf": csrf, **fields, "topics": ""})
        assert plain.status_code == 303
    rows = await db.fetch("SELECT topic_ids FROM campaigns ORDER BY id")
    weekly = await db.fetchval("SELECT id FROM topics")
    assert [r["topic_ids"] for r in rows] == [[weekly], None]
