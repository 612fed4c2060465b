"""The guarantees of issue 6 with several real `serve` processes on one database.

Every test runs real uvicorn processes (tests.support.ServiceProcess) against one
migrated PostgreSQL database, and checks what each guarantee means from the outside:
what the SMTP relay received, what the HTTP clients were answered, what the tables and
each replica's /metrics say afterwards. Processes are stopped off the event loop (it
also runs the SMTP sink, which a stopping replica still talks to).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.cli import GRACEFUL_SHUTDOWN_S
from service.tracking.pixel import GIF
from tests import support
from tests.pixel_support import CHROME, pixel_path, seed

pytestmark = pytest.mark.slow

REPLICAS = 3
LANES = 4  # OUTBOX_CONCURRENCY: sending lanes of one replica
BATCH = 5  # OUTBOX_BATCH: jobs one lane claims and commits together
ADMIN = {"Authorization": f"Bearer {support.ADMIN_TOKEN}"}
CAMPAIGN = {
    "name": "Replica test",
    "subject": "Hello from every replica",
    "html": "<p>Hello</p>",
    "text": "Hello",
}


# -- helpers -------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def replicas(envs: list[dict[str, str]]) -> AsyncIterator[list[support.ServiceProcess]]:
    """Started together, ready together, always stopped (in threads: see module doc)."""
    processes = [support.ServiceProcess(env) for env in envs]
    try:
        for process in processes:
            process.start()
        await asyncio.gather(*(p.wait_ready(timeout=60, path="/readyz") for p in processes))
        yield processes
    finally:
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in processes))


async def until(check: Callable[[], Awaitable[object]], what: str, timeout: float = 20.0) -> object:
    """Polls `check` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def counter(process: support.ServiceProcess, name: str) -> dict[str, float]:
    """A counter of one replica's /metrics by label set (`what=opens` or `kind=campaign`)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(process.url + "/metrics", timeout=5)).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name + "_total":
                key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[key] = sample.value
    return values


def log_events(output: str) -> list[str]:
    """The `event` of each JSON log line a process wrote."""
    events = []
    for line in output.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and "event" in entry:
                events.append(entry["event"])
    return events


async def create_and_send(base_url: str) -> tuple[int, int]:
    """Creates a campaign through one replica's admin API and sends it: (id, queued)."""
    async with httpx.AsyncClient(base_url=base_url, headers=ADMIN, timeout=30) as client:
        created = await client.post("/admin/api/campaigns", json=CAMPAIGN)
        assert created.status_code == 201, created.text
        campaign_id = created.json()["id"]
        sent = await client.post(f"/admin/api/campaigns/{campaign_id}/send")
        assert sent.status_code == 202, sent.text
        return campaign_id, sent.json()["queued"]


async def active_subscribers(db: asyncpg.Connection, count: int) -> set[str]:
    rows = await db.fetch(
        """INSERT INTO subscribers (email, status, confirmed_at)
           SELECT 'r' || g || '@example.com', 'active', now() FROM generate_series(1, $1) g
           RETURNING email""",
        count,
    )
    return {row["email"] for row in rows}


async def send_finished(db: asyncpg.Connection, campaign_id: int, count: int) -> bool:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM outbox) AS queued, sent, failed FROM campaigns WHERE id = $1",
        campaign_id,
    )
    return row["queued"] == 0 and row["sent"] + row["failed"] >= count


# -- the outbox ------------------------------------------------------------------------
async def test_three_replicas_send_each_campaign_email_exactly_once(
    database_url: str, smtp: support.SmtpSink, db: asyncpg.Connection
) -> None:
    n = 300
    addresses = await active_subscribers(db, n)
    env = support.base_env(database_url, smtp.url, OUTBOX_POLL_INTERVAL="0.2s")
    async with replicas([env] * REPLICAS) as processes:
        campaign_id, queued = await create_and_send(processes[0].url)
        assert queued == n
        await smtp.wait_for(n, timeout=30)
        await until(lambda: send_finished(db, campaign_id, n), "the outbox to drain")
        per_replica = [(await counter(p, "emails_sent")).get("kind=campaign", 0) for p in processes]

    received = Counter(m.to for m in smtp.messages)
    assert set(received) == addresses
    assert max(received.values()) == 1, [a for a, c in received.items() if c > 1]
    assert len(smtp.messages) == n
    row = await db.fetchrow("SELECT sent, failed FROM campaigns WHERE id = $1", campaign_id)
    assert (row["sent"], row["failed"]) == (n, 0)
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE sent_at IS NULL") == 0
    # Each replica counts what it handed to SMTP: together exactly n, shared out.
    assert sum(per_replica) == n
    assert sum(1 for count in per_replica if count) >= 2, per_replica


