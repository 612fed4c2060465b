"""Pixel throughput: group commit against one awaited INSERT per request and no recording.

Starts a PostgreSQL of its own (pgserver in a temporary directory, durable settings:
fsync and synchronous_commit on, shared_buffers 1 GB (BENCH_SHARED_BUFFERS), as in
production), the service as in production (`serve`, uvicorn, one worker) with the two
reference endpoints of bench/reference_server.py beside the pixel, and a load
generator on loopback (`wrk` when installed, else `bench/loadgen.py` in its own
process). Each round measures, side by side in the same process and database:

- `pixel`: `/o/{token}.gif`, PIXEL_MODE=wait (every answered open is committed);
- `naive`: `/bench/naive/{token}.gif`, one awaited INSERT per request;
- `ceiling`: `/bench/ceiling/{token}.gif`, verifies the token and records nothing.

Every URL is a valid pixel of one of SUBSCRIBERS subscribers (with tracking consent, so
every open is a personal event row). After each pixel run it checks that the opens in
the database equal the pixel answers the server counted (its own /metrics).

`python -m bench bench_pixel --base` measures only the pixel, side by side with the code
this branch started from (BENCH_PIXEL_BASE, default main: its service/ as files, run
with PYTHONPATH so it imports its own code), in alternating rounds on the same database.

`python -m bench bench_pixel --big` also loads 10 million rows into `opens` with
generate_series, runs the pixel again, and times the unsubscribe (erasure) of
subscribers holding 1,000 opens each.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from bench.processes import ServiceProcess
from service.db import migrations
from service.privacy.erasure import erase_subscriber
from service.tokens import Tokens

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-key-0123456789-abcdefghijklmnop"
SUBSCRIBERS = 20_000
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
# The machine is shared and noisy: three rounds, each side by side, and their median.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BIG_ROWS = 10_000_000
OPENS_PER_BIG_SUBSCRIBER = 1_000

WRK_SCRIPT = """
local paths = {}
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
local uas = {
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
  "Mozilla/5.0",
  "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
  "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.4266; Pro)",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
}
local i = math.random(#paths)
request = function()
  i = i + 7
  return wrk.format("GET", paths[(i %% #paths) + 1], { ["User-Agent"] = uas[(i %% #uas) + 1] })
end
"""


# -- database ---------------------------------------------------------------------------
async def _seed(url: str, tokens: Tokens) -> dict[str, list[str]]:
    """Three campaigns (pixel, naive, ceiling), each mailed to every subscriber."""
    con = await asyncpg.connect(url)
    try:
        await migrations.migrate(con)
        await con.execute(
            """INSERT INTO subscribers (email, status, tracking_consent, confirmed_at)
               SELECT 'bench' || g || '@example.com', 'active', true, now()
               FROM generate_series(1, $1) g""",
            SUBSCRIBERS,
        )
        ids = [r["id"] for r in await con.fetch("SELECT id FROM subscribers ORDER BY id")]
        paths: dict[str, list[str]] = {}
        for name, prefix in (
            ("pixel", "/o"),
            ("naive", "/bench/naive"),
            ("ceiling", "/bench/ceiling"),
        ):
            campaign_id = await con.fetchval(
                """INSERT INTO campaigns (name, subject, html, text, first_sent_at, recipients, sent)
                   VALUES ($1, 's', 'h', 't', now() - interval '1 hour', $2, $2) RETURNING id""",
                name,
                SUBSCRIBERS,
            )
            await con.execute(
                """INSERT INTO deliveries (campaign_id, subscriber_id, sent_at)
                   SELECT $1, id, now() - interval '1 hour' FROM subscribers""",
                campaign_id,
            )
            paths[name] = [f"{prefix}/{tokens.pixel(i, campaign_id)}.gif" for i in ids]
        await con.execute("VACUUM ANALYZE")
        return paths
    finally:
        await con.close()


async def _counts(url: str) -> dict[str, int]:
    con = await asyncpg.connect(url)
    try:
        rows = await con.fetch(
            """SELECT c.name, (SELECT count(*) FROM opens o WHERE o.campaign_id = c.id) AS n
               FROM campaigns c"""
        )
        return {r["name"]: r["n"] for r in rows}
    finally:
        await con.close()


async def _big_load(url: str) -> float:
    """10 million opens of a fourth campaign, 1,000 for each of 10,000 subscribers."""
    con = await asyncpg.connect(url, command_timeout=3600)
    started = time.monotonic()
    try:
        campaign_id = await con.fetchval(
            """INSERT INTO campaigns (name, subject, html, text, first_sent_at)
               VALUES ('big', 's', 'h', 't', now() - interval '30 days') RETURNING id"""
        )
        per = OPENS_PER_BIG_SUBSCRIBER
        subscribers = BIG_ROWS // per
        # Interleaved like real traffic: one subscriber's opens spread over the table.
        # The narrow row the recorder writes (sql/161): strings as ids of lookup tables.
        await con.execute(
            """INSERT INTO user_agents (agent, last_seen) VALUES ('Mozilla/5.0', current_date)
               ON CONFLICT (agent) DO NOTHING;
               INSERT INTO open_labels (label) VALUES ('Apple Mail'), ('Mac OS X'), ('DE')
               ON CONFLICT (label) DO NOTHING"""
        )
        await con.execute(
            """INSERT INTO opens (subscriber_id, campaign_id, at, addr, user_agent_id,
                                  client_id, os_id, country_id)
               SELECT (g % $2) + 1, $1, now() - interval '30 days' + g * interval '1 ms',
                      '203.0.113.0', ua.id, cl.id, os.id, co.id
               FROM generate_series(0, $3 - 1) g,
                    (SELECT id FROM user_agents WHERE agent = 'Mozilla/5.0') ua,
                    (SELECT id FROM open_labels WHERE label = 'Apple Mail') cl,
                    (SELECT id FROM open_labels WHERE label = 'Mac OS X') os,
                    (SELECT id FROM open_labels WHERE label = 'DE') co""",
            campaign_id,
            subscribers,
            BIG_ROWS,
        )
        await con.execute("VACUUM ANALYZE opens")
        # A production table grows over months, its checkpoints spread out; right after a
        # 60-second bulk load the checkpointer is still writing gigabytes, and an erasure's
        # commit would queue behind that I/O. Settle it. (Right after a checkpoint is also
        # the erasure's worst case: every page it touches needs a full-page image in WAL.)
        await con.execute("CHECKPOINT")
    finally:
        await con.close()
    return time.monotonic() - started


async def _time_unsubscribes(url: str, count: int = 20) -> dict[str, float]:
    """Erase `count` subscribers that hold 1,000 opens each; milliseconds per erasure."""
    con = await asyncpg.connect(url)
    timings = []
    try:
        victims = [
            r["subscriber_id"]
            for r in await con.fetch(
                """SELECT subscriber_id FROM opens WHERE subscriber_id <= 10000
                   GROUP BY subscriber_id HAVING count(*) >= $1 ORDER BY random() LIMIT $2""",
                OPENS_PER_BIG_SUBSCRIBER,
                count,
            )
        ]
        wal_kib = []
        for subscriber_id in victims:
            lsn = await con.fetchval("SELECT pg_current_wal_lsn()")
            started = time.perf_counter()
            await erase_subscriber(con, subscriber_id)
            timings.append((time.perf_counter() - started) * 1000)
            wal_kib.append(
                await con.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", lsn) / 1024
            )
        left = await con.fetchval(
            "SELECT count(*) FROM opens WHERE subscriber_id = ANY($1::bigint[])", victims
        )
        assert left == 0, "the erasure left open rows behind"
    finally:
        await con.close()
    timings.sort()
    return {
        "unsubscribes": len(timings),
        "p50_ms": round(statistics.median(timings), 2),
        "max_ms": round(timings[-1], 2),
        "wal_kib_p50": round(statistics.median(wal_kib)),
    }


# -- service and load -------------------------------------------------------------------
class Service(ServiceProcess):
    """bench/reference_server.py's `serve` (the service plus the reference endpoints)."""

    def __init__(self, database_url: str, **env: str) -> None:
        super().__init__(
            {
                **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "SMTP_"))},
                "DATABASE_URL": database_url,
                "SMTP_URL": "smtp://127.0.0.1:9",
                "PUBLIC_URL": "http://bench.test",
                "SECRET_KEYS": SECRET,
                "LOG_LEVEL": "warning",
                **env,
            },
            ["serve", "--no-migrate"],
            module="bench.reference_server",
            ready="/healthz",
        )

    def dropped(self) -> dict[str, int]:
        """Opens the server counted as lost, by reason (explains an all_recorded False)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        found = re.findall(r'^pixel_opens_dropped_total\{reason="(\w+)"\} ([0-9.e+]+)$', text, re.M)
        return {reason: int(float(n)) for reason, n in found}

    def answered(self, route: str) -> int:
        """200 answers the server itself counted for a route template."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        pattern = re.compile(
            rf'^http_requests_total\{{method="GET",route="{re.escape(route)}",status="200"\}} ([0-9.e+]+)$',
            re.MULTILINE,
        )
        match = pattern.search(text)
        return int(float(match.group(1))) if match else 0


