"""Retention (storage limitation): deletes what the service no longer needs to keep.

- pending sign-ups not confirmed within CONFIRM_MAX_AGE (their link has expired);
- open events and deliveries older than OPEN_RETENTION (default 395 days, 13 months);
- rate-limit rows and keys of past UTC days;
- erasure journal rows older than ERASURE_JOURNAL_RETENTION (no backup needs them);
- fresh links to the subscriber's page that no longer work, and address changes not
  confirmed within CONFIRM_MAX_AGE (the new address goes with them).
- soft bounces older than BOUNCE_SOFT_WINDOW (they no longer count towards an erasure).
- spent bot-check challenges past their expiry (ALTCHA_MAX_AGE).

The work of a pass grows with what it deletes, never with the table. `opens` has a
partition per month (sql/151_opens_partitioned.sql): months wholly past the retention are
dropped, the month the boundary falls in is deleted from in slices of time, and the pass
makes the partitions of the coming months. Every other delete is a keyset batch that
starts where the last ended. Each batch commits on its own, so a pass that is killed keeps
what it did (the time-sliced ones record how far they got in `retention_progress`) and no
transaction is held open for long enough to hold back vacuum.

With several replicas (and the `newsletter purge` CronJob) exactly one pass runs at a
time: it holds a session-level advisory lock, and the others skip. A session lock needs a
connection of its own to the server, so a pass runs on a direct connection
(DATABASE_DIRECT_URL when set), never through the transaction-mode pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable

import asyncpg
from starlette.applications import Starlette

from service import background
from service.db import connections
from service.db.queries import Query, queries
from service.settings import Settings
from service.web import ratelimit

log = logging.getLogger("newsletter.retention")
q = queries("retention")
botcheck_q = queries("botcheck")

# Any constant unique to this service; "nl" "pu" in ASCII.
ADVISORY_LOCK_ID = 0x6E6C_7075
BATCH = 5000
SKIPPED = "skipped"
# Months of `opens` partitions made ahead of the current one.
MONTHS_AHEAD = 3
# How long making a month may wait for its locks (ATTACH's SHARE UPDATE EXCLUSIVE, which
# the pixel's inserts do not wait for); then the next pass tries again.
DDL_LOCK_TIMEOUT = "1s"
# How long dropping a month may wait for the ACCESS EXCLUSIVE lock of the `opens` table
# itself, which the pixel's inserts queue behind meanwhile; then it gives up for now.
TABLE_LOCK_TIMEOUT = "100ms"
# How long dropping a month may wait for that month's own partition, which only erasures
# and exports queue behind; longer than deadlock_timeout (1 s), after which PostgreSQL
# cancels an autovacuum of the month that holds it (sql/164).
MONTH_LOCK_TIMEOUT = "2s"
# Tries at dropping a month within one pass, and the pause between them.
DROP_TRIES = 2
DROP_PAUSE = 0.5
# Time slices (opens, deliveries) start an hour wide, grow while they find few rows and
# shrink when they find many, so that one holds about BATCH rows.
FIRST_SLICE = dt.timedelta(hours=1)
WIDEST_SLICE = dt.timedelta(days=31)
NARROWEST_SLICE = dt.timedelta(seconds=1)
# The keyset's start: before every timestamp, and before every ctid.
_START = (dt.datetime.min.replace(tzinfo=dt.UTC), (0, 0))


async def _keyset(delete: Query, con: asyncpg.Connection, **params: object) -> int:
    """Batches of a query that deletes the next BATCH rows after (after_t, after_tid) and
    returns deleted, seen, last_t and last_tid; each batch its own transaction."""
    total = 0
    after_t, after_tid = _START
    while True:
        row = await delete.fetchrow(
            con, batch=BATCH, after_t=after_t, after_tid=after_tid, **params
        )
        total += row["deleted"]
        if row["seen"] < BATCH:
            return total
        after_t, after_tid = row["last_t"], row["last_tid"]


Slice = Callable[[dt.datetime, dt.datetime], Awaitable[tuple[int, dt.datetime | None]]]


async def _slices(
    con: asyncpg.Connection,
    what: str,
    start: dt.datetime,
    cutoff: dt.datetime,
    delete: Slice,
    count: Query,
) -> int:
    """Deletes [start, cutoff) slice by slice, each slice with its progress in one
    transaction; `delete` returns the rows it deleted and the earliest it had to keep
    (the progress stays there, and the next pass goes over that part again). A slice
    wider than FIRST_SLICE (grown over sparse rows) is counted before it is deleted, so
    that rows that turn dense again do not make one huge delete."""
    total, width, held = 0, FIRST_SLICE, None
    lo = start
    while lo < cutoff:
        hi = min(lo + width, cutoff)
        if width > FIRST_SLICE and await count.fetchval(con, lo=lo, hi=hi) > 2 * BATCH:
            width = max(width / 4, FIRST_SLICE)
            continue
        async with con.transaction():
            deleted, kept_from = await delete(lo, hi)
            if held is None and kept_from is not None:
                held = kept_from
            await q.set_progress.execute(con, what=what, done_before=held or hi)
        total += deleted
        if deleted > 2 * BATCH:
            width = max(width / 2, NARROWEST_SLICE)
        elif deleted < BATCH // 2:
            width = min(width * 2, WIDEST_SLICE)
        lo = hi
    return total


async def _drop_month(con: asyncpg.Connection, part: str) -> int:
    """The month's rows, dropped with its partition; 0 if a lock stayed busy."""
    for attempt in range(DROP_TRIES):
        if attempt:
            await asyncio.sleep(DROP_PAUSE)
        try:
            async with con.transaction():
                await q.lock_timeout.fetchval(con, timeout=MONTH_LOCK_TIMEOUT)
                return await q.drop_month.fetchval(
                    con,
                    part=part,
                    parent_wait=TABLE_LOCK_TIMEOUT,
                    time_limit=connections.LONG_COMMAND_TIMEOUT,
                )
        except asyncpg.LockNotAvailableError:
            pass
    log.warning("partition not dropped: its lock was busy; the next pass tries again")
    return 0