async def test_campaign_survives_a_replica_killed_mid_send_with_at_most_its_batches_twice(
    database_url: str, db: asyncpg.Connection
) -> None:
    """SIGKILL leaves no time for anything: the killed replica's claimed jobs are unlocked
    when PostgreSQL sees its connection die, and another replica sends them. Whatever the
    relay had accepted from it but the replica never committed is mailed twice: at most
    one batch (OUTBOX_BATCH) per sending lane (OUTBOX_CONCURRENCY) of the killed replica."""
    n = 150
    addresses = await active_subscribers(db, n)
    sink = support.SlowSmtpSink(delay=0.03)
    await sink.start()
    try:
        envs = [
            support.base_env(
                database_url,
                sink.url,
                OUTBOX_POLL_INTERVAL="0.2s",
                OUTBOX_CONCURRENCY=str(LANES),
                OUTBOX_BATCH=str(BATCH),
                MAIL_FROM=f"Replica {i} <news@newsletter.test>",
            )
            for i in range(REPLICAS)
        ]
        async with replicas(envs) as processes:
            victim = processes[1]

            def victim_mid_send() -> bool:
                return len(sink.messages) >= n // 5 and any(
                    "Replica 1" in str(m.message["From"]) for m in sink.held
                )

            campaign_id, _ = await create_and_send(processes[0].url)

            async def ready_to_kill() -> bool:
                return victim_mid_send()

            await until(ready_to_kill, "the victim replica to be in the middle of a send")
            victim.signal(signal.SIGKILL)
            assert await asyncio.to_thread(victim.wait, 10) == -signal.SIGKILL
            await until(lambda: send_finished(db, campaign_id, n), "the others to finish", 30)
            killed_mid_send = [
                m.to for m in sink.unacknowledged if "Replica 1" in m.message["From"]
            ]
    finally:
        await sink.stop()

    received = Counter(m.to for m in sink.messages)
    assert set(received) == addresses  # nobody lost
    duplicates = {address: count for address, count in received.items() if count > 1}
    # Each of the killed replica's sending lanes had at most one batch claimed: only
    # those jobs can be mailed twice, and each at most twice (the retry's send is committed).
    assert len(duplicates) <= LANES * BATCH and set(duplicates.values()) <= {2}, duplicates
    assert set(killed_mid_send) <= set(duplicates)
    for address in duplicates:
        first, second = (m for m in sink.messages if m.to == address)
        assert "Replica 1" in first.message["From"] and "Replica 1" not in second.message["From"]
    row = await db.fetchrow("SELECT sent, failed FROM campaigns WHERE id = $1", campaign_id)
    assert (row["sent"], row["failed"]) == (n, 0)  # each job committed once


# -- rate limits -------------------------------------------------------------------------
async def test_signup_rate_limit_per_ip_holds_across_replicas(
    database_url: str, smtp: support.SmtpSink, db: asyncpg.Connection
) -> None:
    limit, attempts = 5, 15
    env = support.base_env(
        database_url,
        smtp.url,
        FORWARDED_ALLOW_IPS="127.0.0.1",
        RATE_SIGNUP_PER_IP_HOUR=str(limit),
    )

    async def burst(processes: list[support.ServiceProcess], ip: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        processes[i % len(processes)].url + "/subscribe",
                        json={"email": f"limit{i}-{uuid.uuid4().hex[:8]}@example.com"},
                        headers={"X-Forwarded-For": ip},
                    )
                    for i in range(attempts)
                )
            )

    async with replicas([env] * REPLICAS) as processes:
        for attempt in range(2):  # a burst that straddles the hour boundary is redone
            ip = f"203.0.113.{10 + attempt}"
            hour = time.time() // 3600
            responses = await burst(processes, ip)
            if time.time() // 3600 == hour:
                break
        fresh = await burst(processes[:1] * 3, "203.0.113.99")

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {202: limit, 429: attempts - limit}, statuses
    for response in responses:
        if response.status_code == 429:
            assert 1 <= int(response.headers["Retry-After"]) <= 3600
    # Every replica refused some: the count is shared, not per process.
    refused_by = {str(r.url).split("/subscribe")[0] for r in responses if r.status_code == 429}
    assert len(refused_by) >= 2
    assert (await db.fetchval("SELECT sum(hits) FROM rate_limits WHERE scope = 'ip'")) >= attempts
    # Another client is not limited by the first one's burst.
    assert Counter(r.status_code for r in fresh)[202] == limit


