"""Retention at scale (issue 31): the pass that deletes the oldest third of the opens,
before (one table, one transaction, `LIMIT 5000` batches by id) and now (monthly
partitions, keyset slices committed one by one), and the online migration between them.

For each size (BENCH_RETENTION_SIZES; by default 1 M, and 5 M too with `--big`, as
`make bench` runs it) and side (BENCH_RETENTION_SIDES, default "before,now,migration") it
starts a PostgreSQL of its own (pgserver, shared_buffers per BENCH_SHARED_BUFFERS), builds
the opens of 1 M subscribers over SPAN_DAYS in time order (generate_series, as the pixel
writes them) and measures, for the schema before (migrations up to 147) and now:

- the retention pass with OPEN_RETENTION = 2/3 of the span: seconds, WAL bytes
  (pg_current_wal_lsn before and after, a CHECKPOINT first, so full-page writes count),
  microseconds per deleted open;
- bytes per open: the table with its indexes (all partitions) over the rows;
- an erasure (service.privacy.erasure.erase_subscriber, which finds the person's opens
  in every partition): p50 and max in ms, WAL per erasure;
- the migration 148-151 of the table as it was: seconds per file, the lock each holds,
  and the longest an insert (one a 20 ms, on another connection) waited meanwhile;
- side `narrow` (not by default; the estimate made before sql/161 built the narrow rows,
  whose figures bench_scale's bytes per open now gives): heap bytes per open of the wide
  row against a narrower one (a lookup table of user agents, small codes, `inet`),
  user agents drawn from the 17,000 distinct strings of tests/data/user_agents.csv.gz,
  skewed (a few very common, a long tail) as a mailing list's clients are.
- side `deliveries` (not by default): the same pass over `n` deliveries of weekly
  campaigns (each campaign's rows queued by one statement, so they share one `queued_at`
  and a time slice cannot be narrower than a campaign): the oldest third, then the next
  week's pass, which deletes one campaign's rows, the steady state of a weekly list.

Run: `python -m bench bench_retention [--big]`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from service.db import migrations
from service.privacy import erasure, retention
from service.settings import Settings

SPAN_DAYS = 600
RETENTION_DAYS = 400  # the oldest third is past it
SUBSCRIBERS = 1_000_000
VICTIMS = 40
CHUNK = 500_000
AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Thunderbird/125.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.6367.82 Mobile Safari/537.36",
    "Mozilla/5.0",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17425; Pro)",
)
# The retention delete of the code before issue 31, run as it ran: one transaction.
BEFORE_DELETE = """
DELETE FROM opens
WHERE id IN (
    SELECT id FROM opens WHERE at < now() - make_interval(secs => $1) LIMIT 5000
)"""
LOAD = """
INSERT INTO opens (subscriber_id, campaign_id, at, ip, user_agent, client, os, country,
                   machine_reason)
SELECT 1 + (hashint8(n) & 2147483647) % $4, 1 + n * 100 / $3,
       now() - make_interval(secs => $5 * (1 - n::float8 / $3)),
       '198.51.' || (n % 200) || '.0', ($6::text[])[1 + n % 6],
       (ARRAY['apple_mail', 'gmail', 'outlook', 'thunderbird'])[1 + n % 4],
       (ARRAY['ios', 'windows', 'android', 'macos'])[1 + n % 4],
       (ARRAY['DE', 'FR', 'US', 'NL', NULL])[1 + n % 5],
       CASE WHEN n % 7 = 0 THEN 'apple_mpp' END
