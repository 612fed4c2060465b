"""A topic's welcome message is a campaign of its own (sql/142), sent by the welcome
mechanism only, to each person as they join its topic: never sent, scheduled or
unscheduled as a list send, through the API or the dashboard; the dashboard lists it for
its statistics, marked as the topic's welcome, without a Send button."""

from __future__ import annotations

import re

from tests import people
from tests.admin.test_dashboard import browser, sign_in

WELCOME = {"subject": "Welcome to Offers", "html": "<p>Welcome</p>", "text": "Welcome"}


async def _welcome_campaign(client, db, admin_headers) -> int:
    made = await client.post(
        "/admin/api/topics",
        json={"slug": "offers", "name": "Offers", "welcome": WELCOME},
        headers=admin_headers,
    )
    assert made.status_code == 201, made.text
    # An active member, whom a send to the list would mail.
    sid = await people.add_subscriber(db, "ada@example.org")
    await db.execute(
        "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
        " SELECT id, $1 FROM topics WHERE slug = 'offers'",
        sid,
    )
    return await db.fetchval("SELECT welcome_campaign_id FROM topics WHERE slug = 'offers'")


async def _nothing_queued(db, campaign_id: int) -> None:
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 0
    row = await db.fetchrow(
        "SELECT recipients, first_sent_at, scheduled_at FROM campaigns WHERE id = $1", campaign_id
    )
    assert tuple(row) == (0, None, None)


async def test_the_api_refuses_to_send_schedule_or_unschedule_a_welcome(
    client, db, admin_headers
) -> None:
    campaign_id = await _welcome_campaign(client, db, admin_headers)
    path = f"/admin/api/campaigns/{campaign_id}/send"

    now = await client.post(path, headers=admin_headers)
    assert now.status_code == 409, now.text
    assert now.json()["error"] == "welcome_campaign"
    assert "welcome" in now.json()["detail"]

    later = await client.post(path, json={"at": "2099-01-01T09:00:00Z"}, headers=admin_headers)
    assert later.status_code == 409 and later.json()["error"] == "welcome_campaign"

    cancel = await client.delete(path, headers=admin_headers)
    assert cancel.status_code == 409 and cancel.json()["error"] == "welcome_campaign"
    await _nothing_queued(db, campaign_id)


async def test_the_dashboard_marks_a_welcome_and_refuses_to_send_or_schedule_it(
    app, client, db, admin_headers
) -> None:
    campaign_id = await _welcome_campaign(client, db, admin_headers)
    async with browser(app) as web:
        csrf = await sign_in(web)
        listed = await web.get("/admin/campaigns")
        row = re.search(rf'<a href="/admin/campaigns/{campaign_id}">.*?</tr>', listed.text, re.S)
        assert row, listed.text  # kept in the list, for its statistics
        assert "welcome of the topic Offers" in row.group(0)
        assert "not sent" not in row.group(0)

        page = await web.get(f"/admin/campaigns/{campaign_id}")
        assert page.status_code == 200
        assert 'id="welcome"' in page.text and "Offers" in page.text
        assert f"/admin/campaigns/{campaign_id}/send" not in page.text

        confirm = await web.get(f"/admin/campaigns/{campaign_id}/send")
        assert confirm.status_code == 409 and "welcome message" in confirm.text
        sent = await web.post(f"/admin/campaigns/{campaign_id}/send", data={"csrf": csrf})
        assert sent.status_code == 409 and "welcome message" in sent.text
        scheduled = await web.post(
            f"/admin/campaigns/{campaign_id}/schedule",
            data={"csrf": csrf, "at": "2099-01-01T09:00"},
        )
        assert scheduled.status_code == 409 and "welcome message" in scheduled.text
    await _nothing_queued(db, campaign_id)