# -- retention ----------------------------------------------------------------------------
async def test_purge_runs_on_one_replica_and_counts_every_row_once(
    database_url: str, smtp: support.SmtpSink, db: asyncpg.Connection
) -> None:
    seeded = {"pending_signups": 30, "opens": 40, "deliveries": 20, "rate_limits": 25}
    await db.execute(
        """INSERT INTO subscribers (email, status, created_at, signup_at)
           SELECT 'old' || g || '@example.com', 'pending', now() - interval '10 days',
                  now() - interval '10 days'
           FROM generate_series(1, $1) g""",
        seeded["pending_signups"],
    )
    await db.execute(
        """INSERT INTO subscribers (email, status, confirmed_at)
           SELECT 'new' || g || '@example.com', 'pending', NULL FROM generate_series(1, 5) g"""
    )
    campaign_id = await db.fetchval(
        "INSERT INTO campaigns (name, subject, html, text) VALUES ('c', 's', 'h', 't') RETURNING id"
    )
    kept = await db.fetch(
        """INSERT INTO subscribers (email, status, confirmed_at)
           SELECT 'kept' || g || '@example.com', 'active', now() FROM generate_series(1, $1) g
           RETURNING id""",
        seeded["deliveries"],
    )
    kept_ids = [row["id"] for row in kept]
    await db.execute(
        """INSERT INTO deliveries (campaign_id, subscriber_id, queued_at, sent_at)
           SELECT $1, s, now() - interval '400 days', now() - interval '400 days'
           FROM unnest($2::bigint[]) s""",
        campaign_id,
        kept_ids,
    )
    await db.execute(
        """INSERT INTO opens (subscriber_id, campaign_id, at)
           SELECT ($2::bigint[])[1 + g % cardinality($2::bigint[])], $1,
                  now() - interval '400 days'
           FROM generate_series(1, $3) g""",
        campaign_id,
        kept_ids,
        seeded["opens"],
    )
    await db.execute(
        "INSERT INTO opens (subscriber_id, campaign_id, at) VALUES ($1, $2, now())",
        kept_ids[0],
        campaign_id,
    )
    await db.execute(
        """INSERT INTO rate_limits (scope, key, window_start, hits)
           SELECT 'ip', decode(md5(g::text), 'hex'), now() - interval '3 days', 1
           FROM generate_series(1, $1) g""",
        seeded["rate_limits"],
    )
    env = support.base_env(database_url, smtp.url, PURGE_INTERVAL="1s")

    async def purged(processes: list[support.ServiceProcess]) -> list[dict[str, float]]:
        return [await counter(p, "purged_rows") for p in processes]

    async with replicas([env] * REPLICAS) as processes:

        async def all_counted() -> list[dict[str, float]] | None:
            per_replica = await purged(processes)
            total = sum(sum(values.values()) for values in per_replica)
            return per_replica if total >= sum(seeded.values()) else None

        await until(all_counted, "the purge to run and be counted", 20)

        async def every_replica_ran_a_pass() -> bool:
            return all(log_events(p.output()).count("purge done") >= 1 for p in processes)

        # The others' passes ran too, and found nothing left to count.
        await until(every_replica_ran_a_pass, "a purge pass on every replica", 10)
        per_replica = await purged(processes)

    summed = Counter[str]()
    for values in per_replica:
        for labels, value in values.items():
            summed[labels.removeprefix("what=")] += int(value)
    assert +summed == seeded
    # One pass (one replica, under the advisory lock) found every row; the rest found none.
    assert sum(1 for values in per_replica if sum(values.values())) == 1, per_replica
    left = await db.fetchrow(
        """SELECT (SELECT count(*) FROM subscribers WHERE status = 'pending') AS pending,
                  (SELECT count(*) FROM opens) AS opens,
                  (SELECT count(*) FROM deliveries) AS deliveries,
                  (SELECT count(*) FROM rate_limits) AS rate_limits"""
    )
    assert dict(left) == {"pending": 5, "opens": 1, "deliveries": 0, "rate_limits": 0}


