"""The pixel while a campaign is being sent: alone, beside a send in the same process
(`newsletter serve` doing everything), and beside a send by a `newsletter worker`
process (the web process runs `serve --no-worker`), side by side in one run.

The processes get the CPU resources of their Deployments in k8s/base the way the
kubelet gives them (bench/pods.py: requests as cgroup CPU weights, limits as CFS
quotas; `nice` where no cgroup is writable, which the rows say). The pixel alone runs
under the same web-pod model as under the send. The load generator (`wrk`, else
bench/loadgen.py), PostgreSQL (fsync on) and Postfix's `smtp-sink`, which run on other
machines in production, share a harness group weighted like a whole node. The campaign
is DKIM-signed (RSA 2048) and large enough to be still sending when the pixel's
measurement ends (checked: a row whose send finished early says so). Each sending row
gives the emails/s sent during the pixel's measurement; a last row the worker's rate
with no pixel load, so that a pixel win bought by starving the worker shows. A contrast
row gives the worker as much CPU request as the web pod (the deployed worker requests
less, so that it yields to the pixel), and each row the CPU cores every process used
and the machine left idle. Targets (issue 16): with the role split the pixel keeps
at least 0.9x its throughput and at most 1.5x its p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench import pods
from bench.bench_pixel import CONNECTIONS, SECRET, _load
from bench.bench_send import _dkim_key, smtp_sink
from bench.processes import ServiceProcess, machine_cpu
from service.campaigns import store
from service.db import migrations
from service.tokens import Tokens

SUBSCRIBERS = int(os.environ.get("BENCH_UNDER_SEND_RECIPIENTS", "30000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))


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

        sending = await store.create_campaign(
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
        await store.queue_send(con, campaign_id)
    finally:
        await con.close()


async def sent(url: str, campaign_id: int) -> tuple[int, bool]:
    """The campaign's emails sent so far, and whether jobs are still queued."""
    con = await asyncpg.connect(url)
    try:
        count = await con.fetchval("SELECT sent FROM campaigns WHERE id = $1", campaign_id)
        return count, await con.fetchval("SELECT count(*) FROM outbox") > 0
    finally:
        await con.close()


@dataclass(frozen=True)
class Scenario:
    name: str
    web: list[str] | None  # the web process's arguments; None: no web process, no load
    worker: str | None  # the pod (bench/pods.py) of a `newsletter worker` beside it
    send: bool


WEB = ["serve", "--no-migrate", "--no-worker"]
# The contrast to the deployed worker: one requesting as much CPU as the web pod.
EQUAL_WORKER = "worker-equal"
SCENARIOS = (
    Scenario("pixel alone (serve --no-worker)", WEB, worker=None, send=False),
    Scenario(
        "pixel while the same process sends (serve)",
        ["serve", "--no-migrate"],
        worker=None,
        send=True,
    ),
    Scenario(
        "pixel while a worker process sends (serve --no-worker + worker)",
        WEB,
        worker="worker",
        send=True,
    ),
    Scenario(
        "the same with the worker requesting as much CPU as the web",
        WEB,
        worker=EQUAL_WORKER,
        send=True,
    ),
    Scenario("the worker sending with no pixel load (worker)", None, worker="worker", send=True),
)


def bench_pods() -> dict[str, pods.PodCPU]:
    deployed = pods.deployed_pods()
    equal = pods.PodCPU(deployed["web"].request_m, deployed["worker"].limit_m)
    return {**deployed, EQUAL_WORKER: equal}


def run_scenario(
    scenario: Scenario,
    url: str,
    paths: list[str],
    sending: int,
    env: dict[str, str],
    workdir: Path,
    node: pods.Node,
) -> dict:
    asyncio.run(reset_send(url, sending))
    row: dict = {"bench": "pixel_under_send", "name": scenario.name}
    web = worker = contextlib.nullcontext()
    if scenario.web:
        web = ServiceProcess(env, scenario.web, preexec=node.enter("web"))
        row["web_pod"] = node.describe("web")
    if scenario.worker:
        worker = ServiceProcess(env, ["worker"], preexec=node.enter(scenario.worker))
        row["worker_pod"] = node.describe(scenario.worker)
    with web as web_process, worker as worker_process:
        processes = {"web": web_process, "worker": worker_process}
        if scenario.send:
            asyncio.run(queue(url, sending))
            time.sleep(1)  # the send under way before the load starts
        before, _ = asyncio.run(sent(url, sending))
        cpu_before = {n: p.cpu_seconds() for n, p in processes.items() if p is not None}
        machine_before, started = machine_cpu(), time.monotonic()
        if web_process is not None:
            row.update(_load(web_process, paths, SECONDS, workdir))
        else:
            time.sleep(SECONDS)
        elapsed = time.monotonic() - started
        # CPU cores used: by each pod's process, and left idle on the machine.
        for name, seconds in cpu_before.items():
            row[f"{name}_cores"] = round((processes[name].cpu_seconds() - seconds) / elapsed, 2)
        row["idle_cores"] = round((machine_cpu()[1] - machine_before[1]) / elapsed, 2)
        after, busy = asyncio.run(sent(url, sending))
    if scenario.send:
        row["emails_per_s"] = round((after - before) / elapsed, 1)
        if not busy:
            row["note"] = (
                "the send finished before the measurement: raise BENCH_UNDER_SEND_RECIPIENTS"
            )
        elif after == before:
            row["note"] = "the send was starved: nothing sent during the measurement"
    return row


def run_scenarios(
    url: str, paths: list[str], sending: int, env: dict[str, str], workdir: Path, node: pods.Node
) -> list[dict]:
    rows = [run_scenario(s, url, paths, sending, env, workdir, node) for s in SCENARIOS]
    alone, same, split, equal, worker_alone = rows
    for row in (same, split, equal):
        row["rps_x"] = round(row["rps"] / alone["rps"], 2)
        row["p99_x"] = round(row["p99_ms"] / alone["p99_ms"], 2) if alone.get("p99_ms") else None
    for row in (split, equal):
        if worker_alone["emails_per_s"]:
            row["emails_x"] = round(row["emails_per_s"] / worker_alone["emails_per_s"], 2)
    split["target"] = "rps >= 0.9x, p99 <= 1.5x " + (
        "met" if split["rps_x"] >= 0.9 and (split["p99_x"] or 99) <= 1.5 else "NOT met"
    )
    return rows


def main() -> list[dict]:
    import pgserver

    load = os.getloadavg()
    with (
        pods.Node(bench_pods()) as node,
        tempfile.TemporaryDirectory(prefix="bench-under-send-") as directory,
        smtp_sink() as port,
    ):
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
            rows = run_scenarios(url, paths, sending, env, Path(directory), node)
        finally:
            server.cleanup()
    for row in rows:
        row["connections"] = CONNECTIONS
        row["load_avg_1m"] = round(load[0], 2)
    return rows


if __name__ == "__main__":
    for row in main():
        print(row)
