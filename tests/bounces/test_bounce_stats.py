"""Delivered, bounces and complaints with their rates in the stats API and on the
dashboard's campaign page, with the providers' thresholds as warnings."""

from __future__ import annotations

import pytest

from tests import people
from tests.admin.test_dashboard import browser, sign_in


@pytest.fixture
async def web(app):
    async with browser(app) as client:
        yield client


async def arrange(db, sent: int, *rows: tuple[str, str, str, int]) -> int:
    campaign = await people.add_campaign(db)
    await db.execute(
        "UPDATE campaigns SET sent = $2, recipients = $2 WHERE id = $1", campaign, sent
    )
    for event, source, reason, count in rows:
        await db.execute(
            "INSERT INTO bounce_counts (campaign_id, event, source, reason, count)"
            " VALUES ($1, $2, $3, $4, $5)",
            campaign,
            event,
            source,
            reason,
            count,
        )
    return campaign


async def test_the_stats_api_reports_delivered_bounces_complaints_and_rates(
    client, db, admin_headers
) -> None:
    campaign = await arrange(
        db,
        1000,
        ("hard", "dsn", "5.1.1", 12),
        ("hard", "smtp", "5.1.1", 10),  # refused at send: never among the 1000 sent
        ("soft", "ses", "4.2.2", 8),
        ("complaint", "arf", "abuse", 2),
    )
    response = await client.get(f"/admin/api/campaigns/{campaign}/stats", headers=admin_headers)
    d = response.json()["deliverability"]
    assert d["delivered"] == 1000 - 12 - 8
    assert (d["bounced_hard"], d["bounced_soft"], d["refused_at_send"]) == (22, 8, 10)
    assert d["complaints"] == 2
    assert d["bounce_rate"] == round(30 / 1010, 5)
    assert d["complaint_rate"] == round(2 / 980, 5)
    assert [w["kind"] for w in d["warnings"]] == ["complaints", "bounces"]
    assert "support.google.com/a/answer/81126" in d["warnings"][0]["sources"]


async def test_no_warning_under_the_thresholds_and_no_rate_before_a_send(
    client, db, admin_headers
) -> None:
    quiet = await arrange(
        db, 10_000, ("hard", "dsn", "5.1.1", 150), ("complaint", "ses", "abuse", 9)
    )
    d = (await client.get(f"/admin/api/campaigns/{quiet}/stats", headers=admin_headers)).json()[
        "deliverability"
    ]
    assert d["warnings"] == []  # 1.5 % bounces, 0.09 % complaints
    unsent = await arrange(db, 0)
    d = (await client.get(f"/admin/api/campaigns/{unsent}/stats", headers=admin_headers)).json()[
        "deliverability"
    ]
    assert (d["bounce_rate"], d["complaint_rate"], d["warnings"]) == (None, None, [])


async def test_the_campaign_page_shows_the_counts_and_the_warning(web, db) -> None:
    campaign = await arrange(
        db, 500, ("hard", "dsn", "5.1.1", 20), ("complaint", "arf", "abuse", 1)
    )
    await sign_in(web)
    page = (await web.get(f"/admin/campaigns/{campaign}")).text
    assert 'id="delivered-count">480<' in page
    assert 'id="hard-count">20<' in page
    assert 'id="warning-complaints"' in page and 'id="warning-bounces"' in page
    assert "https://senders.yahooinc.com/best-practices/" in page
    calm = await arrange(db, 500)
    page = (await web.get(f"/admin/campaigns/{calm}")).text
    assert 'id="delivered-count">500<' in page and "warning-" not in page