# -- graceful shutdown ----------------------------------------------------------------------
async def test_sigterm_completes_pixel_requests_in_flight_records_them_and_exits_in_time(
    database_url: str, smtp: support.SmtpSink, db: asyncpg.Connection
) -> None:
    """tests/tracking/test_pixel.py covers the flush of opens answered before SIGTERM; this one
    holds requests in flight across it. A lock on `opens` keeps the recorder's commit
    (and so, in PIXEL_MODE=wait, the answers) waiting while the signal arrives."""
    campaign_id, subscriber_ids = await seed(db, 50)
    service = support.ServiceProcess(
        support.base_env(database_url, smtp.url, TRACKING_MODE="notice", PIXEL_WAIT_MAX="30s")
    ).start()
    lock = await asyncpg.connect(database_url)
    locked = lock.transaction()
    answered_before = 0
    in_flight: list[asyncio.Task[httpx.Response]] = []
    try:
        await service.wait_ready()
        limits = httpx.Limits(max_connections=len(subscriber_ids) + 10)
        async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=60) as client:
            for _ in range(2):  # the process under load before the signal
                responses = await asyncio.gather(
                    *(client.get(pixel_path(sid, campaign_id)) for sid in subscriber_ids)
                )
                answered_before += sum(r.status_code == 200 for r in responses)

            await locked.start()
            await lock.execute("LOCK TABLE opens IN EXCLUSIVE MODE")
            sent = 0

            async def trace(event: str, info: dict) -> None:
                nonlocal sent
                if event == "http11.receive_response_headers.started":
                    sent += 1  # the whole request is on the wire

            in_flight = [
                asyncio.create_task(
                    client.get(
                        pixel_path(sid, campaign_id),
                        headers={"User-Agent": CHROME},
                        extensions={"trace": trace},
                    )
                )
                for sid in subscriber_ids
            ]

            async def requests_held() -> bool:
                blocked = await db.fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event_type = 'Lock'"""
                )
                return sent == len(in_flight) and blocked >= 1

            await until(requests_held, "the pixel requests to be held by the lock", 10)
            # A request on a new connection is answered only after the server has read
            # the earlier ones, which were already in its socket buffers.
            async with httpx.AsyncClient() as probe:
                assert (await probe.get(service.url + "/healthz")).status_code == 200

            service.signal(signal.SIGTERM)

            async def refusing_connections() -> bool:
                try:
                    async with httpx.AsyncClient() as probe:
                        await probe.get(service.url + "/healthz", timeout=1)
                except httpx.TransportError:  # refused, or closed unanswered
                    return True
                return False

            await until(refusing_connections, "new connections to go unserved after SIGTERM", 10)
            # Still in flight, not cut; if not, say how each finished early.
            early = [
                repr(t.exception()) if t.exception() else t.result().status_code
                for t in in_flight
                if t.done()
            ]
            assert not early, (
                f"{len(early)} requests finished before the lock was released: {early[:5]}"
            )
            await locked.rollback()
            responses = await asyncio.gather(*in_flight)
        code = await asyncio.to_thread(service.wait, GRACEFUL_SHUTDOWN_S + 5)
    finally:
        for task in in_flight:
            task.cancel()
        with contextlib.suppress(Exception):
            await locked.rollback()
        await lock.close()
        await asyncio.to_thread(service.stop)

    assert all(r.status_code == 200 and r.content == GIF for r in responses)
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its shutdown
    # Finished within the graceful period: uvicorn did not have to cancel anything.
    assert "timeout graceful shutdown exceeded" not in service.output()
    answered = answered_before + len(responses)
    assert answered == 3 * len(subscriber_ids)
    assert await db.fetchval("SELECT count(*) FROM opens") == answered
    total = await db.fetchval("SELECT opens FROM campaign_counts WHERE dimension = 'total'")
    assert total == answered
    assert "Application shutdown complete." in service.output()


# -- failover -------------------------------------------------------------------------------
class Load:
    """Pixel fetches and sign-ups in a loop, with every answer kept by phase."""

    def __init__(self, base_url: str, pixel_paths: list[str]) -> None:
        self.base_url = base_url
        self.pixel_paths = pixel_paths
        self.phase = "before"
        self.pixel: list[tuple[str, int, bool]] = []  # (phase, status, body is the GIF)
        self.signups: list[tuple[str, int, str | None]] = []  # (phase, status, Retry-After)
        self.errors: list[str] = []
        self._stop = False
        self._tasks: list[asyncio.Task[None]] = []

    async def _pixels(self, client: httpx.AsyncClient, offset: int) -> None:
        i = offset
        while not self._stop:
            phase = self.phase
            path = self.pixel_paths[i % len(self.pixel_paths)]
            i += 1
            try:
                response = await client.get(path, headers={"User-Agent": CHROME})
            except httpx.HTTPError as exc:
                self.errors.append(f"pixel {exc.__class__.__name__}")
                continue
            self.pixel.append((phase, response.status_code, response.content == GIF))
            await asyncio.sleep(0.01)

    async def _signups(self, client: httpx.AsyncClient) -> None:
        while not self._stop:
            phase = self.phase
            email = f"fo-{uuid.uuid4().hex[:12]}@example.com"
            try:
                response = await client.post("/subscribe", json={"email": email})
            except httpx.HTTPError as exc:
                self.errors.append(f"signup {exc.__class__.__name__}")
                continue
            self.signups.append((phase, response.status_code, response.headers.get("Retry-After")))
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> Load:
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=30)
        self._tasks = [asyncio.create_task(self._pixels(self._client, k)) for k in range(3)]
        self._tasks.append(asyncio.create_task(self._signups(self._client)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    def signup_statuses(self, phase: str) -> list[int]:
        return [status for p, status, _ in self.signups if p == phase]

    def pixel_answers(self, phase: str) -> int:
        return sum(1 for p, *_ in self.pixel if p == phase)


async def test_database_restart_under_load_signup_503_pixel_answers_and_all_recovers(
    tmp_path, smtp: support.SmtpSink
) -> None:
    """A PostgreSQL server of the test's own, stopped and started under the running
    process (`pg_ctl stop -m fast`, as a failover or restart cuts every connection)."""
    import pgserver
    from pgserver._commands import pg_ctl

    from service.db import migrations

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="delete")
    service: support.ServiceProcess | None = None
    try:
        url = server.get_uri()
        con = await asyncpg.connect(url)
        try:
            await migrations.migrate(con)
            campaign_id, subscriber_ids = await seed(con, 40)
        finally:
            await con.close()
        env = support.base_env(
            url,
            smtp.url,
            TRACKING_MODE="notice",
            PIXEL_WAIT_MAX="0.5s",
            RATE_SIGNUP_PER_IP_HOUR="1000000",
            OUTBOX_POLL_INTERVAL="0.5s",
        )
        service = support.ServiceProcess(env).start()
        await service.wait_ready(path="/readyz")
        pid = service.proc.pid  # type: ignore[union-attr]
        paths = [pixel_path(sid, campaign_id) for sid in subscriber_ids[:-1]]

        async def readiness() -> int:
            async with httpx.AsyncClient() as client:
                return (await client.get(service.url + "/readyz", timeout=5)).status_code

        async with Load(service.url, paths) as load:
            await until(
                lambda: _true(load.signup_statuses("before") and load.pixel_answers("before")),
                "load before the outage",
            )
            await asyncio.to_thread(
                pg_ctl, ["-m", "fast", "-w", "stop"], pgdata=server.pgdata, user=server.system_user
            )
            load.phase = "outage"
            await until(
                lambda: _true(503 in load.signup_statuses("outage")), "a 503 during the outage"
            )
            await until(lambda: _true(load.pixel_answers("outage") >= 20), "pixel answers")
            assert await readiness() == 503

            await asyncio.to_thread(server.ensure_postgres_running)
            load.phase = "after"

            async def recovered() -> bool:
                return 202 in load.signup_statuses("after") and await readiness() == 200

            await until(recovered, "sign-ups and readiness to recover", 30)
            await until(lambda: _true(load.pixel_answers("after") >= 20), "pixel after restart")

        # An open made now, on its own, is recorded: the recorder writes again.
        last = subscriber_ids[-1]
        async with httpx.AsyncClient(base_url=service.url) as client:
            assert (await client.get(pixel_path(last, campaign_id))).content == GIF
        con = await asyncpg.connect(url)
        try:

            async def recorded_again() -> bool:
                return (
                    await con.fetchval("SELECT count(*) FROM opens WHERE subscriber_id = $1", last)
                    == 1
                )

            await until(recorded_again, "the open after the restart to be recorded")
            recorded = await con.fetchval("SELECT count(*) FROM opens")
        finally:
            await con.close()
        assert service.proc.poll() is None and service.proc.pid == pid  # never restarted
    finally:
        if service is not None:
            await asyncio.to_thread(service.stop)
        server.cleanup()

    assert not load.errors, Counter(load.errors)
    assert all(status == 200 and gif for _, status, gif in load.pixel), Counter(load.pixel)
    outage = [(status, retry) for phase, status, retry in load.signups if phase == "outage"]
    assert {status for status, _ in outage} <= {202, 503}
    assert all(retry and int(retry) > 0 for status, retry in outage if status == 503)
    # A request started just before the stop may be cut by it: 503 is the only other answer.
    assert 202 in load.signup_statuses("before")
    assert {status for _, status, _ in load.signups} <= {202, 503}
    assert load.signup_statuses("after")[-1] == 202
    # Opens answered while the database was away were retried and written after it.
    assert recorded >= len(load.pixel) + 1, (recorded, len(load.pixel))


async def _true(value: object) -> bool:
    return bool(value)