def _load(service: ServiceProcess, paths: list[str], seconds: float, workdir: Path) -> dict:
    paths_file = workdir / "paths.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    if shutil.which("wrk"):
        script = workdir / "pixel.lua"
        script.write_text(WRK_SCRIPT % {"paths": paths_file})
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{CONNECTIONS}",
                f"-d{seconds:g}s",
                "--latency",
                "-s",
                str(script),
                service.url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return _parse_wrk(out)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            service.url,
            str(paths_file),
            str(seconds),
            str(CONNECTIONS),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["generator"] = "bench/loadgen.py"
    return result


def _ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))  # type: ignore[union-attr]
    if text.endswith("us"):
        return value / 1000
    if text.endswith("ms"):
        return value
    if text.endswith("s"):
        return value * 1000
    return value


def _parse_wrk(out: str) -> dict:
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return {
        "requests": requests,
        "errors": (int(errors.group(1)) if errors else 0)
        + (sum(int(x) for x in socket_errors.groups()) if socket_errors else 0),
        "rps": round(rps, 1),
        "p50_ms": round(_ms(p50.group(1)), 2) if p50 else None,
        "p99_ms": round(_ms(p99.group(1)), 2) if p99 else None,
        "generator": "wrk",
    }


def _measure_round(
    service: Service,
    url: str,
    paths: dict[str, list[str]],
    workdir: Path,
    label: str,
    names: tuple[str, ...] = ("ceiling", "pixel", "naive"),
) -> list[dict]:
    routes = {
        "pixel": "/o/{token}.gif",
        "naive": "/bench/naive/{token}.gif",
        "ceiling": "/bench/ceiling/{token}.gif",
    }
    rows = []
    for name in names:
        before_db = asyncio.run(_counts(url)).get(name, 0)
        before_answered = service.answered(routes[name])
        result = _load(service, paths[name], SECONDS, workdir)
        time.sleep(0.5)  # answer-first mode may still be writing its last batch
        recorded = asyncio.run(_counts(url)).get(name, 0) - before_db
        answered = service.answered(routes[name]) - before_answered
        row = {
            "bench": "pixel",
            "name": f"{label}{name}",
            **result,
            "answered": answered,
            "recorded": recorded,
        }
        if name != "ceiling":
            row["all_recorded"] = recorded == answered
            if recorded != answered:
                row["dropped"] = service.dropped()
        rows.append(row)
    return rows


