"""Scheduled sends: a campaign's send starts at a time the operator chose.

The schedule is a column of the campaign (`campaigns.scheduled_at`, sql/146), so it
outlives restarts and every replica sees it. Every process that sends (the `worker` and
`all` roles) looks for due schedules every SCHEDULE_POLL_INTERVAL (sooner when the next
one is nearer) and claims each under the campaign's send lock (`lock_campaign_send`,
the lock of `store.queue_send`): it clears the schedule and queues the send in one
transaction, so exactly one replica queues it, once; a replica killed mid-way rolls back
and the schedule is still there for the next look. A schedule is cancelled by clearing the
column; a claim holds the row until its queueing commits, so a cancellation that comes
during the queueing waits and then finds the send started.

Lock order, the same for every send of a campaign: the advisory send lock, then the
campaign row (queue_send's `add_recipients` updates it last), so a scheduled send, a send
now and a cancellation never deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import zoneinfo
from datetime import UTC, datetime, tzinfo

import asyncpg
from starlette.applications import Starlette

from service import background
from service.campaigns import store
from service.db import connections
from service.db.queries import queries

log = logging.getLogger("newsletter.schedule")
q = queries("schedule")

DUE_BATCH = 20  # due schedules claimed per look (each in its own transaction)

# RFC 3339 `date-time`: full date, `T` (or a space, or `t`), full time, and the offset that
# RFC 3339 requires (`Z` or ±hh:mm). Python's parser alone would also take a time without
# an offset, which would mean the server's zone, a guess.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)
# What an HTML `datetime-local` input posts: a wall-clock time without a zone.
_LOCAL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?")


class SendStarted(Exception):
    """The campaign's send is queued or sent: there is nothing left to schedule or cancel."""


class NotScheduled(Exception):
    """A cancellation found no schedule waiting (and the send has not started)."""


def parse_at(value: object, now: datetime) -> tuple[datetime | None, str | None]:
    """An RFC 3339 time in the future, in UTC, or the message of the `at` field error."""
    if not isinstance(value, str) or len(value) > 40 or not _RFC3339.fullmatch(value):
        return None, "must be an RFC 3339 time with its offset, e.g. 2030-01-31T09:00:00+01:00"
    text = value.upper().replace(" ", "T")
    if "." in text:  # Python takes at most microseconds
        whole, _, rest = text.partition(".")
        digits = re.match(r"\d+", rest).group()  # type: ignore[union-attr]
        text = f"{whole}.{digits[:6].ljust(6, '0')}{rest[len(digits) :]}"
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):  # 31 February; 9999-12-31T23:00-02:00 in UTC
        return None, "is not a valid date and time"
    return _future(at, now)


def parse_local(value: str, zone: tzinfo, now: datetime) -> tuple[datetime | None, str | None]:
    """A `datetime-local` field's wall-clock time in the operator's zone, in UTC, or why
    not: "malformed", "nonexistent" (a time the clocks skip) or "past"."""
    if not _LOCAL.fullmatch(value.strip()):
        return None, "malformed"
    try:
        local = datetime.fromisoformat(value.strip()).replace(tzinfo=zone)
        at = local.astimezone(UTC)
        if at.astimezone(zone).replace(tzinfo=None) != local.replace(tzinfo=None):
            return None, "nonexistent"
    except (ValueError, OverflowError):  # 31 February; the end of year 9999 in UTC
        return None, "malformed"
    at, error = _future(at, now)
    return at, error and "past"


def _future(at: datetime, now: datetime) -> tuple[datetime | None, str | None]:
    if at <= now:
        return None, "must be in the future"
    return at, None


def zone(name: str) -> tzinfo:
    """DASHBOARD_TIME_ZONE as a tzinfo (the settings checked the name at start)."""
    return UTC if name == "UTC" else zoneinfo.ZoneInfo(name)


