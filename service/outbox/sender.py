"""The outbox worker: sends the emails that transactions queued as rows in `outbox`.

Each lane claims up to OUTBOX_BATCH due jobs `FOR UPDATE SKIP LOCKED` in one
transaction (the ones a person waits for first, then campaign jobs from where the lane's
previous claim ended, past the index entries of sent jobs: Resume), builds their emails
(campaign emails with two queries for the whole batch), signs them off the event loop,
sends them one after another over the lane's SMTP connection, and records every outcome
in a few set-based statements before the commit. The jobs stay locked through their
sends, so replicas never send one job twice and an erasure (which deletes a subscriber's
outbox rows first) waits for a batch in flight. Delivery is at-least-once: a process
killed between the relay's "250 OK" and the commit sends that batch's accepted emails
again (at most OUTBOX_BATCH per lane).

With SMTP_MAX_RATE (or an hourly or daily cap) a lane first reserves its batch's tokens
from the deployment's bucket (service/outbox/send_rate.py). Every refusal is sorted by
service/bounces/send_hooks.py: a throttle ends the batch and slows the lane down, a
refusal of the recipient's mailbox is held for the circuit breaker (service/outbox/breaker.py),
which judges the process's recent sends after each batch and pauses campaigns in a
burst; anything else is retried.

The worker sleeps on `LISTEN newsletter_outbox` (signup transactions `NOTIFY` it) and
polls every OUTBOX_POLL_INTERVAL anyway, so a lost notification or listener connection
only delays mail. Subscriber rows are never locked by the claim. A batch's transaction
writes `outbox`, `deliveries.sent_at`, the campaigns' counters, `refusal_counts` and
`held_refusals`; its one subscriber write is `confirm_sent_at`, after the outbox row
locks (erasure takes them in the same order). The breaker, after the commit, erases the
subscribers of held refusals it finds no burst, each in a transaction of its own
(`send_hooks.apply_held`, the erasure's lock order), and may pause a campaign.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime

import asyncpg
from starlette.applications import Starlette

from service.bounces import send_hooks
from service.db import connections
from service.db.queries import queries
from service.mail import dkim, messages
from service.mail.smtp import Mailer, Permanent, RelayUnavailable, SmtpFailure, Transient
from service.mail.wire import OutgoingEmail
from service.observability import Metrics
from service.outbox.breaker import Breaker, Outcome
from service.outbox.kinds import CONFIRM_SENT, DELIVERY, KINDS
from service.outbox.send_rate import Bucket
from service.outbox.wakeup import Wakeup
from service.settings import Settings

CHANNEL = "newsletter_outbox"
STOP_GRACE_S = 10.0
DB_ERRORS = (asyncpg.PostgresError, *connections.UNAVAILABLE)

log = logging.getLogger("newsletter.outbox")
q = queries("outbox")
breaker_q = queries("breaker")


def backoff(settings: Settings, attempt: int) -> float:
    """Exponential from OUTBOX_BACKOFF_BASE, capped at OUTBOX_BACKOFF_MAX, jittered into
    its upper half so that jobs failed together do not retry together."""
    ceiling = min(settings.outbox_backoff_max, settings.outbox_backoff_base * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


# A lane's campaign claim starts again from the head of the queue at least this often.
RESUME_FOR_S = 30.0


@dataclass
class Resume:
    """Where a lane's next campaign claim starts: after the last campaign job it claimed.

    Sent jobs are deleted, and their index entries stay at the head of the claim's index
    until a vacuum: a claim from the head walks them all. Starting after the previous
    claim's last job skips them. What lies behind the bound is only jobs another lane
    released without sending (a process killed mid-batch): the lane starts from the head
    again whenever a claim comes back short, and after RESUME_FOR_S anyway, so such jobs
    wait at most that long. Retries are due later, so they land after the bound; so do new
    jobs (run_at is their queueing transaction's start), except those of a campaign whose
    queueing started before another's and committed after it: they wait at most as long.
    """

    run_at: datetime | None = None
    id: int = 0
    since: float = 0.0

    def restart(self) -> None:
        self.run_at, self.id = None, 0


@dataclass
class Ledger:
    """The outcomes of one batch, written in a few statements before its commit."""

    done: list[int] = field(default_factory=list)  # job ids to delete
    confirms: list[int] = field(default_factory=list)  # subscriber ids
    deliveries: list[tuple[int, int]] = field(default_factory=list)  # (campaign, subscriber)
    retries: list[tuple[int, float, str]] = field(default_factory=list)  # (job, delay, error)
    sent: Counter[int] = field(default_factory=Counter)  # per campaign
    failed: Counter[int] = field(default_factory=Counter)
    held: list[tuple[asyncpg.Record, str]] = field(default_factory=list)  # (job, status)
    refusals: list[tuple[int, str, str]] = field(default_factory=list)  # (campaign, cat, code)
    outcomes: list[Outcome] = field(default_factory=list)  # for the circuit breaker
    attempted: int = 0  # emails handed to the relay (tokens used: service/outbox/send_rate.py)

    async def write(self, con: asyncpg.Connection, holder: str) -> None:
        if self.done:
            await q.delete_jobs.execute(con, ids=self.done)
        if self.retries:
            ids, delays, errors = zip(*self.retries, strict=True)
            await q.retry_jobs_later.execute(
                con, ids=list(ids), delays=list(delays), errors=list(errors)
            )
        if self.confirms:
            await q.mark_confirms_sent.execute(con, subscriber_ids=self.confirms)
        if self.deliveries:
            campaign_ids, subscriber_ids = zip(*self.deliveries, strict=True)
            await q.mark_deliveries_sent.execute(
                con, campaign_ids=list(campaign_ids), subscriber_ids=list(subscriber_ids)
            )
        if self.refusals:
            await _write_refusals(con, self.refusals)
        if self.held:
            await breaker_q.hold_refusals.execute(
                con,
                subscriber_ids=[job["subscriber_id"] for job, _ in self.held],
                campaign_ids=[job["campaign_id"] or 0 for job, _ in self.held],
                kinds=[job["kind"] for job, _ in self.held],
                reasons=[status for _, status in self.held],
                holder=holder,
            )
        campaigns = sorted(set(self.sent) | set(self.failed))  # one lock order for all lanes
        if campaigns:
            await q.count_campaigns.execute(
                con,
                ids=campaigns,
                sent=[self.sent[c] for c in campaigns],
                failed=[self.failed[c] for c in campaigns],
            )


async def _write_refusals(con: asyncpg.Connection, refusals: list[tuple[int, str, str]]) -> None:
    campaign_ids, categories, codes = zip(*refusals, strict=True)
    await breaker_q.count_refusals.execute(
        con, campaign_ids=list(campaign_ids), categories=list(categories), codes=list(codes)
    )


class Worker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        metrics: Metrics,
        context: messages.MailContext,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self.context = context
        # One SMTP connection per lane; lanes send in parallel (OUTBOX_CONCURRENCY), each
        # batch in its own transaction, so a slow relay round trip does not serialise a send.
        self.mailers = [Mailer(settings) for _ in range(settings.outbox_concurrency)]
        self.signer = dkim.signer(
            settings.dkim_private_key_file, settings.dkim_selector, settings.dkim_domain
        )
        self.wakeup = Wakeup(settings, CHANNEL, "outbox")
        self._stopping = False
        self._resume: dict[Mailer, Resume] = {}  # one per lane
        self.breaker = Breaker(pool, settings, metrics)
        self.bucket = Bucket.of(settings)  # None: no cap, nothing to ask
        self._capped_for: dict[Mailer, float] = {}  # a capped lane's wait

    # -- loop ----------------------------------------------------------------------
    async def run(self) -> None:
        await asyncio.gather(*(self._lane(i, mailer) for i, mailer in enumerate(self.mailers)))

    async def _lane(self, lane: int, mailer: Mailer) -> None:
        relay_failures = 0
        while not self._stopping:
            if lane == 0:
                await self.wakeup.listen()
            try:
                outcome = await self.process_batch(mailer)
            except DB_ERRORS as exc:
                log.warning("outbox database error", extra={"error": exc.__class__.__name__})
                await self.wakeup.sleep(self.settings.outbox_poll_interval)
                continue
            except Exception as exc:  # keep sending the other jobs; the class says what broke
                log.error("outbox worker error", extra={"error": exc.__class__.__name__})
                await self.wakeup.sleep(self.settings.outbox_poll_interval)
                continue
            if outcome in ("relay_down", "throttled"):  # the lane slows down, jobs keep attempts
                relay_failures += 1
                await self.wakeup.sleep(backoff(self.settings, relay_failures))
            elif outcome == "capped":  # SMTP_MAX_RATE and friends: wait for a token
                await self._wait_for_tokens(self._capped_for.get(mailer, 0.0))
            elif outcome == "idle":
                await mailer.close_if_idle()
                await self.wakeup.sleep(await self._idle_delay())
            else:
                relay_failures = 0
                # One NOTIFY wakes one lane; a lane that found work wakes the others, so a
                # queued campaign fans out to every lane without waiting for their poll.
                self.wakeup.set()

    async def _idle_delay(self) -> float:
        try:
            due_in = await q.next_due_in.fetchval(self.pool)
        except DB_ERRORS:
            due_in = None
        poll = self.settings.outbox_poll_interval
        return poll if due_in is None else min(poll, max(due_in, 0.0))

    async def _wait_for_tokens(self, seconds: float) -> None:
        """Short waits are slept through (other lanes' wake-ups would only make the lane
        ask the bucket again); long ones (an hourly or daily cap) wake for a stop."""
        if seconds <= 1.0:
            await asyncio.sleep(max(seconds, 0.001))
        else:
            await self.wakeup.sleep(min(seconds, self.settings.outbox_poll_interval))

    async def stop(self) -> None:
        self._stopping = True
        self.wakeup.set()

    async def close(self) -> None:
        for mailer in self.mailers:
            await mailer.close()
        await self.wakeup.close()

    # -- one batch -----------------------------------------------------------------
    async def process_batch(self, mailer: Mailer | None = None) -> str:
        """Claims and handles up to OUTBOX_BATCH due jobs: 'idle' (none was due),
        'relay_down' (the relay could not be reached; the unsent jobs stay as they
        were) or 'done'."""
        mailer = mailer or self.mailers[0]
        limit = self.settings.outbox_batch
        if self.bucket is not None:
            limit, wait = await self.bucket.reserve(self.pool, limit)
            if limit == 0:
                self._capped_for[mailer] = wait
                return "capped"
        ledger = Ledger()
        try:
            return await self._batch(mailer, limit, ledger)
        finally:
            if self.bucket is not None:
                with contextlib.suppress(*DB_ERRORS):
                    await self.bucket.give_back(self.pool, limit - ledger.attempted)
            if ledger.outcomes:
                await self.breaker.observe(ledger.outcomes, held=bool(ledger.held))

    async def _batch(self, mailer: Mailer, limit: int, ledger: Ledger) -> str:
        async with self.pool.acquire() as con, con.transaction():
            jobs = await self._claim(con, mailer, limit)
            if not jobs:
                return "idle"
            built = await self._build(con, jobs)
            outcome = "done"
            for job in jobs:
                if self._stopping:  # shutting down: commit what went out, leave the rest
                    break
                email = built[job["id"]]
                if email is None:
                    ledger.done.append(job["id"])
                    log.info(
                        "email not needed any more",
                        extra={"job_id": job["id"], "kind": job["kind"]},
                    )
                    continue
                if isinstance(email, Exception):
                    log.error(
                        "email could not be built",
                        extra={
                            "job_id": job["id"],
                            "kind": job["kind"],
                            "error": email.__class__.__name__,
                        },
                    )
                    failure = Transient(None, f"compose {email.__class__.__name__}")
                    self._failed(job, failure, ledger)
                    continue
                # The VERP return path that names this email (MAIL_FROM's address without
                # BOUNCE_DOMAIN): service/bounces/send_hooks.py.
                sender = send_hooks.envelope_sender(
                    self.settings,
                    self.context.tokens,
                    job,
                    KINDS[job["kind"]].to_address_on_file,
                )
                ledger.attempted += 1
                try:
                    await mailer.send(sender, list(email.recipients), email.data, email.smtputf8)
                except RelayUnavailable as failure:
                    log.warning("smtp relay unavailable", extra={"reason": failure.reason})
                    ledger.attempted -= 1
                    outcome = "relay_down"
                    break
                except SmtpFailure as failure:
                    if self._refused(job, failure, ledger):
                        outcome = "throttled"
                        break
                except Exception as exc:  # unforeseen: keep the batch's sends recorded
                    log.error("email send failed", extra={"error": exc.__class__.__name__})
                    await mailer.close()
                    self._failed(job, Transient(None, exc.__class__.__name__), ledger)
                else:
                    self._sent(job, ledger)
            await ledger.write(con, self.breaker.holder)
            return outcome

    async def _claim(
        self, con: asyncpg.Connection, mailer: Mailer, limit: int
    ) -> list[asyncpg.Record]:
        """Up to `limit` due jobs: those a person waits for first, then campaign jobs
        from where this lane's previous claim ended (Resume)."""
        jobs = await q.claim_urgent.fetch(con, limit=limit)
        if len(jobs) == limit:
            return jobs
        resume = self._resume.setdefault(mailer, Resume())
        if resume.run_at is not None and time.monotonic() - resume.since > RESUME_FOR_S:
            resume.restart()
        claimed: list[int] = []
        while True:
            from_head, wanted = resume.run_at is None, limit - len(jobs)
            found = await q.claim_campaign.fetch(
                con, limit=wanted, after_run_at=resume.run_at, after_id=resume.id, claimed=claimed
            )
            jobs += found
            if len(found) == wanted:
                if from_head:
                    resume.since = time.monotonic()
                resume.run_at, resume.id = found[-1]["run_at"], found[-1]["id"]
                return jobs
            resume.restart()  # the queue ran out after the bound (or at all)
            if from_head:
                return jobs
            claimed += [job["id"] for job in found]  # the head may hold released jobs

    async def _build(
        self, con: asyncpg.Connection, jobs: list[asyncpg.Record]
    ) -> dict[int, OutgoingEmail | Exception | None]:
        """Every job's email (signed when DKIM is on), None, or why it could not be built."""
        built: dict[int, OutgoingEmail | Exception | None] = {}
        by_kind: dict[str, list[asyncpg.Record]] = {}
        for job in jobs:
            by_kind.setdefault(job["kind"], []).append(job)
        for kind, group in by_kind.items():
            batch = KINDS[kind].compose_batch if kind in KINDS else None
            if batch is not None:
                try:
                    async with con.transaction():  # a savepoint: a failing query keeps the claims
                        built.update(await batch(con, group, self.context))
                except Exception as exc:
                    if connections.is_unavailable(exc):  # the connection is gone: the batch is too
                        raise
                    built.update((job["id"], exc) for job in group)
                continue
            for job in group:
                built[job["id"]] = await self._compose_one(con, job)
        if self.signer is not None:
            ready = {i: e for i, e in built.items() if isinstance(e, OutgoingEmail)}
            # OpenSSL releases the GIL: the batch is signed in a thread, beside the loop.
            built.update(await asyncio.to_thread(self._sign_all, ready))
        return built

    async def _compose_one(
        self, con: asyncpg.Connection, job: asyncpg.Record
    ) -> OutgoingEmail | Exception | None:
        kind = KINDS.get(job["kind"])
        composer = kind.compose if kind is not None else None
        try:
            if composer is None:
                raise LookupError(f"no composer for {job['kind']}")
            async with con.transaction():  # a savepoint: a failing composer keeps the claim
                message = await composer(con, job, self.context)
            if message is None or isinstance(message, OutgoingEmail):
                return message
            return messages.outgoing(message)
        except Exception as exc:  # one broken job must not stop the queue
            if connections.is_unavailable(exc):  # but a lost connection is not a broken job
                raise
            return exc

    def _sign_all(
        self, ready: dict[int, OutgoingEmail]
    ) -> dict[int, OutgoingEmail | Exception | None]:
        assert self.signer is not None
        signed: dict[int, OutgoingEmail | Exception | None] = {}
        for job_id, email in ready.items():
            try:
                signed[job_id] = replace(email, data=self.signer.sign(email.data))
            except Exception as exc:
                signed[job_id] = exc
        return signed

    def _sent(self, job: asyncpg.Record, ledger: Ledger) -> None:
        ledger.done.append(job["id"])
        records = KINDS[job["kind"]].records
        if records == CONFIRM_SENT:
            ledger.confirms.append(job["subscriber_id"])
        elif records == DELIVERY:
            ledger.deliveries.append((job["campaign_id"], job["subscriber_id"]))
            ledger.sent[job["campaign_id"]] += 1
        ledger.outcomes.append((None, job["campaign_id"]))
        self.metrics.emails_sent.labels(job["kind"]).inc()
        log.debug("email sent", extra={"job_id": job["id"], "kind": job["kind"]})

    def _refused(self, job: asyncpg.Record, failure: SmtpFailure, ledger: Ledger) -> bool:
        """The relay did not take the email: the one place where its answer is acted on
        (service/bounces/send_hooks.py). True when it was a throttle: the lane stops
        the batch and slows down, the job keeps its attempts and waits for the next
        claim. A refusal of the recipient's mailbox is held for the circuit breaker
        (service/outbox/breaker.py); any other answer retries the job, or drops it when the
        failure is ours (an address or extension the relay cannot take)."""
        refusal = send_hooks.classify(failure)
        if refusal.category != send_hooks.CONNECTION:
            self.metrics.send_refusals.labels(refusal.category).inc()
            ledger.outcomes.append((refusal.category, job["campaign_id"]))
            ledger.refusals.append((job["campaign_id"] or 0, refusal.category, refusal.code))
        fields = {**_fields(job, failure), "category": refusal.category}
        if refusal.throttle:
            self.metrics.emails_failed.labels(job["kind"], "throttled").inc()
            log.info("email throttled", extra=fields)
            return True
        if refusal.hard and KINDS[job["kind"]].to_address_on_file:
            ledger.done.append(job["id"])  # a trip of the breaker queues it again
            ledger.held.append((job, refusal.code.split()[-1]))
            self.metrics.emails_failed.labels(job["kind"], "held").inc()
            log.info("email refused: mailbox refusal held", extra=fields)
            return False
        if isinstance(failure, Permanent) and failure.code is None:
            self._drop(job, failure, ledger, "rejected")
            return False
        self._failed(job, failure, ledger, refusal.category)
        return False

    def _failed(
        self, job: asyncpg.Record, failure: SmtpFailure, ledger: Ledger, category: str = ""
    ) -> None:
        attempts = job["attempts"] + 1
        if attempts >= self.settings.outbox_max_attempts:
            self._drop(job, failure, ledger, "gave_up")
            return
        delay = backoff(self.settings, attempts)
        ledger.retries.append((job["id"], delay, failure.reason[:200]))
        self.metrics.emails_failed.labels(job["kind"], "retried").inc()
        log.info(
            "email deferred",
            extra={**_fields(job, failure), "delay_s": round(delay, 2), "category": category},
        )

    def _drop(
        self, job: asyncpg.Record, failure: SmtpFailure, ledger: Ledger, outcome: str
    ) -> None:
        ledger.done.append(job["id"])
        if job["campaign_id"] is not None:
            ledger.failed[job["campaign_id"]] += 1
        self.metrics.emails_failed.labels(job["kind"], outcome).inc()
        log.warning(f"email dropped ({outcome})", extra=_fields(job, failure))


def _fields(job: asyncpg.Record, failure: SmtpFailure) -> dict[str, object]:
    return {
        "job_id": job["id"],
        "kind": job["kind"],
        "campaign_id": job["campaign_id"],
        "attempts": job["attempts"] + 1,
        "smtp_code": failure.code,
        "reason": failure.reason,
    }


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[Worker | None]:
    """Runs the worker for the app's lifetime; on exit it finishes the send in flight."""
    state = app.state
    if state.settings.outbox_concurrency == 0:  # `serve --no-worker`: another process sends
        app.state.outbox = None
        yield None
        return
    context = messages.MailContext(state.settings, state.tokens, state.templates)
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