def _ratios(rows: list[dict], label: str) -> dict:
    by = {r["name"]: r for r in rows}
    pixel, naive, ceiling = by[f"{label}pixel"], by[f"{label}naive"], by[f"{label}ceiling"]
    return {
        "bench": "pixel",
        "name": f"{label}ratios",
        "pixel_vs_naive": round(pixel["rps"] / naive["rps"], 2),
        "pixel_vs_ceiling": round(pixel["rps"] / ceiling["rps"], 2),
    }


def _median_ratios(ratios: list[dict]) -> dict:
    """The rounds' median ratios, with the lowest, so that a bad round stays visible."""
    return {
        "bench": "pixel",
        "name": f"median-of-{len(ratios)}-ratios",
        **{
            key: statistics.median(r[key] for r in ratios)
            for key in ("pixel_vs_naive", "pixel_vs_ceiling")
        },
        "lowest_pixel_vs_naive": min(r["pixel_vs_naive"] for r in ratios),
    }


def _tune(server) -> str:
    """Give PostgreSQL the cache a production database of this size would have.

    pgserver starts with PostgreSQL's default shared_buffers (128 MB); a server holding a
    1.5 GB opens table runs with far more. BENCH_SHARED_BUFFERS (default 1GB) sets it.
    """
    from pgserver._commands import pg_ctl

    size = os.environ.get("BENCH_SHARED_BUFFERS", "1GB")
    server.psql(f"ALTER SYSTEM SET shared_buffers = '{size}';")
    pg_ctl(["-m", "fast", "-w", "stop"], pgdata=server.pgdata, user=server.system_user)
    server.ensure_postgres_running()
    return size