async def _purge_opens(con: asyncpg.Connection, settings: Settings) -> int:
    """Drops the months past the retention, deletes the rest in slices, and makes sure
    the coming months have their partitions."""
    now = await con.fetchval("SELECT now()")
    cutoff = now - dt.timedelta(seconds=settings.open_retention)
    total = 0
    for part in await q.opens_partitions.fetch(con):
        if part["until"] is None or part["until"] > cutoff:
            continue
        total += await _drop_month(con, part["name"])
    done_before = await q.progress.fetchval(con, what="opens")
    if done_before is None:
        done_before = await q.first_open.fetchval(
            con, cutoff=cutoff, time_limit=connections.LONG_COMMAND_TIMEOUT
        )
    in_default = await q.first_default_open.fetchval(con)
    starts = [t for t in (done_before, in_default) if t is not None]
    if starts and min(starts) < cutoff:

        async def delete(lo: dt.datetime, hi: dt.datetime) -> tuple[int, None]:
            status = await q.delete_opens.execute(con, lo=lo, hi=hi)
            return int(status.split()[-1]), None

        total += await _slices(con, "opens", min(starts), cutoff, delete, q.count_opens)
    await _ensure_months(con, now)
    # After the opens: a user-agent string no open within the retention uses goes too.
    await q.delete_unused_user_agents.execute(con, cutoff=cutoff)
    return total


async def _ensure_months(con: asyncpg.Connection, now: dt.datetime) -> None:
    month = now.astimezone(dt.UTC).date().replace(day=1)
    for _ in range(MONTHS_AHEAD + 1):
        try:
            async with con.transaction():
                await q.lock_timeout.fetchval(con, timeout=DDL_LOCK_TIMEOUT)
                await q.ensure_month.fetchval(con, month=month)
        except asyncpg.LockNotAvailableError:
            log.warning("partition not made: its lock was busy; the next pass tries again")
        month = (month + dt.timedelta(days=32)).replace(day=1)


async def _purge_deliveries(con: asyncpg.Connection, settings: Settings) -> int:
    now = await con.fetchval("SELECT now()")
    cutoff = now - dt.timedelta(seconds=settings.open_retention)
    start = await q.progress.fetchval(con, what="deliveries")
    if start is None:
        start = await q.first_delivery.fetchval(
            con, cutoff=cutoff, time_limit=connections.LONG_COMMAND_TIMEOUT
        )
    if start is None or start >= cutoff:
        return 0

    async def delete(lo: dt.datetime, hi: dt.datetime) -> tuple[int, dt.datetime | None]:
        row = await q.delete_deliveries.fetchrow(con, lo=lo, hi=hi)
        return row["deleted"], row["kept_from"]

    return await _slices(con, "deliveries", start, cutoff, delete, q.count_deliveries)


