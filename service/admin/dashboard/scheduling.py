"""Scheduled sends on the dashboard, in the operator's time zone (DASHBOARD_TIME_ZONE).

The dashboard has no script, so it cannot learn the browser's zone: the form's
`datetime-local` field is read as a wall-clock time in the configured zone, which the page
names beside the field, and scheduled times are shown in it. The API takes RFC 3339 times,
which carry their own offset.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.campaigns import schedule
from service.settings import Settings

# `?schedule_error=` of the send page after a refused schedule (a redirect keeps the form's
# own page the one place that renders it).
ERRORS = {
    "malformed": "Enter a date and time, e.g. 2030-01-31T09:00.",
    "nonexistent": "That time does not exist in this time zone (the clocks change then).",
    "past": "That time has passed: choose a time in the future.",
    "started": "This campaign's send has started: it can no longer be scheduled.",
}


def local_time(settings: Settings, at: datetime | None) -> str:
    """A UTC time as the operator reads it: `2030-01-31 09:00 Europe/Berlin`; '' for None."""
    if at is None:
        return ""
    local = at.astimezone(schedule.zone(settings.dashboard_time_zone))
    return f"{local:%Y-%m-%d %H:%M} {settings.dashboard_time_zone}"


def form_context(settings: Settings, now: datetime, error_code: str) -> dict[str, Any]:
    """What the send page's schedule form shows: the zone, the earliest time, an error."""
    local_now = now.astimezone(schedule.zone(settings.dashboard_time_zone))
    return {
        "time_zone": settings.dashboard_time_zone,
        "earliest": f"{local_now:%Y-%m-%dT%H:%M}",
        "schedule_error": ERRORS.get(error_code, ""),
    }


def parse(settings: Settings, value: str, now: datetime) -> tuple[datetime | None, str]:
    """The posted `at` field as a UTC time, or the ERRORS code of why not."""
    zone = schedule.zone(settings.dashboard_time_zone)
    at, error = schedule.parse_local(value, zone, now)
    return at, error or ""