async def schedule(con: asyncpg.Connection, campaign_id: int, at: datetime) -> datetime:
    """Sets (or moves) the campaign's schedule. Raises CampaignNotFound, WelcomeCampaign,
    SendStarted."""
    async with con.transaction():
        await store.q.lock_campaign_send.execute(
            con, time_limit=connections.LONG_COMMAND_TIMEOUT, id=campaign_id
        )
        scheduled = await q.set_schedule.fetchval(con, id=campaign_id, at=at)
        if scheduled is None:
            await _raise_if_gone_or_started(con, campaign_id)
        return scheduled


async def unschedule(con: asyncpg.Connection, campaign_id: int) -> None:
    """Cancels the waiting schedule. Raises CampaignNotFound, SendStarted, NotScheduled."""
    async with con.transaction():
        if await q.clear_schedule.fetchval(con, id=campaign_id) is None:
            await _raise_if_gone_or_started(con, campaign_id)
            raise NotScheduled(campaign_id)


async def _raise_if_gone_or_started(con: asyncpg.Connection, campaign_id: int) -> None:
    state = await q.send_state.fetchrow(con, id=campaign_id)
    if state is None:
        raise store.CampaignNotFound(campaign_id)
    if state["welcome"]:
        raise store.WelcomeCampaign(campaign_id)
    if state["started"]:
        raise SendStarted(campaign_id)


async def send_now(con: asyncpg.Connection, campaign_id: int) -> int:
    """`store.queue_send`, which also ends a waiting schedule: the send it stood for starts
    now. Returns how many emails were queued; raises CampaignNotFound, WelcomeCampaign."""
    async with con.transaction():
        await store.q.lock_campaign_send.execute(
            con, time_limit=connections.LONG_COMMAND_TIMEOUT, id=campaign_id
        )
        await q.clear_schedule.fetchval(con, id=campaign_id)
        return await store.queue_send(con, campaign_id)


async def queue_due(con: asyncpg.Connection) -> list[tuple[int, int]]:
    """Queues every schedule that is due: (campaign id, emails queued) for each one this
    process claimed. Each claim is its own transaction (one campaign's queueing can take
    seconds); a schedule another replica claims meanwhile is passed over."""
    done: list[tuple[int, int]] = []
    while True:
        due = await q.due_schedules.fetch(con, limit=DUE_BATCH)
        claimed_any = False
        for row in due:
            async with con.transaction():
                await store.q.lock_campaign_send.execute(con, id=row["id"])
                if await q.claim_schedule.fetchval(con, id=row["id"]) is None:
                    continue  # another replica queued it, or it was cancelled
                queued = await store.queue_send(con, row["id"])
            done.append((row["id"], queued))
            claimed_any = True
        if len(due) < DUE_BATCH or not claimed_any:
            return done


async def _look(app: Starlette) -> float:
    """One look: queues what is due, and returns how long to sleep until the next one."""
    settings = app.state.settings
    poll = settings.schedule_poll_interval
    due_in = await q.next_schedule_in.fetchval(app.state.pool)
    if due_in is None:
        return poll
    if due_in > 0:
        return min(poll, due_in)
    # The queueing of a large list can outlast DB_COMMAND_TIMEOUT (a million subscribers
    # take 5 to 20 s, bench_campaign_send): it runs on a connection of its own with the
    # one-shot commands' timeout.
    con = await connections.connect(settings)
    try:
        for campaign_id, queued in await queue_due(con):
            log.info("scheduled send queued", extra={"campaign_id": campaign_id, "count": queued})
    finally:
        await con.close()
    return 0.0  # look again: more may have come due meanwhile


async def _loop(app: Starlette) -> None:
    while True:
        try:
            delay = await _look(app)
        except Exception as exc:  # the next look tries again; the class says what broke
            log.warning("scheduled sends failed", extra={"error": exc.__class__.__name__})
            delay = app.state.settings.schedule_poll_interval
        await asyncio.sleep(max(delay, 0.01))


def running(app: Starlette) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    """Queues scheduled sends when they are due, for the app's lifetime."""
    return background.running(_loop(app), name="scheduled-sends")