async def _purge_signups(con: asyncpg.Connection, settings: Settings) -> int:
    total = 0
    after_t, after_tid = _START
    while True:
        async with con.transaction():
            batch = await q.expired_signups.fetch(
                con,
                max_age=settings.confirm_max_age,
                after_t=after_t,
                after_tid=after_tid,
                batch=BATCH,
            )
            ids = [r["id"] for r in batch]
            await q.delete_signup_jobs.execute(con, ids=ids)
            status = await q.delete_signups.execute(con, ids=ids, max_age=settings.confirm_max_age)
        total += int(status.split()[-1])
        if len(batch) < BATCH:
            return total
        after_t, after_tid = batch[-1]["t"], batch[-1]["tid"]


async def purge(con: asyncpg.Connection, settings: Settings) -> dict[str, int]:
    """One retention pass; counts of deleted rows by kind, or `{"skipped": 1}` when
    another replica is running a pass right now. `con` must be a session of its own on
    the server (not in a transaction, not through a transaction-mode pooler)."""
    if not await q.try_lock.fetchval(con, lock_id=ADVISORY_LOCK_ID):
        return {SKIPPED: 1}
    try:
        return {
            "pending_signups": await _purge_signups(con, settings),
            "opens": await _purge_opens(con, settings),
            "deliveries": await _purge_deliveries(con, settings),
            "rate_limits": await ratelimit.purge_expired(con),
            "erasure_journal": await _keyset(
                q.delete_old_journal, con, max_age=settings.erasure_journal_retention
            ),
            "manage_links": await _keyset(q.delete_old_manage_links, con),
            "address_changes": await _keyset(
                q.delete_expired_address_changes, con, max_age=settings.confirm_max_age
            ),
            "soft_bounces": await _keyset(
                q.delete_old_soft_bounces, con, window=settings.bounce_soft_window
            ),
            # Spent bot-check challenges past their expiry (sql/159): a table of at most
            # one ALTCHA_MAX_AGE of sign-ups, so one statement.
            "altcha_spent": int((await botcheck_q.purge_spent.execute(con)).split()[-1]),
        }
    finally:
        # A connection left mid-statement (a cancelled pass) cannot run it; closing that
        # connection, which the caller does, releases the lock as well.
        with contextlib.suppress(asyncpg.InterfaceError):
            await q.unlock.fetchval(con, lock_id=ADVISORY_LOCK_ID)


def _next_delay(interval: float, first: bool) -> float:
    """Replicas started together spread out: the first pass comes after 10-100 % of the
    interval, later ones after the interval ± 10 %."""
    if first:
        return interval * random.uniform(0.1, 1.0)
    return interval * random.uniform(0.9, 1.1)


async def _one_pass(settings: Settings) -> dict[str, int]:
    """A pass on a connection of its own: the pool may be behind PgBouncer, which does not
    keep a session lock; statements keep DB_COMMAND_TIMEOUT (the long ones say so)."""
    con = await connections.connect(settings, command_timeout=settings.db_command_timeout)
    try:
        return await purge(con, settings)
    finally:
        await con.close()


async def _loop(app: Starlette) -> None:
    settings: Settings = app.state.settings
    metrics = app.state.metrics
    first = True
    while True:
        await asyncio.sleep(_next_delay(settings.purge_interval, first))
        first = False
        try:
            counts = await _one_pass(settings)
        except Exception as exc:  # the next pass tries again; the class says why
            log.warning("purge failed", extra={"error": exc.__class__.__name__})
            continue
        if SKIPPED in counts:
            log.debug("purge skipped: another replica holds the lock")
            continue
        for what, count in counts.items():
            if count:
                metrics.purged.labels(what).inc(count)
        log.info("purge done", extra={"count": sum(counts.values())})


def running(app: Starlette) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    """The periodic retention pass, every PURGE_INTERVAL, for the app's lifetime."""
    return background.running(_loop(app), name="retention")
