"""The pixel while a campaign is being sent: alone, beside a send in the same process
(`newsletter serve` doing everything), and beside a send by a `newsletter worker`
process (the web process runs `serve --no-worker`), side by side in one run.

Each process is pinned to a CPU of its own where the machine has two or more (the web
process to the first, the worker to the second), standing for pods with their own CPU
limits; the load generator (`wrk`, else bench/loadgen.py), PostgreSQL (fsync on) and
Postfix's `smtp-sink` are not pinned. The campaign is DKIM-signed (RSA 2048) and large
enough to be still sending when the pixel's measurement ends (checked: a row whose
send finished early says so). Targets (issue 16): with the role split the pixel keeps
at least 0.9x its throughput and at most 1.5x its p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx

from bench.bench_pixel import CONNECTIONS, SECRET, _load
from bench.bench_send import _dkim_key, smtp_sink
from service import campaigns, migrations
from service.tokens import Tokens

ROOT = Path(__file__).resolve().parent.parent
SUBSCRIBERS = int(os.environ.get("BENCH_UNDER_SEND_RECIPIENTS", "30000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))


class Process:
    """`python -m service <args>` on a free port, pinned to `cpu` when given."""

    def __init__(self, env: dict[str, str], args: list[str], cpu: int | None) -> None:
        from bench.bench_pixel import _free_port

        self.port = _free_port()
        self.env, self.args, self.cpu = env, args, cpu
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Process:
        self.log = tempfile.NamedTemporaryFile(prefix="bench-under-send-", suffix=".log")
        pin = (lambda: os.sched_setaffinity(0, {self.cpu})) if self.cpu is not None else None
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                *self.args,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=self.env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=pin,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.args[0]} exited: {Path(self.log.name).read_text()[-2000:]}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.args[0]} did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def seed(url: str) -> tuple[list[str], int]:
    """Subscribers who allow tracking, a sent campaign whose pixels the load opens, and
    a second campaign to send meanwhile."""
    con = await asyncpg.connect(url)
    try:
        await migrations.migrate(con)
        await con.execute(
            "INSERT INTO subscribers (email, name, status, tracking_consent, confirmed_at)"
            " SELECT 'bench' || g || '@example.com', 'Reader ' || g, 'active', true, now()"
            " FROM generate_series(1, $1) g",
            SUBSCRIBERS,
        )
        opened = await con.fetchval(
            "INSERT INTO campaigns (name, subject, html, text, first_sent_at, recipients, sent)"
            " VALUES ('opened', 's', 'h', 't', now() - interval '1 hour', $1, $1) RETURNING id",
            SUBSCRIBERS,
        )
        await con.execute(
            "INSERT INTO deliveries (campaign_id, subscriber_id, sent_at)"
            " SELECT $1, id, now() - interval '1 hour' FROM subscribers",
            opened,
        )
        from bench.bench_send import CAMPAIGN

        sending = await campaigns.create_campaign(
            con,
            name="sending",
            subject=CAMPAIGN["subject"],
            html=CAMPAIGN["html"],
            text=CAMPAIGN["text"],
        )
        await con.execute("VACUUM ANALYZE")
        ids = [r["id"] for r in await con.fetch("SELECT id FROM subscribers ORDER BY id")]
    finally:
        await con.close()
    tokens = Tokens((SECRET,), 86400)
    return [f"/o/{tokens.pixel(i, opened)}.gif" for i in ids], sending


async def reset_send(url: str, campaign_id: int) -> None:
    con = await asyncpg.connect(url)
    try:
        await con.execute("DELETE FROM outbox")
        await con.execute("DELETE FROM deliveries WHERE campaign_id = $1", campaign_id)
        await con.execute(
            "UPDATE campaigns SET sent = 0, recipients = 0 WHERE id = $1", campaign_id
        )
        await con.execute("VACUUM ANALYZE outbox")
    finally:
        await con.close()


async def queue(url: str, campaign_id: int) -> None:
    con = await asyncpg.connect(url)
    try:
        await campaigns.queue_send(con, campaign_id)
    finally:
        await con.close()


async def still_sending(url: str) -> bool:
    con = await asyncpg.connect(url)
    try:
        return await con.fetchval("SELECT count(*) FROM outbox") > 0
    finally:
        await con.close()


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield None


def run_scenarios(
    url: str, paths: list[str], sending: int, env: dict[str, str], workdir: Path
) -> list[dict]:
    cpus = sorted(os.sched_getaffinity(0))
    web_cpu = cpus[0] if len(cpus) > 1 else None
    worker_cpu = cpus[1] if len(cpus) > 1 else None
    scenarios = (
        ("pixel alone (serve --no-worker)", ["serve", "--no-migrate", "--no-worker"], False),
        ("pixel while the same process sends (serve)", ["serve", "--no-migrate"], True),
        (
            "pixel while a worker process sends (serve --no-worker + worker)",
            ["serve", "--no-migrate", "--no-worker"],
            True,
        ),
    )
    rows = []
    for name, args, send in scenarios:
        asyncio.run(reset_send(url, sending))
        worker = Process(env, ["worker"], worker_cpu) if "worker process" in name else nothing()
        with Process(env, args, web_cpu) as web, worker:
            if send:
                asyncio.run(queue(url, sending))
                time.sleep(1)  # the send under way before the load starts
            result = _load(web, paths, SECONDS, workdir)  # type: ignore[arg-type]
            busy = asyncio.run(still_sending(url)) if send else None
        row = {"bench": "pixel_under_send", "name": name, **result}
        if busy is False:
            row["note"] = (
                "the send finished before the measurement: raise BENCH_UNDER_SEND_RECIPIENTS"
            )
        rows.append(row)
    alone = rows[0]
    for row in rows[1:]:
        row["rps_x"] = round(row["rps"] / alone["rps"], 2)
        row["p99_x"] = round(row["p99_ms"] / alone["p99_ms"], 2) if alone.get("p99_ms") else None
    rows[2]["target"] = "rps >= 0.9x, p99 <= 1.5x " + (
        "met" if rows[2]["rps_x"] >= 0.9 and (rows[2]["p99_x"] or 99) <= 1.5 else "NOT met"
    )
    return rows


def main() -> list[dict]:
    import pgserver

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-under-send-") as directory, smtp_sink() as port:
        server = pgserver.get_server(directory, cleanup_mode="delete")
        try:
            url = server.get_uri()
            paths, sending = asyncio.run(seed(url))
            key = _dkim_key(Path(directory), "rsa-sha256")
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "SMTP_"))},
                "DATABASE_URL": url,
                "SMTP_URL": f"smtp://127.0.0.1:{port}",
                "PUBLIC_URL": "http://bench.test",
                "SECRET_KEYS": SECRET,
                "MAIL_FROM": "Bench <news@example.com>",
                "DKIM_PRIVATE_KEY_FILE": str(key),
                "DKIM_SELECTOR": "s1",
                "DKIM_DOMAIN": "example.com",
                "OUTBOX_POLL_INTERVAL": "0.2s",
                "LOG_LEVEL": "warning",
            }
            rows = run_scenarios(url, paths, sending, env, Path(directory))
        finally:
            server.cleanup()
    for row in rows:
        row["connections"] = CONNECTIONS
        row["load_avg_1m"] = round(load[0], 2)
    return rows


if __name__ == "__main__":
    for row in main():
        print(row)
