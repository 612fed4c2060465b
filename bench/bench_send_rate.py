"""SMTP_MAX_RATE holding its rate, and uncapped sending as fast as before it existed.

One run, one Postfix `smtp-sink` and one embedded PostgreSQL (fsync on), four lanes:
- `SMTP_MAX_RATE=40, 2,000 emails`: a campaign sent by the outbox worker with the cap;
  the rate from the send request until every email is counted sent (the bucket holds one
  second's worth at the start, so 2,000 take 49 s); target 40 ± 10 %;
- `uncapped, this code` and `uncapped, before the cap (<commit>)`: the same campaign of
  UNCAPPED emails without any cap, sent alternately by this checkout's worker and by the
  code of the commit this branch started from (`git archive` into a temporary directory,
  run in a subprocess), ROUNDS times each; the rows give the median of each; target:
  this code within 5 % of the earlier one (without a cap the bucket costs nothing: no
  statement is made).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg

from bench.bench_send import service_send, smtp_sink
from service.db import migrations

ROOT = Path(__file__).resolve().parent.parent
RATE = 40.0
CAPPED = int(os.environ.get("BENCH_RATE_CAPPED", "2000"))
UNCAPPED = int(os.environ.get("BENCH_RATE_UNCAPPED", "10000"))
ROUNDS = int(os.environ.get("BENCH_RATE_ROUNDS", "3"))
BASE = os.environ.get("BENCH_RATE_BASE", "main")
LANES = 4

# Run in the subprocess with the earlier code first on sys.path: its own bench_send's
# service_send (its Settings have no rate fields at all).
_EARLIER = """
import asyncio, sys
from bench.bench_send import service_send
import service
assert service.__file__.startswith(sys.argv[3]), service.__file__
print(asyncio.run(service_send(sys.argv[1], int(sys.argv[2]), 4, None, int(sys.argv[4]))))
"""


async def send(url: str, port: int, count: int, **caps: float) -> float:
    """emails/s of this checkout's worker sending one campaign of `count` emails."""
    con = await asyncpg.connect(url)
    try:  # the bucket starts full, as it is after any idle second
        await con.execute("UPDATE send_rate SET tokens = 0, refilled_at = now() - interval '1h'")
    finally:
        await con.close()
    return await service_send(url, port, LANES, None, count, **caps)


def earlier_tree(directory: Path, base: str | None = None) -> tuple[Path, str]:
    """The code this branch started from (its merge base with `base`, by default
    BENCH_RATE_BASE), as files: service/, sql/ (also as the package data service/sql,
    which the editable install maps) and bench/."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "merge-base", "HEAD", base or BASE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = directory / "earlier"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "service", "sql", "bench"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    shutil.copytree(tree / "sql", tree / "service" / "sql")
    return tree, commit[:7]


async def earlier_send(tree: Path, url: str, port: int, count: int) -> float:
    """emails/s of the earlier code's worker, in its own process (as this code's rows
    are in this one)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _EARLIER,
        url,
        str(port),
        str(tree),
        str(count),
        env=env,
        cwd=str(tree),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"the earlier code's send failed ({process.returncode})")
    return float(out.decode().strip().splitlines()[-1])


async def run() -> list[dict]:
    import pgserver

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-rate-") as directory, smtp_sink() as port:
        tree, commit = earlier_tree(Path(directory))
        server = pgserver.get_server(Path(directory) / "pg", cleanup_mode="delete")
        try:
            url = server.get_uri()
            con = await asyncpg.connect(url)
            try:
                await migrations.migrate(con)
            finally:
                await con.close()
            capped = await send(url, port, CAPPED, smtp_max_rate=RATE)
            now, before = [], []
            for _ in range(ROUNDS):  # alternately, so the machine's load hits both alike
                before.append(await earlier_send(tree, url, port, UNCAPPED))
                now.append(await send(url, port, UNCAPPED))
        finally:
            server.cleanup()
    now_rate, before_rate = statistics.median(now), statistics.median(before)
    ratio = now_rate / before_rate
    rows = [
        {
            "bench": "send_rate",
            "name": f"SMTP_MAX_RATE={RATE:g}, {CAPPED} emails, {LANES} lanes",
            "emails": CAPPED,
            "emails_per_s": round(capped, 1),
            "target": f"{RATE:g} ± 10 % "
            + ("met" if abs(capped / RATE - 1) <= 0.10 else "NOT met"),
        },
        {
            "bench": "send_rate",
            "name": f"uncapped, before the cap ({commit}), {UNCAPPED} emails, {LANES} lanes",
            "emails": UNCAPPED,
            "emails_per_s": round(before_rate),
            "rounds": json.dumps([round(r) for r in before]),
        },
        {
            "bench": "send_rate",
            "name": f"uncapped, this code, {UNCAPPED} emails, {LANES} lanes",
            "emails": UNCAPPED,
            "emails_per_s": round(now_rate),
            "rounds": json.dumps([round(r) for r in now]),
            "of_before": f"{ratio:.1%}",
            "target": "within 5 % " + ("met" if ratio >= 0.95 else "NOT met"),
        },
    ]
    for row in rows:
        row["load_avg_1m"] = round(load[0], 2)
    return rows


def main() -> list[dict]:
    return asyncio.run(run())


if __name__ == "__main__":
    for row in main():
        print(row)
