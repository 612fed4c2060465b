"""Retention (storage limitation): deletes what the service no longer needs to keep.

- pending sign-ups not confirmed within CONFIRM_MAX_AGE (their link has expired);
- open events and deliveries older than OPEN_RETENTION (default 395 days, 13 months);
- rate-limit rows and keys of past UTC days;
- erasure journal rows older than ERASURE_JOURNAL_RETENTION (no backup needs them);
- fresh links to the subscriber's page that no longer work, and address changes not
  confirmed within CONFIRM_MAX_AGE (the new address goes with them).
- soft bounces older than BOUNCE_SOFT_WINDOW (they no longer count towards an erasure).

One pass is one transaction under `pg_try_advisory_xact_lock`: with several replicas (and
the `newsletter purge` CronJob) exactly one runs at a time and the others skip; the lock
goes with the transaction, so it also works behind PgBouncer in transaction mode. Each
delete works in batches so that no statement runs long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import asyncpg
from starlette.applications import Starlette

from service import background
from service.db.queries import queries
from service.settings import Settings
from service.web import ratelimit

log = logging.getLogger("newsletter.retention")
q = queries("retention")

# Any constant unique to this service; "nl" "pu" in ASCII.
ADVISORY_LOCK_ID = 0x6E6C_7075
BATCH = 5000
SKIPPED = "skipped"


async def _in_batches(delete, con: asyncpg.Connection, **params: object) -> int:
    total = 0
    while True:
        status = await delete.execute(con, batch=BATCH, **params)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < BATCH:
            return total


async def purge(con: asyncpg.Connection, settings: Settings) -> dict[str, int]:
    """One retention pass; counts of deleted rows by kind, or `{"skipped": 1}` when
    another replica is running a pass right now."""
    async with con.transaction():
        if not await q.try_lock.fetchval(con, lock_id=ADVISORY_LOCK_ID):
            return {SKIPPED: 1}
        await q.delete_expired_signup_jobs.execute(con, max_age=settings.confirm_max_age)
        return {
            "pending_signups": await _in_batches(
                q.delete_expired_signups, con, max_age=settings.confirm_max_age
            ),
            "opens": await _in_batches(q.delete_old_opens, con, max_age=settings.open_retention),
            "deliveries": await _in_batches(
                q.delete_old_deliveries, con, max_age=settings.open_retention
            ),
            "rate_limits": await ratelimit.purge_expired(con),
            "erasure_journal": await _in_batches(
                q.delete_old_journal, con, max_age=settings.erasure_journal_retention
            ),
            "manage_links": await _in_batches(q.delete_old_manage_links, con),
            "address_changes": await _in_batches(
                q.delete_expired_address_changes, con, max_age=settings.confirm_max_age
            ),
            "soft_bounces": await _in_batches(
                q.delete_old_soft_bounces, con, window=settings.bounce_soft_window
            ),
        }


def _next_delay(interval: float, first: bool) -> float:
    """Replicas started together spread out: the first pass comes after 10-100 % of the
    interval, later ones after the interval ± 10 %."""
    if first:
        return interval * random.uniform(0.1, 1.0)
    return interval * random.uniform(0.9, 1.1)


async def _loop(app: Starlette) -> None:
    settings: Settings = app.state.settings
    metrics = app.state.metrics
    first = True
    while True:
        await asyncio.sleep(_next_delay(settings.purge_interval, first))
        first = False
        try:
            async with app.state.pool.acquire() as con:
                counts = await purge(con, settings)
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