FROM generate_series($1::bigint, $2::bigint) AS n
"""


def _settings(url: str) -> Settings:
    env = {"DATABASE_URL": url, "SMTP_URL": "smtp://127.0.0.1:25"}
    return Settings.from_env(env, required=("DATABASE_URL",)).replace(
        open_retention=RETENTION_DAYS * 86400.0
    )


async def _wal(con: asyncpg.Connection) -> int:
    return await con.fetchval("SELECT pg_current_wal_lsn()")


async def _wal_since(con: asyncpg.Connection, start: int) -> int:
    return int(await con.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", start))


async def _schema(con: asyncpg.Connection, before: bool, workdir: Path) -> None:
    if not before:
        await migrations.migrate(con)
        return
    directory = workdir / "sql-before"
    directory.mkdir(exist_ok=True)
    for migration in migrations.discover():
        if int(migration.name[:3]) < 148:
            (directory / migration.name).write_text(migration.sql)
    await migrations.migrate(con, directory)


async def _load(con: asyncpg.Connection, n: int, monthly: bool) -> None:
    if monthly:  # as a deployment that has run for the whole span: a partition per month
        await con.execute(
            "SELECT opens_ensure_month(m::date) FROM generate_series("
            " date_trunc('month', now() - make_interval(days => $1)),"
            " now(), interval '1 month') AS m",
            SPAN_DAYS + 31,
        )
    for first in range(1, n + 1, CHUNK):
        last = min(n, first + CHUNK - 1)
        await con.execute(LOAD, first, last, n, SUBSCRIBERS, SPAN_DAYS * 86400.0, list(AGENTS))
    await con.execute(
        "INSERT INTO subscribers (id, email, status) OVERRIDING SYSTEM VALUE"
        " SELECT v, 'victim' || v || '@example.org', 'active' FROM generate_series(1, $1) v",
        VICTIMS * 2,
    )
    await con.execute("SELECT setval(pg_get_serial_sequence('subscribers', 'id'), $1)", SUBSCRIBERS)
    await con.execute("VACUUM ANALYZE opens")


async def _bytes_per_open(con: asyncpg.Connection, n: int) -> int:
    size = await con.fetchval(
        "SELECT coalesce((SELECT sum(pg_total_relation_size(relid))"
        " FROM pg_partition_tree('opens') WHERE isleaf), pg_total_relation_size('opens'))"
    )
    return round(size / n)


async def _erasures(con: asyncpg.Connection, first: int) -> dict:
    times, wal = [], []
    for victim in range(first, first + VICTIMS):
        start, started = await _wal(con), time.perf_counter()
        await erasure.erase_subscriber(con, victim)
        times.append((time.perf_counter() - started) * 1000)
        wal.append(await _wal_since(con, start))
    return {
        "erasure_p50_ms": round(statistics.median(times), 1),
        "erasure_max_ms": round(max(times), 1),
        "erasure_wal_kb": round(statistics.median(wal) / 1024, 1),
    }


async def _pass(con: asyncpg.Connection, url: str, before: bool) -> tuple[int, float, int]:
    await con.execute("CHECKPOINT")
    start, started = await _wal(con), time.perf_counter()
    if before:
        deleted = 0
        async with con.transaction():
            while True:
                status = await con.execute(BEFORE_DELETE, RETENTION_DAYS * 86400.0)
                deleted += int(status.split()[-1])
                if int(status.split()[-1]) < 5000:
                    break
    else:
        deleted = (await retention.purge(con, _settings(url)))["opens"]
    return deleted, time.perf_counter() - started, await _wal_since(con, start)


def _pass_row(name: str, deleted: int, seconds: float, wal: int, **more: Any) -> dict:
    return {
        "bench": "retention",
        "name": name,
        "deleted": deleted,
        "pass_s": round(seconds, 2),
        "wal_mb": round(wal / 2**20, 1),
        "us_per_row": round(seconds / max(deleted, 1) * 1e6, 2),
        **more,
    }


def _row(side: str, n: int, deleted: int, seconds: float, wal: int, per_open: int) -> dict:
    return _pass_row(f"{side}, {n:,} opens", deleted, seconds, wal, bytes_per_open=per_open)


async def _side(url: str, n: int, side: str, workdir: Path) -> dict:
    before = side == "before"
    con = await asyncpg.connect(url, command_timeout=3600)
    try:
        await con.execute("SET TIME ZONE 'UTC'")
        await _schema(con, before, workdir)
        await _load(con, n, monthly=not before)
        per_open = await _bytes_per_open(con, n)
        erased = await _erasures(con, 1)
        deleted, seconds, wal = await _pass(con, url, before)
        row = _row(side, n, deleted, seconds, wal, per_open)
        return row | erased
    finally:
        await con.close()


async def _inserter(url: str, stop: asyncio.Event, waits: list[float]) -> None:
    con = await asyncpg.connect(url)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            await con.execute(
                "INSERT INTO opens (subscriber_id, campaign_id, at) VALUES (1, 1, now())"
            )
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)
    finally:
        await con.close()


LOCKS = {
    "148": "ACCESS EXCLUSIVE (no scan)",
    "149": "SHARE UPDATE EXCLUSIVE (scan)",
    "150": "SHARE UPDATE EXCLUSIVE (concurrent build)",
    "151": "ACCESS EXCLUSIVE (catalog only)",
}


async def _migration(url: str, n: int, workdir: Path) -> list[dict]:
    con = await asyncpg.connect(url, command_timeout=3600)
    rows = []
    try:
        await con.execute("SET TIME ZONE 'UTC'")
        await _schema(con, True, workdir)
        await _load(con, n, monthly=False)
        pending = [m for m in migrations.discover() if int(m.name[:3]) >= 148]
        for migration in pending:
            waits: list[float] = []
            stop = asyncio.Event()
            writer = asyncio.ensure_future(_inserter(url, stop, waits))
            await asyncio.sleep(0.2)
            started = time.perf_counter()
            await migrations.apply(con, migration)
            seconds = time.perf_counter() - started
            stop.set()
            await writer
            rows.append(
                {
                    "bench": "retention",
                    "name": f"migration {migration.name[:3]}, {n:,} opens",
                    "seconds": round(seconds, 2),
                    "lock": LOCKS.get(migration.name[:3], ""),
                    "longest_insert_ms": round(max(waits) * 1000, 1),
                }
            )
        per_open = await _bytes_per_open(con, n)  # the old heap keeps its dropped `id`
        deleted, seconds, wal = await _pass(con, url, False)
        rows.append(_row("now, after migrating", n, deleted, seconds, wal, per_open))
    finally:
        await con.close()
    return rows


UA_TABLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "user_agents.csv.gz"
WIDE = """CREATE TABLE wide (
    subscriber_id bigint NOT NULL, campaign_id bigint NOT NULL, at timestamptz NOT NULL,
    ip text, user_agent text, client text, os text, country text, machine_reason text)"""
# Eight-byte columns first, then four and two, the variable-length address last: no
# alignment padding between them.
NARROW = """CREATE TABLE narrow (
    at timestamptz NOT NULL, subscriber_id bigint NOT NULL, campaign_id bigint NOT NULL,
    agent_id integer, client smallint, os smallint, country smallint,
    machine_reason smallint, ip inet)"""


def _agents() -> list[str]:
    import csv
    import gzip

    with gzip.open(UA_TABLE, "rt", encoding="utf-8") as f:
        return sorted({row["user_agent"].strip("'") for row in csv.DictReader(f)})


async def _narrow(url: str, n: int) -> list[dict]:
    con = await asyncpg.connect(url, command_timeout=3600)
    try:
        await con.execute(WIDE)
        await con.execute(NARROW)
        await con.execute("CREATE TABLE agents (id integer PRIMARY KEY, user_agent text UNIQUE)")
        agents = _agents()
        await con.executemany(
            "INSERT INTO agents VALUES ($1, $2)", list(enumerate(agents, start=1))
        )
        # The agent of open n: a power of a uniform number, so a few are very common.
        pick = f"1 + floor({len(agents)} * power(random(), 4))::int"
        await con.execute(
            f"""INSERT INTO wide
                SELECT 1 + (hashint8(g) & 2147483647) % {SUBSCRIBERS}, 1 + g * 100 / $1,
                       now() - make_interval(secs => g), '198.51.' || (g % 200) || '.0',
                       a.user_agent,
                       (ARRAY['apple_mail', 'gmail', 'outlook', 'thunderbird'])[1 + g % 4],
                       (ARRAY['ios', 'windows', 'android', 'macos'])[1 + g % 4],
                       (ARRAY['DE', 'FR', 'US', 'NL', NULL])[1 + g % 5],
                       CASE WHEN g % 7 = 0 THEN 'apple_mpp' END
                FROM (SELECT g, {pick} AS agent FROM generate_series(1, $1) g) s
                JOIN agents a ON a.id = s.agent""",
            n,
        )
        await con.execute(
            """INSERT INTO narrow
               SELECT w.at, w.subscriber_id, w.campaign_id, a.id, 1 + (w.campaign_id % 4),
                      1 + (w.campaign_id % 4), NULLIF(w.campaign_id % 5, 0),
                      CASE WHEN w.machine_reason IS NOT NULL THEN 1 END, w.ip::inet
               FROM wide w JOIN agents a ON a.user_agent = w.user_agent"""
        )
        await con.execute("VACUUM ANALYZE wide, narrow, agents")
        used = await con.fetchval("SELECT count(DISTINCT user_agent) FROM wide")
        heap = {
            t: await con.fetchval("SELECT pg_relation_size($1::regclass)", t)
            for t in ("wide", "narrow")
        }
        lookup = await con.fetchval("SELECT pg_total_relation_size('agents')")
        return [
            {
                "bench": "retention",
                "name": f"heap bytes per open, {n:,} opens, {used:,} distinct user agents",
                "today": round(heap["wide"] / n),
                "narrow": round(heap["narrow"] / n),
                "narrow_with_lookup": round((heap["narrow"] + lookup) / n),
            }
        ]
    finally:
        await con.close()


async def _deliveries(url: str, n: int) -> list[dict]:
    """`n` deliveries of weekly campaigns over SPAN_DAYS, each campaign's rows queued by one
    statement (one `queued_at`, as the service queues them): the pass deleting the oldest
    third, then the next week's pass (one campaign: a weekly list's steady state)."""
    con = await asyncpg.connect(url, command_timeout=3600)
    try:
        await con.execute("SET TIME ZONE 'UTC'")
        await migrations.migrate(con)
        weeks = SPAN_DAYS // 7
        per = n // weeks
        await con.execute(
            "INSERT INTO subscribers (id, email, status) OVERRIDING SYSTEM VALUE"
            " SELECT v, 'd' || v || '@example.org', 'active' FROM generate_series(1, $1) v",
            per,
        )
        for week in range(weeks):
            campaign = await con.fetchval(
                """INSERT INTO campaigns (name, subject, html, text, first_sent_at)
                   VALUES ('w', 's', 'h', 't', now() - make_interval(days => $1))
                   RETURNING id""",
                SPAN_DAYS - 7 * week,
            )
            await con.execute(
                """INSERT INTO deliveries (campaign_id, subscriber_id, queued_at, sent_at)
                   SELECT c.id, s, c.first_sent_at, c.first_sent_at
                   FROM campaigns c, generate_series(1, $2) s WHERE c.id = $1""",
                campaign,
                per,
            )
        await con.execute("VACUUM ANALYZE deliveries")
        size = await con.fetchval("SELECT pg_total_relation_size('deliveries')")
        rows = []
        for name, days in (("oldest third", RETENTION_DAYS), ("a week later", RETENTION_DAYS - 7)):
            await con.execute("CHECKPOINT")
            start, started = await _wal(con), time.perf_counter()
            settings = _settings(url).replace(open_retention=days * 86400.0)
            deleted = (await retention.purge(con, settings))["deliveries"]
            seconds, wal = time.perf_counter() - started, await _wal_since(con, start)
            rows.append(
                _pass_row(
                    f"deliveries, {name}, {weeks * per:,} deliveries",
                    deleted,
                    seconds,
                    wal,
                    bytes_per_delivery=round(size / (weeks * per)),
                    rows_per_campaign=per,
                )
            )
        return rows
    finally:
        await con.close()


def main() -> list[dict]:
    import pgserver

    from bench.bench_pixel import _tune

    default = "1000000,5000000" if "--big" in sys.argv else "1000000"
    sizes = [int(s) for s in os.environ.get("BENCH_RETENTION_SIZES", default).split(",")]
    sides = os.environ.get("BENCH_RETENTION_SIDES", "before,now,migration").split(",")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        workdir = Path(tmp)
        server = pgserver.get_server(workdir / "pg", cleanup_mode="delete")
        try:
            rows.append({"bench": "retention", "name": "postgres", "shared_buffers": _tune(server)})
            base = server.get_uri()
            for n in sizes:
                for side in sides:
                    name = f"r_{side}_{n}"
                    server.psql(f"CREATE DATABASE {name};")
                    url = urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
                    if side == "migration":
                        found = asyncio.run(_migration(url, n, workdir))
                    elif side == "narrow":
                        found = asyncio.run(_narrow(url, n))
                    elif side == "deliveries":
                        found = asyncio.run(_deliveries(url, n))
                    else:
                        found = [asyncio.run(_side(url, n, side, workdir))]
                    for row in found:
                        print(row, flush=True)
                    rows += found
                    server.psql(f"DROP DATABASE {name};")
        finally:
            server.cleanup()
    return rows
