"""Scale: a year of opens for a list of a million, measured through the service's own code.

For each size of `opens` (`--scale-sizes=1M,5M,20M`, or BENCH_SCALE_SIZES; `make bench`
runs BENCH_SCALE_SIZES, default 1M, a few minutes; 20 M takes about a quarter of an hour
more on the 2-core bench machine, most of it loading the rows), with
BENCH_SCALE_SUBSCRIBERS (1 M) subscribers and a year of weekly campaigns
(bench/scale_data.py makes the data), on a PostgreSQL started with the parameters of
k8s/postgres/cluster.yaml:

- the retention pass deleting the oldest third (`newsletter purge` with OPEN_RETENTION
  set to the age of the oldest third): seconds, WAL, and the pixel's p50/p99 under wrk
  meanwhile, at PASS_RPS requests a second (a pace, not the ceiling). Each real pass is paired with a no-op pass run just before it (OPEN_RETENTION
  far in the past: the same process start, the same month checks, nothing deleted), and
  the pixel's p99 during the two compared: on one shared machine that ratio is what the
  deleting costs the pixel, where a comparison with a window minutes earlier would measure
  the machine's mood. PASSES pairs, the first deleting the oldest third, each later one
  STEP_DAYS more (half of them drop a month, the others only delete in the boundary
  month, as daily passes do); the seconds net of the no-op pass give the cost per deleted
  row. The window is the pass itself and a second before it, so a stall of a few
  milliseconds already shows in its p99; wrk's slowest request is given beside it;
- erasure through the admin API (`DELETE /admin/api/subscribers/{email}`): p50, max and
  WAL per erasure;
- bytes per open (heap and indexes);
- the dashboard (`newsletter serve`): the overview `/admin`, the subscriber list's
  prefix search without a match, the campaign list: median of REQUESTS requests, and the
  overview's and the search's statements in the database alone (with the overview's
  `count(*)` from before issue 31 beside them);
- the pixel's throughput on the full table against an empty one: a second database, a
  copy of the first made before any open was loaded, served by a second `newsletter
  serve`; PAIRS rounds of wrk on each, alternating which goes first (ABBA), so each pair
  ran under the same load of the machine; the median of the pairs' ratios.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

from bench import scale_data
from bench.bench_pixel import WRK_SCRIPT, _ms, _parse_wrk
from bench.processes import ServiceProcess
from service.admin.dashboard.subscriber_list import prefix_successor
from service.db import migrations
from service.db.queries import queries
from service.tokens import Tokens

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "k8s" / "postgres" / "cluster.yaml"
SECRET = "bench-secret-key-0123456789-abcdefghijklmnop"
ADMIN_TOKEN = "bench-admin-token-0123456789-abcdefghij"
SUBSCRIBERS = int(os.environ.get("BENCH_SCALE_SUBSCRIBERS", "1000000"))
PIXEL_SUBSCRIBERS = 20_000
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
REQUESTS = 30
ERASURES = 20
PAIRS = int(os.environ.get("BENCH_SCALE_PAIRS", "4"))  # wrk rounds on each side
PASSES = int(os.environ.get("BENCH_SCALE_PASSES", "7"))  # no-op and real passes
# Each real pass after the first moves the retention boundary this much: every other one
# drops a month, the others only delete in the boundary month, as daily passes do.
STEP_DAYS = 15
EMPTY_DB = "bench_empty"
NO_OP_RETENTION = f"{19 * 365 * 86400}s"  # older than any open: a pass that deletes nothing
LEAD_SECONDS = 1.0  # wrk runs this long before a pass starts
# The pixel's pace while a pass runs: a busy list's evening, well below the one process's
# ceiling. At the ceiling (wrk without a pause) every CPU second the pass takes on the
# bench machine's two shared cores comes out of the pixel's queue, which says how big
# the machine is, not whether the pass holds the pixel up.
PASS_RPS = int(os.environ.get("BENCH_SCALE_PASS_RPS", "2000"))
NO_MATCH = "zz-nobody"  # sorts after every scale{i}@ address: the search's worst case
# Server parameters this build cannot take (pgserver's PostgreSQL has no lz4), or that
# only matter to a cluster (replication, logging).
SKIPPED_PARAMETERS = {"wal_compression", "timezone"}


def sizes(argv: list[str]) -> list[int]:
    """The sizes of `opens` to measure: `--scale-sizes=1M,5M` or BENCH_SCALE_SIZES."""
    given = os.environ.get("BENCH_SCALE_SIZES", "1M")
    for arg in argv:
        if arg.startswith("--scale-sizes="):
            given = arg.split("=", 1)[1]
    units = {"K": 1_000, "M": 1_000_000, "B": 1_000_000_000}
    found = []
    for part in given.split(","):
        part = part.strip().upper()
        found.append(int(float(part[:-1]) * units[part[-1]]) if part[-1] in units else int(part))
    return found


def label(count: int) -> str:
    return f"{count / 1_000_000:g} M" if count >= 1_000_000 else f"{count:,}"


# -- PostgreSQL --------------------------------------------------------------------------
def cluster_parameters() -> dict[str, str]:
    spec = yaml.safe_load(CLUSTER.read_text())["spec"]["postgresql"]["parameters"]
    return {
        k: str(v)
        for k, v in spec.items()
        if k not in SKIPPED_PARAMETERS and not k.startswith(("log_",))
    }


def start_postgres(workdir: Path) -> Any:
    import pgserver
    from pgserver._commands import pg_ctl

    server = pgserver.get_server(workdir / "pg", cleanup_mode="delete")
    for key, value in cluster_parameters().items():
        server.psql(f"ALTER SYSTEM SET {key} = '{value}';")
    server.psql("ALTER SYSTEM SET max_wal_size = '4GB';")  # a loaded server's, not 1 GB
    pg_ctl(["-m", "fast", "-w", "stop"], pgdata=server.pgdata, user=server.system_user)
    server.ensure_postgres_running()
    return server


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, command_timeout=7200)


async def seed(url: str) -> list[str]:
    """Subscribers, a year of campaigns, and a pixel campaign mailed to the first
    PIXEL_SUBSCRIBERS (its paths)."""
    con = await _connect(url)
    try:
        await migrations.migrate(con)
        await scale_data.load_subscribers(con, SUBSCRIBERS)
        pixel = await con.fetchval(
            """INSERT INTO campaigns (name, subject, html, text, first_sent_at, recipients, sent)
               VALUES ('pixel', 's', 'h', 't', now() - interval '1 hour', $1, $1)
               RETURNING id""",
            PIXEL_SUBSCRIBERS,
        )
        await con.execute(
            """INSERT INTO deliveries (campaign_id, subscriber_id, sent_at)
               SELECT $1, id, now() - interval '1 hour' FROM subscribers
               ORDER BY id LIMIT $2""",
            pixel,
            PIXEL_SUBSCRIBERS,
        )
        await scale_data.load_campaigns(con, SUBSCRIBERS)
        await con.execute("VACUUM ANALYZE")
        tokens = Tokens((SECRET,), 3600)
        ids = await con.fetch("SELECT subscriber_id FROM deliveries WHERE campaign_id = $1", pixel)
        return [f"/o/{tokens.pixel(r['subscriber_id'], pixel)}.gif" for r in ids]
    finally:
        await con.close()


async def copy_database(server: Any, url: str) -> str:
    """A copy of the database at `url` (no one connected to it) as EMPTY_DB; its URL."""
    source = (await facts(url, "SELECT current_database() AS name"))["name"]
    con = await _connect(server.get_uri("template1"))
    try:
        await con.execute(f'CREATE DATABASE {EMPTY_DB} TEMPLATE "{source}"')
    finally:
        await con.close()
    return server.get_uri(EMPTY_DB)


async def fill(url: str, count: int) -> float:
    """`opens` emptied and filled with `count` rows; seconds the load took."""
    con = await _connect(url)
    try:
        # The progress of the last size's passes goes with its opens: else the first pass
        # takes the boundary month as deleted already and leaves its rows.
        await con.execute("TRUNCATE opens, retention_progress")
        campaigns = [
            r["id"]
            for r in await con.fetch(
                "SELECT id FROM campaigns WHERE name LIKE 'week %' ORDER BY id"
            )
        ]
        started = time.monotonic()
        await scale_data.load_opens(con, campaigns, SUBSCRIBERS, count)
        seconds = time.monotonic() - started
        await con.execute("VACUUM ANALYZE opens")
        await con.execute("CHECKPOINT")  # the load's dirty pages out of the way
        return seconds
    finally:
        await con.close()


async def facts(url: str, sql: str, *args: Any) -> Any:
    con = await _connect(url)
    try:
        return await con.fetchrow(sql, *args)
    finally:
        await con.close()


# -- the service -------------------------------------------------------------------------
def service_env(url: str, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "SMTP_"))},
        "DATABASE_URL": url,
        "SMTP_URL": "smtp://127.0.0.1:9",
        "PUBLIC_URL": "http://bench.test",
        "SECRET_KEYS": SECRET,
        "ADMIN_TOKENS": ADMIN_TOKEN,
        "PURGE_INTERVAL": str(7 * 86400),
        "LOG_LEVEL": "warning",
        **extra,
    }


def wrk(
    service: ServiceProcess, paths: list[str], workdir: Path, seconds: float, rps: int = 0
) -> subprocess.Popen[str]:
    """wrk on the pixel; at `rps` requests a second in all if given (each connection
    pausing between its requests), else as fast as the service answers."""
    paths_file = workdir / "paths.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    script = workdir / "pixel.lua"
    pause = f"function delay() return {CONNECTIONS * 1000 // rps} end\n" if rps else ""
    script.write_text(WRK_SCRIPT % {"paths": paths_file} + pause)
    return subprocess.Popen(
        [
            *("wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency"),
            *("-s", str(script), service.url),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def pixel_load(service: ServiceProcess, paths: list[str], workdir: Path) -> dict:
    process = wrk(service, paths, workdir, SECONDS)
    out, _ = process.communicate()
    return _parse_wrk(out)


def _cookies(response: httpx.Response, jar: dict[str, str]) -> dict[str, str]:
    """The response's cookies added to `jar` (sent by hand: they are Secure, and the
    bench speaks plain HTTP on loopback)."""
    for header in response.headers.get_list("set-cookie"):
        name, value = header.split(";", 1)[0].split("=", 1)
        jar[name] = value
    return jar


class Admin:
    """A signed-in dashboard session and the admin API, timing each request."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=600)
        form = self.client.get("/admin/login")
        self.jar = _cookies(form, {})
        token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        signed = self._send(
            "POST", "/admin/login", data={"login_token": token, "token": ADMIN_TOKEN}
        )
        assert signed.status_code == 303, signed.text
        overview = self._send("GET", "/admin")
        self.csrf = re.search(r'name="csrf" value="([^"]+)"', overview.text).group(1)  # type: ignore[union-attr]

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        self.client.cookies.clear()
        cookie = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        response = self.client.request(method, path, headers={"Cookie": cookie}, **kw)
        _cookies(response, self.jar)
        return response

    def median_ms(self, method: str, path: str, **kw: Any) -> dict[str, float]:
        timings = []
        for _ in range(REQUESTS):
            started = time.perf_counter()
            response = self._send(method, path, **kw)
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (path, response.status_code)
        return {"p50_ms": round(statistics.median(timings), 2), "max_ms": round(max(timings), 2)}

    def close(self) -> None:
        self.client.close()


