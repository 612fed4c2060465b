"""The outbox worker: sends the emails that transactions queued as rows in `outbox`.

Each job is claimed `FOR UPDATE SKIP LOCKED` in its own transaction and stays locked
through the SMTP send, so replicas never send one job twice and an erasure (which
deletes a subscriber's outbox rows first) waits for an in-flight send. Success and its
bookkeeping commit together with the job's deletion. Delivery is at-least-once: a
crash between the relay's "250 OK" and the commit sends that one email again.

The worker sleeps on `LISTEN newsletter_outbox` (signup transactions `NOTIFY` it) and
polls every OUTBOX_POLL_INTERVAL anyway, so a lost notification or listener connection
only delays mail. Subscriber rows are never locked by the claim; the only subscriber
write is `confirm_sent_at`, after the outbox row lock (erasure takes them in the same
order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from email.utils import parseaddr

import asyncpg
from starlette.applications import Starlette

from service import db, dkim, emails
from service.bounces import send_hooks
from service.observability import Metrics
from service.queries import queries
from service.settings import Settings
from service.smtp import Mailer, Permanent, RelayUnavailable, SmtpFailure, Transient

CHANNEL = "newsletter_outbox"
STOP_GRACE_S = 10.0
DB_ERRORS = (asyncpg.PostgresError, *db.UNAVAILABLE)
# The database itself is gone (as opposed to one job's query failing).
CONNECTION_ERRORS = db.UNAVAILABLE

log = logging.getLogger("newsletter.outbox")
q = queries("outbox")


def backoff(settings: Settings, attempt: int) -> float:
    """Exponential from OUTBOX_BACKOFF_BASE, capped at OUTBOX_BACKOFF_MAX, jittered into
    its upper half so that jobs failed together do not retry together."""
    ceiling = min(settings.outbox_backoff_max, settings.outbox_backoff_base * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class Worker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        metrics: Metrics,
        context: emails.MailContext,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self.context = context
        # One SMTP connection per lane; lanes send in parallel (OUTBOX_CONCURRENCY), each
        # job in its own transaction, so a slow relay round trip does not serialise a send.
        self.mailers = [Mailer(settings) for _ in range(settings.outbox_concurrency)]
        self.sender = parseaddr(settings.mail_from)[1]
        self._wake = asyncio.Event()
        self._stopping = False
        self._listener: asyncpg.Connection | None = None
        self._listen_retry_at = 0.0

    # -- loop ----------------------------------------------------------------------
    async def run(self) -> None:
        await asyncio.gather(*(self._lane(i, mailer) for i, mailer in enumerate(self.mailers)))

    async def _lane(self, lane: int, mailer: Mailer) -> None:
        relay_failures = 0
        while not self._stopping:
            if lane == 0:
                await self._ensure_listener()
            try:
                outcome = await self.process_one(mailer)
            except DB_ERRORS as exc:
                log.warning("outbox database error", extra={"error": exc.__class__.__name__})
                await self._sleep(self.settings.outbox_poll_interval)
                continue
            except Exception as exc:  # keep sending the other jobs; the class says what broke
                log.error("outbox worker error", extra={"error": exc.__class__.__name__})
                await self._sleep(self.settings.outbox_poll_interval)
                continue
            if outcome == "relay_down":
                relay_failures += 1
                await self._sleep(backoff(self.settings, relay_failures))
            elif outcome == "idle":
                await mailer.close_if_idle()
                await self._sleep(await self._idle_delay())
            else:
                relay_failures = 0
            if outcome in ("sent", "dropped"):
                # One NOTIFY wakes one lane; a lane that found work wakes the others, so a
                # queued campaign fans out to every lane without waiting for their poll.
                self._wake.set()

    async def _idle_delay(self) -> float:
        try:
            due_in = await q.next_due_in.fetchval(self.pool)
        except DB_ERRORS:
            due_in = None
        poll = self.settings.outbox_poll_interval
        return poll if due_in is None else min(poll, max(due_in, 0.0))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0.01))
        self._wake.clear()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def close(self) -> None:
        for mailer in self.mailers:
            await mailer.close()
        if self._listener is not None:
            with contextlib.suppress(*DB_ERRORS):
                await self._listener.close(timeout=2)
            self._listener = None

    # -- LISTEN/NOTIFY -------------------------------------------------------------
    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        if time.monotonic() < self._listen_retry_at:
            return
        try:
            con = await db.open_connection(self.settings.direct_database_url, timeout=5)
            await con.add_listener(CHANNEL, lambda *_: self._wake.set())
        except DB_ERRORS as exc:
            self._listen_retry_at = time.monotonic() + max(self.settings.outbox_poll_interval, 1)
            log.warning("outbox listener unavailable", extra={"error": exc.__class__.__name__})
            return
        self._listener = con
        self._wake.set()  # jobs may have been queued while nobody listened

    # -- one job -------------------------------------------------------------------
    async def process_one(self, mailer: Mailer | None = None) -> str:
        """Claims and handles one due job: 'idle', 'sent', 'retry', 'dropped' or 'relay_down'."""
        async with self.pool.acquire() as con, con.transaction():
            job = await q.claim_due.fetchrow(con)
            if job is None:
                return "idle"
            return await self._handle(con, job, mailer or self.mailers[0])

    async def _handle(self, con: asyncpg.Connection, job: asyncpg.Record, mailer: Mailer) -> str:
        kind = job["kind"]
        composer = emails.COMPOSERS.get(kind)
        try:
            if composer is None:
                raise LookupError(f"no composer for {kind}")
            async with con.transaction():  # a savepoint: a failing composer keeps the claim
                message = await composer(con, job, self.context)
            if message is None:
                await q.delete_job.execute(con, id=job["id"])
                log.info("email not needed any more", extra={"job_id": job["id"], "kind": kind})
                return "dropped"
            recipients, smtputf8 = emails.envelope_recipients(message)
            raw = emails.to_bytes(message, smtputf8)
            if dkim.enabled(self.settings):
                raw = dkim.sign(raw, self.settings)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:  # one broken job must not stop the queue
            log.error(
                "email could not be built",
                extra={"job_id": job["id"], "kind": kind, "error": exc.__class__.__name__},
            )
            return await self._failed(
                con, job, Transient(None, f"compose {exc.__class__.__name__}")
            )
        try:
            # issue 19 hook: the VERP return path (MAIL_FROM's address without BOUNCE_DOMAIN)
            sender = send_hooks.envelope_sender(
                self.settings, self.context.tokens, job, self.sender
            )
            await mailer.send(sender, recipients, raw, smtputf8)
        except RelayUnavailable as failure:
            log.warning("smtp relay unavailable", extra={"reason": failure.reason})
            return "relay_down"
        except SmtpFailure as failure:
            return await self._failed(con, job, failure)
        await self._sent(con, job)
        return "sent"

    async def _sent(self, con: asyncpg.Connection, job: asyncpg.Record) -> None:
        await q.delete_job.execute(con, id=job["id"])
        if job["kind"] == "confirm":
            await q.mark_confirm_sent.execute(con, subscriber_id=job["subscriber_id"])
        elif job["kind"] == "campaign":
            await q.mark_delivery_sent.execute(
                con, campaign_id=job["campaign_id"], subscriber_id=job["subscriber_id"]
            )
            await q.count_campaign_sent.execute(con, campaign_id=job["campaign_id"])
        self.metrics.emails_sent.labels(job["kind"]).inc()
        log.debug("email sent", extra={"job_id": job["id"], "kind": job["kind"]})

    async def _failed(
        self, con: asyncpg.Connection, job: asyncpg.Record, failure: SmtpFailure
    ) -> str:
        attempts = job["attempts"] + 1
        fields = {
            "job_id": job["id"],
            "kind": job["kind"],
            "campaign_id": job["campaign_id"],
            "attempts": attempts,
            "smtp_code": failure.code,
            "reason": failure.reason,
        }
        if isinstance(failure, Transient) and attempts < self.settings.outbox_max_attempts:
            delay = backoff(self.settings, attempts)
            await q.retry_later.execute(con, id=job["id"], delay=delay, error=failure.reason[:200])
            self.metrics.emails_failed.labels(job["kind"], "retried").inc()
            log.info("email deferred", extra={**fields, "delay_s": round(delay, 2)})
            return "retry"
        outcome = "rejected" if isinstance(failure, Permanent) else "gave_up"
        await q.delete_job.execute(con, id=job["id"])
        if job["kind"] == "campaign":
            await q.count_campaign_failed.execute(con, campaign_id=job["campaign_id"])
        if outcome == "rejected":  # issue 19 hook: a 5xx refusal of the address is a hard bounce
            await send_hooks.refused_at_send(con, self.settings, job, failure)
        self.metrics.emails_failed.labels(job["kind"], outcome).inc()
        log.warning(f"email dropped ({outcome})", extra=fields)
        return "dropped"


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[Worker]:
    """Runs the worker for the app's lifetime; on exit it finishes the send in flight."""
    state = app.state
    context = emails.MailContext(state.settings, state.tokens, state.templates)
    worker = Worker(state.pool, state.settings, state.metrics, context)
    task = asyncio.create_task(worker.run(), name="outbox-worker")
    app.state.outbox = worker
    try:
        yield worker
    finally:
        await worker.stop()
        try:
            await asyncio.wait_for(task, timeout=STOP_GRACE_S)
        except TimeoutError:
            log.warning("outbox worker cancelled at shutdown")
        except Exception as exc:  # a query cut off by the cancellation; the job stays queued
            log.warning(
                "outbox worker ended with an error at shutdown",
                extra={"error": exc.__class__.__name__},
            )
        finally:
            await worker.close()
