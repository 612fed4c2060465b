"""The send circuit breaker: a relay refusing a share of the recent sends pauses the
campaigns concerned before anyone is erased, until the operator resumes or cancels.

Each worker process judges its most recent sends (SEND_BREAKER_WINDOW, all its lanes):
once at least SEND_BREAKER_MIN_SENDS are in, refusals of one category (sender, policy,
throttle, mailbox, ...: service/bounces/send_hooks.py) reaching SEND_BREAKER_SHARE of
them trip it. Tripping pauses every campaign that had such refusals in the window: the
pause is a row in PostgreSQL (`campaigns.paused_at`) and its jobs wait with run_at =
infinity, so no process of the deployment claims them; the mailbox refusals held from
that burst are not applied but queued again. The process that pauses a campaign logs it
(once) and counts it; `/metrics` shows the paused campaigns per reason.

Mailbox refusals (the only ones that erase) are held meanwhile (`held_refusals`), and
applied once the window is judged and is not a burst of them. A process that stops
before judging leaves its held refusals to the others after ten minutes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable

import asyncpg

from service.bounces import parse, send_hooks
from service.db.queries import queries
from service.observability import Metrics
from service.settings import Settings

log = logging.getLogger("newsletter.breaker")
q = queries("breaker")
campaigns_q = queries("campaigns")

# Held refusals left by a process that ended are looked for at least this often.
SWEEP_EVERY_S = 60.0

Outcome = tuple[str | None, int | None]  # (refusal category or None if sent, campaign)


async def pause(con: asyncpg.Connection, campaign_id: int, reason: str) -> bool:
    """Pauses a campaign (True) unless it already is or does not exist (False)."""
    async with con.transaction():
        await q.lock_campaign.execute(con, id=campaign_id)
        if await q.pause_campaign.fetchval(con, id=campaign_id, reason=reason) is None:
            return False
        await q.park_campaign_jobs.execute(con, id=campaign_id)
        await q.requeue_held.fetchval(con, id=campaign_id)
        return True


async def resume(con: asyncpg.Connection, campaign_id: int) -> int | None:
    """Resumes a paused campaign: its waiting emails (how many) are due again; None
    when it was not paused."""
    async with con.transaction():
        await q.lock_campaign.execute(con, id=campaign_id)
        if await q.resume_campaign.fetchval(con, id=campaign_id) is None:
            return None
        resumed = await q.unpark_campaign_jobs.fetchval(con, id=campaign_id)
        await campaigns_q.notify_outbox.execute(con)
        return resumed


async def cancel(con: asyncpg.Connection, campaign_id: int) -> int:
    """Drops a campaign's emails not sent yet (paused or not); how many."""
    async with con.transaction():
        await q.lock_campaign.execute(con, id=campaign_id)
        dropped = await q.cancel_campaign_jobs.fetchval(con, id=campaign_id)
        await q.drop_held_of_campaign.execute(con, id=campaign_id)
        return dropped


class Breaker:
    """One worker process's view of its recent sends."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, metrics: Metrics) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self.holder = uuid.uuid4().hex  # this process, in held_refusals
        self.window: deque[Outcome] = deque(maxlen=settings.send_breaker_window)
        self.holding = False  # whether this process may have held refusals to judge
        self._swept_at = time.monotonic()
        self._warned: set[str] = set()  # categories logged for one-off emails

    def tripped(self) -> str | None:
        """The category whose refusals reached the share, if the window is judged."""
        if len(self.window) < self.settings.send_breaker_min_sends:
            return None
        counts = Counter(category for category, _ in self.window if category is not None)
        limit = self.settings.send_breaker_share * len(self.window)
        over = [(n, c) for c, n in counts.items() if n >= limit]
        return max(over)[1] if over else None

    async def observe(self, outcomes: Iterable[Outcome], held: bool) -> None:
        """After a batch's commit: its outcomes join the window, which trips the breaker
        or lets the held refusals through."""
        self.window.extend(outcomes)
        self.holding = self.holding or held
        category = self.tripped()
        if category is not None:
            await self._trip(category)
            return
        if len(self.window) >= self.settings.send_breaker_min_sends:
            self._warned.clear()
        if len(self.window) >= self.settings.send_breaker_min_sends and (
            self.holding or time.monotonic() - self._swept_at > SWEEP_EVERY_S
        ):
            await self._release()

    async def _trip(self, category: str) -> None:
        campaign_ids = sorted({c for k, c in self.window if k == category and c is not None})
        share = sum(1 for k, _ in self.window if k == category) / len(self.window)
        self.window.clear()  # a fresh window: the next sends are judged on their own
        async with self.pool.acquire() as con:
            for campaign_id in campaign_ids:
                if await pause(con, campaign_id, category):
                    self.metrics.campaign_pauses.labels(category).inc()
                    log.warning(
                        "campaign paused: the relay refuses too many sends",
                        extra={
                            "campaign_id": campaign_id,
                            "reason": category,
                            "share": round(share, 3),
                        },
                    )
            if category == parse.MAILBOX:
                await q.drop_held_one_off.execute(con, holder=self.holder)
        if not campaign_ids and category not in self._warned:  # said once, until healthy
            self._warned.add(category)
            log.warning(
                "the relay refuses too many one-off emails",
                extra={"reason": category, "share": round(share, 3)},
            )

    async def _release(self) -> None:
        async with self.pool.acquire() as con:
            rows = await q.release_held.fetch(con, holder=self.holder)
        self.holding, self._swept_at = False, time.monotonic()
        erased_from = []
        for row in rows:
            outcome = await send_hooks.apply_held(
                self.pool, self.settings, row["subscriber_id"], row["campaign_id"], row["reason"]
            )
            if outcome == "erased" and row["campaign_id"]:
                erased_from.append(row["campaign_id"])
        if erased_from:
            async with self.pool.acquire() as con:
                await q.count_released_failed.execute(con, ids=erased_from)
