"""Group commit for pixel opens: one writer task per process, one statement per batch.

Requests append their event to the batch being collected and (in PIXEL_MODE=wait) await
that batch's future. The writer swaps the collected batch out, classifies it, writes it
with one `INSERT … SELECT FROM unnest(…)` statement (see `record_opens` in
`sql/queries/pixel.sql`) and resolves the future. While one batch is being written the
next one fills up, so under load a single commit carries hundreds of opens, and under
light load an open is written at once.

Why a list and one future per batch rather than an `asyncio.Queue` and one future per
request: the profile of the pixel under load showed per-request queue and future work as
the largest cost outside the HTTP server; a batch needs only one wake-up and one future.
The bound is the same: at most PIXEL_QUEUE_MAX events wait in memory; beyond it an open
is dropped and counted (`pixel_opens_dropped{reason="queue_full"}`).

Waiting is bounded without a timer per request: each batch's future also resolves
PIXEL_WAIT_MAX seconds after its first open joined it, so no request waits longer than
that, even while the database is down. The timer starts with the first open, not when the
batch is swapped in: a batch left empty through an idle spell longer than PIXEL_WAIT_MAX
would otherwise be resolved already and answer its first opens before their commit.

A batch that fails for a transient reason (connection lost, database restarting,
deadlock, no free pooled connection in time) is retried with backoff for up to RETRY_FOR
seconds, then dropped and counted (`reason="database"`). On shutdown the writer drains
everything collected before the pool closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
from starlette.applications import Starlette

from service import background
from service.db import connections, retry
from service.db.queries import queries
from service.observability import Metrics
from service.settings import Settings
from service.tracking import geo
from service.tracking.classify import Classifier, verdict
from service.web.clientinfo import canonical_ip, reduce_ip

log = logging.getLogger("newsletter.recorder")

_Facts = tuple[str | None, str | None, str | None]
RETRY_FOR = 30.0  # seconds a failing batch is retried before its opens are dropped
SHUTDOWN_FLUSH_MAX = 15.0
IP_CACHE_SIZE = 16384
IP_CACHE_SECONDS = 60.0  # the longest a full client address stays in the cache
# Ids of user-agent strings (sql/161) this process has learnt: forgotten whole when full
# and when the UTC month turns, so that every string in use gets its last_seen moved on.
AGENT_CACHE_SIZE = 20_000
_BACKOFF = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)

# A lost database (db.UNAVAILABLE, which includes asyncpg's "cannot switch to state …"
# after a restart: nothing was sent, so a fresh connection retries) or a lock conflict
# (the errors `retry.run` retries; here with the batch's own backoff, up to RETRY_FOR).
_RETRY_AT_ONCE = retry.RETRIED


class PoolBusy(Exception):
    """No pooled connection within DB_COMMAND_TIMEOUT: other work holds them all."""


# InterfaceError: the pool detached the writer's held connection when the server dropped it.
# PoolBusy: nothing was sent; the batch waits for a connection like for a lost database.
_TRANSIENT = (*connections.UNAVAILABLE, *_RETRY_AT_ONCE, asyncpg.InterfaceError, PoolBusy)


class BatchDone(asyncio.Future):
    """Resolves when a batch is committed (True) or PIXEL_WAIT_MAX after its first open
    joined (False).

    Shared by every request of the batch. A cancelled waiter must not cancel it for the
    others, and `asyncio.shield` per request showed up in the profile: refusing
    `cancel()` does the same for free (the cancelled task still gets its CancelledError
    once the batch resolves, which is bounded by PIXEL_WAIT_MAX).
    """

    def cancel(self, msg: object = None) -> bool:
        return False


@dataclass(slots=True)
class Open:
    """One pixel fetch as the request saw it; the IP is still the full address here."""

    subscriber_id: int | None  # None: a campaign-only pixel, nobody's open
    campaign_id: int
    at: float  # time.time()
    ip: str | None
    user_agent: str | None


class Recorder:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        metrics: Metrics,
        classifier: Classifier | None = None,
        retry_for: float | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self.classifier = classifier or Classifier.from_files(
            apple_ranges_file=settings.apple_proxy_ranges_file,
            scanner_ranges_file=settings.scanner_ranges_file,
        )
        self.country = geo.resolver(settings.geoip_mmdb)
        self.retry_for = RETRY_FOR if retry_for is None else retry_for
        # Proxies (Apple, Google, scanners) fetch from few addresses: worth a small cache,
        # but one that forgets: a full address is personal data kept only for its batch.
        self._ip_cache_seconds = IP_CACHE_SECONDS  # read here: a test shortens it
        self._ip_facts = ExpiringCache(
            self._ip_facts_uncached, self._ip_cache_seconds, IP_CACHE_SIZE
        )
        self._con: asyncpg.Connection | None = None
        self._agent_ids: dict[str, int] = {}
        self._label_ids: dict[str, int] = {}  # open_labels: a few hundred, never deleted
        self._agent_month = ""
        self.wait = settings.pixel_mode == "wait"
        self._query = queries("pixel").record_opens
        self._loop = asyncio.get_running_loop()
        self._pending: list[Open] = []
        self._done = self._new_future()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None

    # -- the request side ----------------------------------------------------------
    def submit(self, event: Open) -> BatchDone | None:
        """Add an open to the current batch; the batch's future, or None if dropped."""
        if len(self._pending) >= self.settings.pixel_queue_max:
            self.metrics.opens_dropped.labels("queue_full").inc()
            return None
        if not self._pending and self.wait:  # the batch's first open: its wait starts now
            self._loop.call_later(self.settings.pixel_wait_max, _resolve, self._done, False)
        self._pending.append(event)
        self._wakeup.set()
        return self._done

    # -- the writer ------------------------------------------------------------------
    def _new_future(self) -> BatchDone:
        return BatchDone(loop=self._loop)  # its PIXEL_WAIT_MAX timer starts in submit()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pixel-recorder")
        self._expire_later()

    def _expire_later(self) -> None:
        """Ages the IP cache out with or without traffic."""
        self._ip_facts.expire()
        if not self._closing:
            self._expiry = self._loop.call_later(self._ip_cache_seconds / 6, self._expire_later)

    async def stop(self, flush_max: float = SHUTDOWN_FLUSH_MAX) -> None:
        """Write everything collected so far, then end the writer."""
        self._closing = True
        self._wakeup.set()
        if self._expiry is not None:
            self._expiry.cancel()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), flush_max)
        except TimeoutError:
            await background.stop(self._task)
            lost = len(self._pending)
            if lost:
                self.metrics.opens_dropped.labels("shutdown").inc(lost)
            log.error("recorder flush timed out", extra={"dropped": lost})
        await self._release(broken=False)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            batch, done = self._pending, self._done
            self._pending, self._done = [], self._new_future()
            try:
                await self._write(batch)
            except Exception:  # never let the writer die; the opens are counted as lost
                log.exception("recorder batch failed", extra={"dropped": len(batch)})
                self.metrics.opens_dropped.labels("error").inc(len(batch))
            finally:
                _resolve(done, True)

    async def _write(self, batch: list[Open]) -> None:
        size = self.settings.pixel_batch_max
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            args = self._arguments(chunk)
            if await self._execute_with_retry(args, len(chunk)):
                self.metrics.pixel_batches.observe(len(chunk))

    def _arguments(self, chunk: list[Open]) -> dict[str, object]:
        """Classify, locate and reduce each open; personal fields stay in memory only."""
        user_agent, ip_facts = self.classifier.user_agent, self._ip_facts
        month = time.strftime("%Y-%m", time.gmtime())
        if month != self._agent_month or len(self._agent_ids) > AGENT_CACHE_SIZE:
            self._agent_ids, self._agent_month = {}, month
        agent_id, label_id = self._agent_ids.get, self._label_ids.get
        subscriber_ids, campaign_ids, ats, ips, user_agents = [], [], [], [], []
        user_agent_ids: list[int | None] = []
        client_ids, os_ids, country_ids, reason_ids = [], [], [], []
        clients, oses, countries, reasons = [], [], [], []
        for event in chunk:
            ua = user_agent(event.user_agent)
            reduced, country, network_reason = ip_facts(event.ip)
            found = verdict(ua, network_reason)
            subscriber_ids.append(event.subscriber_id)
            campaign_ids.append(event.campaign_id)
            ats.append(event.at)
            ips.append(reduced)
            user_agents.append(ua.text)
            user_agent_ids.append(agent_id(ua.text) if ua.text is not None else None)
            clients.append(found.client)
            oses.append(found.os)
            countries.append(country if found.country_known else None)
            reasons.append(found.machine_reason)
            client_ids.append(label_id(found.client))
            os_ids.append(label_id(found.os))
            country_ids.append(label_id(countries[-1]))
            reason_ids.append(label_id(found.machine_reason))
        return {
            "subscriber_ids": subscriber_ids,
            "campaign_ids": campaign_ids,
            "ats": ats,
            "ips": ips,
            "user_agents": user_agents,
            "user_agent_ids": user_agent_ids,
            "clients": clients,
            "client_ids": client_ids,
            "oses": oses,
            "os_ids": os_ids,
            "countries": countries,
            "country_ids": country_ids,
            "reasons": reasons,
            "reason_ids": reason_ids,
            "tracking_mode": self.settings.tracking_mode,
            "machine_window": self.settings.machine_open_window,
        }

    def _ip_facts_uncached(self, ip: str | None) -> _Facts:
        """(IP reduced per IP_MODE, country of the full IP, machine rule of the network)."""
        address = _address(ip)
        if address is None:
            return None, None, None
        return (
            reduce_ip(address, self.settings.ip_mode),
            self.country(address),
            self.classifier.network_reason(address),
        )

    async def _release(self, broken: bool) -> None:
        con, self._con = self._con, None
        if con is None:
            return
        # A connection the server dropped has already gone back to the pool (asyncpg
        # detaches it); terminating or releasing it again then fails, harmlessly.
        with contextlib.suppress(Exception):
            if broken:
                con.terminate()
            await self.pool.release(con)

    async def _execute_with_retry(self, args: dict[str, object], count: int) -> bool:
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                # The writer keeps one pooled connection (no acquire, release and reset
                # round trips per batch); one statement is its own transaction.
                if self._con is None:
                    # Bounded: a pool exhausted by other work must fail the batch into the
                    # retry path (and its metric), never stall the writer unseen.
                    # (A TimeoutError of the statement itself is not retried: the commit
                    # may have happened before the cancel, and a retry would count twice.)
                    try:
                        self._con = await self.pool.acquire(
                            timeout=self.settings.db_command_timeout
                        )
                    except TimeoutError as exc:
                        raise PoolBusy from exc
                row = await self._query.fetchrow(self._con, **args)
            except _TRANSIENT as exc:
                await self._release(broken=not isinstance(exc, _RETRY_AT_ONCE))
                waited = time.monotonic() - started
                if waited >= self.retry_for or (self._closing and waited >= 1.0):
                    self.metrics.opens_dropped.labels("database").inc(count)
                    log.error(
                        "recorder dropped a batch",
                        extra={"dropped": count, "error": exc.__class__.__name__},
                    )
                    return False
                delay = _BACKOFF[min(attempt, len(_BACKOFF) - 1)]
                attempt += 1
                if attempt == 1:
                    log.warning(
                        "recorder retrying a batch",
                        extra={"count": count, "error": exc.__class__.__name__},
                    )
                await asyncio.sleep(delay)
                continue
            assert row is not None
            personal, live = row["personal"], row["live"]
            self._agent_ids.update(zip(row["agents"], row["agent_ids"], strict=True))
            self._label_ids.update(zip(row["labels"], row["label_ids"], strict=True))
            if personal:
                self.metrics.opens_recorded.labels("personal").inc(personal)
            if live - personal:
                self.metrics.opens_recorded.labels("anonymous").inc(live - personal)
            return True