def _side_by_side(url: str, paths: dict[str, list[str]], workdir: Path) -> list[dict]:
    """The pixel of the earlier code and of this code, alternately, ROUNDS times."""
    from bench.bench_send_rate import earlier_tree

    # Passed, not set in the environment: bench_send_rate reads BENCH_RATE_BASE once, when
    # it is first imported, so BENCH_PIXEL_BASE set there afterwards was ignored.
    tree, commit = earlier_tree(workdir, os.environ.get("BENCH_PIXEL_BASE", "main"))
    # PYTHONSAFEPATH: `python -m` would put this checkout (its working directory) first.
    earlier = {"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}
    rows: list[dict] = []
    rps: dict[str, list[float]] = {"before": [], "now": []}
    load = os.getloadavg()[0]
    for n in range(ROUNDS):
        sides = (("before", earlier), ("now", {}))
        for side, env in sides if n % 2 == 0 else sides[::-1]:  # neither always first
            with Service(url, **env) as service:
                _load(service, paths["pixel"], 2, workdir)  # warm-up: caches, connections
                label = f"r{n + 1}-{side}-" if side == "now" else f"r{n + 1}-{side}-{commit}-"
                row = _measure_round(service, url, paths, workdir, label, ("pixel",))[0]
            rps[side].append(row["rps"])
            rows.append(row)
    now, before = statistics.median(rps["now"]), statistics.median(rps["before"])
    # Each round's two sides ran back to back: their ratio shares the machine's load of
    # the moment, which on a shared machine swings the throughput by a factor of two.
    ratio = statistics.median(n / b for n, b in zip(rps["now"], rps["before"], strict=True))
    rows.append(
        {
            "bench": "pixel",
            "name": f"median of {ROUNDS}: this code / before ({commit})",
            "rps": f"{now} / {before}",
            "of_before": f"{ratio:.1%} (median of the rounds' ratios)",
            "target": "within 5 % " + ("met" if ratio >= 0.95 else "NOT met"),
            "load_avg_1m": round(load, 2),
        }
    )
    return rows


def main() -> list[dict]:
    import pgserver

    big = "--big" in sys.argv
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-pixel-") as tmp:
        workdir = Path(tmp)
        server = pgserver.get_server(workdir / "pg", cleanup_mode="delete")
        try:
            rows.append({"bench": "pixel", "name": "postgres", "shared_buffers": _tune(server)})
            url = server.get_uri()
            tokens = Tokens((SECRET,), 3600)
            paths = asyncio.run(_seed(url, tokens))
            if "--base" in sys.argv:
                return rows + _side_by_side(url, paths, workdir)
            with Service(url) as service:
                _load(service, paths["pixel"], 2, workdir)  # warm-up: caches, connections
                _load(service, paths["naive"], 2, workdir)
                ratios = []
                for n in range(ROUNDS):
                    label = f"r{n + 1}-"
                    round_rows = _measure_round(service, url, paths, workdir, label)
                    ratios.append(_ratios(round_rows, label))
                    rows += [*round_rows, ratios[-1]]
                rows.append(_median_ratios(ratios))
            with Service(url, PIXEL_MODE="answer-first") as service:
                rows += _measure_round(service, url, paths, workdir, "answer-first-", ("pixel",))
            if big:
                seconds = asyncio.run(_big_load(url))
                rows.append(
                    {
                        "bench": "pixel",
                        "name": "big-load",
                        "rows": BIG_ROWS,
                        "seconds": round(seconds, 1),
                    }
                )
                with Service(url) as service:
                    _load(service, paths["pixel"], 2, workdir)
                    big_rows = _measure_round(service, url, paths, workdir, "10M-")
                    rows += [*big_rows, _ratios(big_rows, "10M-")]
                rows.append(
                    {
                        "bench": "pixel",
                        "name": "10M-unsubscribe-1000-opens",
                        **asyncio.run(_time_unsubscribes(url)),
                    }
                )
        finally:
            server.cleanup()
    return rows


if __name__ == "__main__":
    for row in main():
        print(row)
