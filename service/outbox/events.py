"""Delivers the queued events (service/events/queue.py) to their receivers over HTTP.

One loop per process, beside the email lanes. Each round drops what is older than
EVENTS_MAX_AGE, then claims up to BATCH due events `FOR UPDATE SKIP LOCKED` in one
transaction, each the oldest queued for its person and receiver (sql/queries/events.sql,
`claim`: a later event of a person waits while an earlier one is in flight anywhere or
waiting for its retry), posts them side by side, and in the same transaction deletes the
delivered ones and sets the others' retry (OUTBOX_BACKOFF_BASE, doubling up to
OUTBOX_BACKOFF_MAX; the person's later events wait with it), or drops one that failed
while the person's erasure was queued behind it. A row goes only after a 2xx, so a
restart loses nothing; a process killed between a receiver's answer and the commit sends
that event again under the same `webhook-id` (at least once: receivers deduplicate by
it). The batch's transaction stays open through its requests (each within
EVENTS_TIMEOUT), which is what keeps a person's later events behind one in flight.

The loop sleeps on `LISTEN newsletter_events` (the queueing statement notifies at commit)
and polls every OUTBOX_POLL_INTERVAL anyway. Logs and metrics name the receiver by its
host and the event by its type, never a person.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC

import asyncpg
import httpx
from starlette.applications import Starlette

from service.db import connections
from service.db.queries import queries
from service.events import signing
from service.observability import Metrics
from service.outbox.sender import STOP_GRACE_S, backoff
from service.outbox.wakeup import Wakeup
from service.settings import Endpoint, Settings

CHANNEL = "newsletter_events"
BATCH = 50
DB_ERRORS = (asyncpg.PostgresError, *connections.UNAVAILABLE)

log = logging.getLogger("newsletter.events")
q = queries("events")


def host(url: str) -> str:
    return httpx.URL(url).host or "?"


def body(job: asyncpg.Record) -> bytes:
    """The request body, the same bytes on every retry: `{"type", "timestamp", "data"}`."""
    occurred = job["occurred_at"].astimezone(UTC).isoformat(timespec="milliseconds")
    event = {
        "type": job["type"],
        "timestamp": occurred.replace("+00:00", "Z"),
        "data": json.loads(job["data"]),
    }
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


class EventSender:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, metrics: Metrics) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self.endpoints: dict[str, Endpoint] = {e.url: e for e in settings.event_endpoints}
        timeout = settings.events_timeout
        # No redirects: a receiver that moved answers 3xx and is retried, so an event
        # never follows a redirect to a host nobody configured.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, pool=timeout),
            follow_redirects=False,
            headers={"user-agent": "newsletter-events"},
        )
        self.wakeup = Wakeup(settings, CHANNEL, "event")
        self._stopping = False

    async def run(self) -> None:
        while not self._stopping:
            await self.wakeup.listen()
            try:
                claimed = await self.process_batch()
            except DB_ERRORS as exc:
                log.warning("event outbox database error", extra={"error": exc.__class__.__name__})
                await self.wakeup.sleep(self.settings.outbox_poll_interval)
                continue
            except Exception as exc:  # keep delivering; the class says what broke
                log.error("event outbox error", extra={"error": exc.__class__.__name__})
                await self.wakeup.sleep(self.settings.outbox_poll_interval)
                continue
            if claimed == 0:
                await self.wakeup.sleep(await self._idle_delay())

    async def process_batch(self) -> int:
        """Drops expired events, then claims and delivers up to BATCH due ones; the
        number claimed."""
        async with self.pool.acquire() as con:
            for row in await q.drop_expired.fetch(con, max_age=self.settings.events_max_age):
                self._dropped(row["endpoint"], "max_age")
            async with con.transaction():
                jobs = await q.claim.fetch(con, limit=BATCH)
                if not jobs:
                    return 0
                outcomes = await asyncio.gather(*(self._deliver(job) for job in jobs))
                delivered, retries, dropped = [], [], []
                for job, error in zip(jobs, outcomes, strict=True):
                    if error is None:
                        delivered.append(job["id"])
                    elif job["age"] >= self.settings.events_max_age:
                        dropped.append(job["id"])
                        self._dropped(job["endpoint"], "max_age")
                    else:
                        delay = backoff(self.settings, job["attempts"] + 1)
                        retries.append((job["id"], delay, error))
                if delivered or dropped:
                    await q.delivered.execute(con, ids=delivered + dropped)
                if retries:
                    superseded = await q.drop_superseded.fetch(con, ids=[r[0] for r in retries])
                    for row in superseded:
                        self._dropped(row["endpoint"], "erased")
                    gone = {row["id"] for row in superseded}
                    retries = [r for r in retries if r[0] not in gone]
                if retries:
                    ids, delays, errors = zip(*retries, strict=True)
                    await q.retry_later.execute(
                        con, ids=list(ids), delays=list(delays), errors=list(errors)
                    )
                    await q.hold_followers.execute(con, ids=list(ids))
            return len(jobs)

    async def _deliver(self, job: asyncpg.Record) -> str | None:
        """Posts one event; None once the receiver took it (2xx), else why not."""
        endpoint = self.endpoints.get(job["endpoint"])
        receiver = host(job["endpoint"])
        if endpoint is None:  # another process's receiver: it delivers, or sync drops it
            return "receiver not configured in this process"
        content = body(job)
        headers = {
            "content-type": "application/json",
            **signing.headers(endpoint.key, job["webhook_id"], int(time.time()), content),
        }
        try:
            response = await self.client.post(endpoint.url, content=content, headers=headers)
        except httpx.HTTPError as exc:
            error = exc.__class__.__name__
        else:
            if response.is_success:
                self.metrics.events_sent.labels(receiver, job["type"]).inc()
                return None
            error = f"HTTP {response.status_code}"
        self.metrics.events_failed.labels(receiver, job["type"]).inc()
        log.info(
            "event not delivered",
            extra={
                "event_id": job["id"],
                "type": job["type"],
                "receiver": receiver,
                "attempts": job["attempts"] + 1,
                "reason": error,
            },
        )
        return error

    def _dropped(self, url: str, reason: str) -> None:
        self.metrics.events_dropped.labels(host(url), reason).inc()
        log.warning("event dropped undelivered", extra={"receiver": host(url), "reason": reason})

    async def _idle_delay(self) -> float:
        try:
            due_in = await q.next_due_in.fetchval(self.pool)
        except DB_ERRORS:
            due_in = None
        poll = self.settings.outbox_poll_interval
        return poll if due_in is None else min(poll, max(due_in, 0.0))

    async def stop(self) -> None:
        self._stopping = True
        self.wakeup.set()

    async def close(self) -> None:
        await self.client.aclose()
        await self.wakeup.close()


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[EventSender | None]:
    """Delivers events for the app's lifetime when receivers are configured; on exit the
    batch in flight finishes (each request within EVENTS_TIMEOUT)."""
    state = app.state
    # OUTBOX_CONCURRENCY=0: this process sends nothing, events neither.
    if not state.settings.event_endpoints or state.settings.outbox_concurrency == 0:
        state.events = None
        yield None
        return
    events = EventSender(state.pool, state.settings, state.metrics)
    task = asyncio.create_task(events.run(), name="event-sender")
    state.events = events
    try:
        yield events
    finally:
        await events.stop()
        try:
            await asyncio.wait_for(task, timeout=STOP_GRACE_S + state.settings.events_timeout)
        except TimeoutError:
            log.warning("event sender cancelled at shutdown")
        except Exception as exc:
            log.warning(
                "event sender ended with an error at shutdown",
                extra={"error": exc.__class__.__name__},
            )
        finally:
            await events.close()
