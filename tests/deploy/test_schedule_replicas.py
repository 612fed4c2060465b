"""Scheduled sends with real processes: a schedule made through a `serve --no-worker`
process survives the restart of the only worker, comes due while no worker runs, and is
then sent exactly once by two `newsletter worker` processes started together; a schedule
that comes due while both run is sent once too."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from tests import support
from tests.deploy.test_replicas_behaviour import ADMIN, active_subscribers, until

pytestmark = pytest.mark.slow

PEOPLE = 20
LATER_S = 6.0  # the first schedules' distance: time for the first worker to start and stop


@contextlib.asynccontextmanager
async def started_workers(
    envs: list[dict[str, str]],
) -> AsyncIterator[list[support.ServiceProcess]]:
    """`newsletter worker` processes, started together, always stopped (in threads: the
    event loop also runs the SMTP sink they talk to)."""
    processes = [support.ServiceProcess(env, command="worker") for env in envs]
    try:
        for process in processes:
            process.start()
        await asyncio.gather(*(p.wait_ready(timeout=60, path="/readyz") for p in processes))
        yield processes
    finally:
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in processes))


async def schedule(web: support.ServiceProcess, name: str, at: datetime) -> int:
    async with httpx.AsyncClient(base_url=web.url, headers=ADMIN, timeout=30) as client:
        created = await client.post(
            "/admin/api/campaigns",
            json={"name": name, "subject": name, "html": "<p>Hello</p>", "text": "Hello"},
        )
        assert created.status_code == 201, created.text
        campaign_id = created.json()["id"]
        answer = await client.post(
            f"/admin/api/campaigns/{campaign_id}/send", json={"at": at.isoformat()}
        )
        assert answer.status_code == 202, answer.text
        return campaign_id


async def all_sent(db: asyncpg.Connection, campaigns: list[int]) -> bool:
    return await db.fetchval(
        "SELECT count(*) = $2 FROM campaigns WHERE id = ANY($1) AND sent = $3",
        campaigns,
        len(campaigns),
        PEOPLE,
    ) and not await db.fetchval("SELECT count(*) FROM outbox")


async def test_a_schedule_survives_a_worker_restart_and_two_workers_send_it_once(
    database_url: str, smtp: support.SmtpSink, db: asyncpg.Connection
) -> None:
    people = await active_subscribers(db, PEOPLE)
    env = support.base_env(
        database_url,
        smtp.url,
        SCHEDULE_POLL_INTERVAL="0.2s",
        OUTBOX_POLL_INTERVAL="0.2s",
        OUTBOX_CONCURRENCY="2",
        OUTBOX_BATCH="5",
    )
    web = support.ServiceProcess(env, "--no-worker")
    first_worker = support.ServiceProcess(env, command="worker")
    web.start()
    try:
        first_worker.start()
        await asyncio.gather(
            web.wait_ready(timeout=60, path="/readyz"),
            first_worker.wait_ready(timeout=60, path="/readyz"),
        )
        at = datetime.now(UTC) + timedelta(seconds=LATER_S)
        early = [await schedule(web, f"Scheduled {n}", at) for n in range(3)]
        await asyncio.to_thread(first_worker.stop)  # a restart: stopped before the time ...
        assert datetime.now(UTC) < at, "the first worker took too long to stop"
        await asyncio.sleep((at - datetime.now(UTC)).total_seconds() + 1.0)
        # ... the time passed with only the web process up: nothing was queued.
        assert await db.fetchval("SELECT count(*) FROM deliveries") == 0
        waiting = await db.fetchval(
            "SELECT count(*) FROM campaigns WHERE id = ANY($1) AND scheduled_at = $2", early, at
        )
        assert waiting == 3

        worker_env = [env, env]  # two replicas, started together, both finding them due
        async with started_workers(worker_env) as workers:
            await until(lambda: all_sent(db, early), "the overdue schedules", timeout=60)
            late = await schedule(
                web, "Scheduled while both run", datetime.now(UTC) + timedelta(seconds=2)
            )
            await until(lambda: all_sent(db, [*early, late]), "the late schedule", timeout=60)
            await asyncio.sleep(1.0)  # a double send would arrive now
            outputs = [w.output() for w in workers]
    finally:
        await asyncio.gather(asyncio.to_thread(web.stop), asyncio.to_thread(first_worker.stop))

    received = Counter((m.message["Subject"], m.to) for m in smtp.messages)
    names = [f"Scheduled {n}" for n in range(3)] + ["Scheduled while both run"]
    assert received == Counter({(name, person): 1 for name in names for person in people})
    rows = await db.fetch(
        "SELECT scheduled_at, recipients, first_sent_at FROM campaigns WHERE id = ANY($1)",
        [*early, late],
    )
    assert all(r["scheduled_at"] is None and r["recipients"] == PEOPLE for r in rows)
    assert all(r["first_sent_at"] >= at for r in rows)
    queued_by = sum(out.count('"scheduled send queued"') for out in outputs)
    assert queued_by == 4  # each schedule queued by exactly one of the two workers