def erasures(url: str, admin: Admin) -> dict[str, Any]:
    """ERASURES subscribers with opens erased through the admin API."""
    emails = [
        r["email"]
        for r in asyncio.run(
            _fetch(
                url,
                """SELECT s.email FROM subscribers s
                   WHERE s.id IN (SELECT subscriber_id FROM opens TABLESAMPLE SYSTEM (1))
                   ORDER BY random() LIMIT $1""",
                ERASURES,
            )
        )
    ]
    held = asyncio.run(
        _fetch(
            url,
            """SELECT count(*) AS n FROM opens o JOIN subscribers s ON s.id = o.subscriber_id
               WHERE s.email = ANY($1::text[])""",
            emails,
        )
    )[0]["n"]
    timings, wal = [], []
    for email in emails:
        before = asyncio.run(facts(url, "SELECT pg_current_wal_lsn() AS lsn"))["lsn"]
        started = time.perf_counter()
        response = admin.client.delete(
            f"/admin/api/subscribers/{email}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 204, response.text
        wal.append(
            asyncio.run(facts(url, "SELECT pg_current_wal_lsn() - $1::pg_lsn AS b", before))["b"]
        )
    return {
        "erasures": len(timings),
        "opens_each": round(held / len(emails), 1),
        "p50_ms": round(statistics.median(timings), 2),
        "max_ms": round(max(timings), 2),
        "wal_kib_p50": round(float(statistics.median(wal)) / 1024),
    }


async def _fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    con = await _connect(url)
    try:
        return await con.fetch(sql, *args)
    finally:
        await con.close()


def timed_pass(
    url: str, service: ServiceProcess, paths: list[str], workdir: Path, retention: str
) -> dict[str, Any]:
    """One `newsletter purge` with OPEN_RETENTION=`retention`, wrk on the pixel from
    LEAD_SECONDS before it starts until it ends: its seconds, what it deleted, its WAL and
    the pixel's latencies over that window."""
    lsn = asyncio.run(facts(url, "SELECT pg_current_wal_lsn() AS lsn"))["lsn"]
    load = wrk(service, paths, workdir, 3600, rps=PASS_RPS)
    time.sleep(LEAD_SECONDS)  # wrk connected and running before the pass starts
    started = time.monotonic()
    purge = subprocess.run(
        [sys.executable, "-m", "service", "purge"],
        env=service_env(url, OPEN_RETENTION=retention),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    seconds = time.monotonic() - started
    load.send_signal(signal.SIGINT)
    out = load.communicate()[0]
    pixel = _parse_wrk(out)
    slowest = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+\w+)", out)
    assert purge.returncode == 0, purge.stderr[-2000:]
    deleted = json.loads(purge.stdout.strip().splitlines()[-1])["opens"]
    after = asyncio.run(facts(url, "SELECT pg_current_wal_lsn() - $1::pg_lsn AS wal", lsn))
    return {
        "seconds": round(seconds, 2),
        "deleted": deleted,
        "wal_mb": round(float(after["wal"]) / 2**20, 1),
        "pixel_p50_ms": pixel["p50_ms"],
        "pixel_p99_ms": pixel["p99_ms"],
        "pixel_rps": pixel["rps"],
        "pixel_max_ms": round(_ms(slowest.group(1)), 1) if slowest else None,
        "pixel_pace_rps": PASS_RPS,
    }


def oldest_third(url: str) -> float:
    """Seconds since the newest of the oldest third of the opens (taken before the pixel
    rounds add their opens of today)."""
    return asyncio.run(
        facts(
            url,
            """SELECT extract(epoch FROM now() - percentile_disc(1.0 / 3) WITHIN GROUP (ORDER BY at))
                      AS age FROM opens""",
        )
    )["age"]


def retention_passes(
    url: str, service: ServiceProcess, paths: list[str], workdir: Path, third: float
) -> list[dict[str, Any]]:
    """PASSES pairs of a no-op pass and a real one: the first real pass deletes the
    opens older than `third` seconds, each later one STEP_DAYS more."""
    pairs = []
    for index in range(PASSES):
        of_rows = asyncio.run(facts(url, "SELECT count(*) AS n FROM opens"))["n"]
        control = timed_pass(url, service, paths, workdir, NO_OP_RETENTION)
        assert control["deleted"] == 0, control
        age = int(third) - index * STEP_DAYS * 86400
        real = timed_pass(url, service, paths, workdir, f"{age}s")
        net = max(real["seconds"] - control["seconds"], 0.0)
        pairs.append(
            {
                **real,
                "of_rows": of_rows,
                "us_per_row": round(real["seconds"] * 1e6 / max(real["deleted"], 1), 2),
                "no_op_seconds": control["seconds"],
                "net_us_per_row": round(net * 1e6 / max(real["deleted"], 1), 3),
                "no_op_pixel_p50_ms": control["pixel_p50_ms"],
                "no_op_pixel_p99_ms": control["pixel_p99_ms"],
                "no_op_pixel_max_ms": control["pixel_max_ms"],
                "p99_ratio": _ratio(real["pixel_p99_ms"], control["pixel_p99_ms"]),
            }
        )
    return pairs


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def pixel_side_by_side(
    full: ServiceProcess, empty: ServiceProcess, paths: list[str], workdir: Path
) -> dict[str, Any]:
    """PAIRS wrk rounds on the full and the empty table, alternating which goes first."""
    pixel_load(full, paths, workdir)  # warm-up
    pixel_load(empty, paths, workdir)
    rounds: dict[str, list[dict]] = {"full": [], "empty": []}
    for index in range(PAIRS):
        order = (("empty", empty), ("full", full))
        for side, service in order if index % 2 == 0 else order[::-1]:
            rounds[side].append(pixel_load(service, paths, workdir))

    def median(side: str, key: str) -> float:
        return round(statistics.median(r[key] for r in rounds[side]), 2)

    rps = [f["rps"] / e["rps"] for f, e in zip(rounds["full"], rounds["empty"], strict=True)]
    p99 = [f["p99_ms"] / e["p99_ms"] for f, e in zip(rounds["full"], rounds["empty"], strict=True)]
    return {
        "pairs": PAIRS,
        **{
            f"{side}_{key}": median(side, key)
            for side in rounds
            for key in ("rps", "p50_ms", "p99_ms")
        },
        "rps_ratio": round(statistics.median(rps), 3),
        "rps_ratios": [round(r, 3) for r in rps],
        "p99_ratio": round(statistics.median(p99), 3),
    }


async def statement_ms(url: str, sql: str, *args: Any) -> float:
    """Median milliseconds of one statement in the database alone (no HTTP), prepared
    once and run REQUESTS times: after five runs PostgreSQL may switch to its generic
    plan, the one a pooled connection of the service ends up with."""
    con = await _connect(url)
    try:
        statement = await con.prepare(sql)
        timings = []
        for _ in range(REQUESTS):
            started = time.perf_counter()
            await statement.fetch(*args)
            timings.append((time.perf_counter() - started) * 1000)
        return round(statistics.median(timings), 3)
    finally:
        await con.close()


def database_figures() -> dict[str, tuple[str, tuple]]:
    """The dashboard statements timed in the database alone, and the count the overview
    made before the counters (issue 31), for comparison."""
    lists = queries("subscriber_list")
    below = prefix_successor(NO_MATCH)
    return {
        "dashboard overview /admin": (queries("dashboard").subscribers_by_status.sql, ()),
        "subscriber list, prefix search with no match": (
            lists.search_subscribers.sql,
            (NO_MATCH, 0, below, 51),
        ),
        "overview counts before issue 31 (count(*) by status)": (
            "SELECT status, count(*) AS n FROM subscribers GROUP BY status",
            (),
        ),
    }


async def _bytes_per_open(url: str) -> dict[str, int]:
    con = await _connect(url)
    try:
        return await scale_data.bytes_per_open(con)
    finally:
        await con.close()


def measure(url: str, empty_url: str, count: int, paths: list[str], workdir: Path) -> list[dict]:
    rows: list[dict] = []
    opens = label(count)

    def add(name: str, **figures: Any) -> None:
        rows.append({"bench": "scale", "name": name, "opens": opens, **figures})
        print(rows[-1], flush=True)

    loaded = asyncio.run(fill(url, count))
    third = oldest_third(url)
    add("load", seconds=round(loaded, 1), rows_per_s=round(count / loaded))
    size = asyncio.run(_bytes_per_open(url))
    add(
        "bytes per open",
        bytes=size["bytes"],
        heap=size["heap"],
        indexes=size["indexes"],
        user_agents=size["user_agents"],
    )
    serve = ["serve", "--no-migrate", "--no-worker"]
    with (
        ServiceProcess(service_env(url), serve) as service,
        ServiceProcess(service_env(empty_url), serve) as empty,
    ):
        both = pixel_side_by_side(service, empty, paths, workdir)
        for side, name in (
            ("full", "pixel, full table"),
            ("empty", "pixel, empty table, same run"),
        ):
            add(name, **{key: both[f"{side}_{key}"] for key in ("rps", "p50_ms", "p99_ms")})
        add(
            "pixel, full against empty",
            pairs=both["pairs"],
            rps_ratio=both["rps_ratio"],
            rps_ratios=both["rps_ratios"],
            p99_ratio=both["p99_ratio"],
        )
    with ServiceProcess(service_env(url), serve) as service:
        admin = Admin(service.url)
        try:
            alone = {
                name: asyncio.run(statement_ms(url, sql, *args))
                for name, (sql, args) in database_figures().items()
            }
            add(
                "dashboard overview /admin",
                **admin.median_ms("GET", "/admin"),
                db_p50_ms=alone["dashboard overview /admin"],
            )
            add(
                "subscriber list, prefix search with no match",
                **admin.median_ms(
                    "POST",
                    "/admin/subscribers/list",
                    data={"csrf": admin.csrf, "prefix": NO_MATCH},
                ),
                db_p50_ms=alone["subscriber list, prefix search with no match"],
            )
            name = "overview counts before issue 31 (count(*) by status)"
            add(name, db_p50_ms=alone[name])
            add("campaign list /admin/campaigns", **admin.median_ms("GET", "/admin/campaigns"))
            add("erasure via the admin API", **erasures(url, admin))
        finally:
            admin.close()
        passes = retention_passes(url, service, paths, workdir, third)
        add("retention pass, oldest third", **passes[0])
        for index, later in enumerate(passes[1:], 2):
            add(f"retention pass {index}, {(index - 1) * STEP_DAYS} days more", **later)
        ratios = [p["p99_ratio"] for p in passes if p["p99_ratio"] is not None]
        add(
            "pixel p99 during a pass against a no-op pass",
            passes=len(passes),
            p99_ratio=round(statistics.median(ratios), 3) if ratios else None,
            p99_ratios=ratios,
        )
    return rows


def main() -> list[dict]:
    wanted = sizes(sys.argv)
    rows: list[dict] = [
        {
            "bench": "scale",
            "name": "setup",
            "subscribers": SUBSCRIBERS,
            "campaigns": scale_data.WEEKS,
            "postgres": ", ".join(f"{k}={v}" for k, v in cluster_parameters().items()),
        }
    ]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = Path(tmp)
        server = start_postgres(workdir)
        try:
            url = server.get_uri()
            paths = asyncio.run(seed(url))
            # The empty side: a copy of the database before any open is loaded.
            empty_url = asyncio.run(copy_database(server, url))
            for count in wanted:
                rows += measure(url, empty_url, count, paths, workdir)
        finally:
            server.cleanup()
    return rows


if __name__ == "__main__":
    for result in main():
        print(result)
