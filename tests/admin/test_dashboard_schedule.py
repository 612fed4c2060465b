"""Scheduling a send on the dashboard, in the operator's time zone (DASHBOARD_TIME_ZONE):
the form names the zone, the stored time is that wall-clock time there, the pages show
what is scheduled in it, a refused time says why, and a schedule can be cancelled."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg

from tests.admin.test_dashboard import browser, field, sign_in
from tests.people import add_campaign, add_subscriber

ZONE = "Europe/Berlin"
YEAR = datetime.now(UTC).year + 2
# The last Sunday of March: Berlin's clocks jump from 02:00 to 03:00 (EU summer time).
_MARCH_31 = date(YEAR, 3, 31)
SPRING_FORWARD = _MARCH_31 - timedelta(days=(_MARCH_31.weekday() + 1) % 7)


async def scheduled_at(db: asyncpg.Connection, campaign: int) -> datetime | None:
    return await db.fetchval("SELECT scheduled_at FROM campaigns WHERE id = $1", campaign)


async def test_the_operator_schedules_in_their_zone_and_sees_it_in_that_zone(
    app_factory, db
) -> None:
    campaign = await add_campaign(db, "Summer issue")
    async with app_factory(dashboard_time_zone=ZONE) as (app, _client), browser(app) as web:
        csrf = await sign_in(web)
        form = await web.get(f"/admin/campaigns/{campaign}/send")
        assert 'type="datetime-local"' in form.text and f"{ZONE} time" in form.text
        field(form.text, "csrf")
        # Summer: Berlin is UTC+2; winter: UTC+1.
        for local, utc in (
            (f"{YEAR}-07-01T09:30", datetime(YEAR, 7, 1, 7, 30, tzinfo=UTC)),
            (f"{YEAR}-01-15T09:30", datetime(YEAR, 1, 15, 8, 30, tzinfo=UTC)),
        ):
            answer = await web.post(
                f"/admin/campaigns/{campaign}/schedule", data={"csrf": csrf, "at": local}
            )
            assert answer.status_code == 303, answer.text
            assert answer.headers["location"] == f"/admin/campaigns/{campaign}"
            assert await scheduled_at(db, campaign) == utc
        shown = f"{YEAR}-01-15 09:30 {ZONE}"
        page = await web.get(f"/admin/campaigns/{campaign}")
        assert f'<strong id="scheduled-at">{shown}</strong>' in page.text
        assert 'id="unschedule"' in page.text
        listing = await web.get("/admin/campaigns")
        assert f"scheduled for {shown}" in listing.text
        again = await web.get(f"/admin/campaigns/{campaign}/send")
        assert f"Scheduled for <strong>{shown}</strong>" in again.text

        cancelled = await web.post(f"/admin/campaigns/{campaign}/unschedule", data={"csrf": csrf})
        assert cancelled.status_code == 303
        assert await scheduled_at(db, campaign) is None
        page = await web.get(f"/admin/campaigns/{campaign}")
        assert 'id="scheduled-at"' not in page.text
        assert "scheduled for" not in (await web.get("/admin/campaigns")).text


async def test_a_refused_time_goes_back_to_the_form_which_says_why(app_factory, db) -> None:
    campaign = await add_campaign(db)
    async with app_factory(dashboard_time_zone=ZONE) as (app, _client), browser(app) as web:
        csrf = await sign_in(web)
        for value, code, says in (
            ("2001-01-01T09:00", "past", "That time has passed"),
            ("next friday", "malformed", "Enter a date and time"),
            (f"{YEAR}-02-30T09:00", "malformed", "Enter a date and time"),
            (f"{SPRING_FORWARD}T02:30", "nonexistent", "does not exist in this time zone"),
        ):
            answer = await web.post(
                f"/admin/campaigns/{campaign}/schedule", data={"csrf": csrf, "at": value}
            )
            assert answer.status_code == 303, value
            location = answer.headers["location"]
            assert location == f"/admin/campaigns/{campaign}/send?schedule_error={code}", value
            page = await web.get(location)
            assert says in page.text and 'aria-invalid="true"' in page.text, value
        assert await scheduled_at(db, campaign) is None


async def test_a_campaign_whose_send_started_offers_no_schedule(app_factory, db) -> None:
    campaign = await add_campaign(db)
    await add_subscriber(db, "ada@example.com")
    async with app_factory(dashboard_time_zone=ZONE) as (app, _client), browser(app) as web:
        csrf = await sign_in(web)
        sent = await web.post(f"/admin/campaigns/{campaign}/send", data={"csrf": csrf})
        assert sent.status_code == 303
        form = await web.get(f"/admin/campaigns/{campaign}/send")
        assert 'type="datetime-local"' not in form.text
        answer = await web.post(
            f"/admin/campaigns/{campaign}/schedule",
            data={"csrf": csrf, "at": f"{YEAR}-07-01T09:30"},
        )
        assert answer.headers["location"].endswith("schedule_error=started")
        assert await scheduled_at(db, campaign) is None
        late = await web.post(f"/admin/campaigns/{campaign}/unschedule", data={"csrf": csrf})
        assert late.status_code == 409
        assert "started already" in late.text