class ExpiringCache:
    """A memo of `compute` whose entries live at most `seconds`: two generations of at
    most `size` entries each; the young one is filled, the old one still answers (and its
    entries move back to the young one); every `seconds / 3`, or when the young one is
    full, the old one is dropped whole. A hit costs a clock read and a dict look-up. The
    recorder also calls `expire()` every `seconds / 6` from a timer, so entries age out
    with no traffic: an entry lives at most two generations and two timer periods."""

    def __init__(
        self,
        compute: Callable[[str | None], _Facts],
        seconds: float,
        size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._compute = compute
        self._clock = clock  # a test's own clock; never the process's time.monotonic patched
        self._span = seconds / 3
        self._size = size
        self._young: dict[str | None, _Facts] = {}
        self._old: dict[str | None, _Facts] = {}
        self._turn_at = clock() + self._span

    def expire(self) -> None:
        now = self._clock()
        if now >= self._turn_at or len(self._young) >= self._size:
            # A full period without a turn: the young generation is as old as the old one.
            self._old = {} if now >= self._turn_at + self._span else self._young
            self._young = {}
            self._turn_at = now + self._span

    def __call__(self, key: str | None) -> _Facts:
        self.expire()
        found = self._young.get(key)
        if found is None:
            found = self._old.pop(key, None)
            if found is None:
                found = self._compute(key)
            self._young[key] = found
        return found

    def keys(self) -> list[str | None]:
        return [*self._young, *self._old]


def _address(ip: str | None) -> str | None:
    """The address in canonical form (IPv4-mapped IPv6 as IPv4); None if it is not one."""
    address = canonical_ip(ip)
    return None if address is None else str(address)


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[Recorder]:
    """The app's recorder, for the lifespan: entered after the pool, flushed before it closes."""
    recorder = Recorder(app.state.pool, app.state.settings, app.state.metrics)
    app.state.recorder = recorder
    recorder.start()
    try:
        yield recorder
    finally:
        await recorder.stop()
