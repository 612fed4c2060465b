"""Several replicas on one database: real `python -m service serve` processes.

Kubernetes starts the replicas of a rollout at the same moment; each `serve` applies
pending migrations at start (unless --no-migrate). The migration runner's advisory
lock must make that safe: every file applied once, by one of them, and all ready.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.db import migrations
from tests import support

REPLICAS = 3


@pytest.fixture
async def empty_database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A database with no schema at all, as on the first deployment."""
    name = f"t_empty_{uuid.uuid4().hex[:12]}"
    con = await asyncpg.connect(pg_admin_url)
    try:
        await con.execute(f'CREATE DATABASE "{name}"')
    finally:
        await con.close()
    yield support.with_database(pg_admin_url, name)
    await support.drop_database(pg_admin_url, name)


def applied_events(output: str) -> list[str]:
    files = []
    for line in output.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "migration applied":
            files.append(entry["file"])
    return files


@pytest.mark.slow
async def test_replicas_started_together_apply_each_migration_once_and_all_become_ready(
    empty_database_url: str, smtp: support.SmtpSink
) -> None:
    env = support.base_env(empty_database_url, smtp.url)
    replicas = [support.ServiceProcess(env) for _ in range(REPLICAS)]
    try:
        for replica in replicas:
            replica.start()
        await asyncio.gather(*(r.wait_ready(timeout=60, path="/readyz") for r in replicas))

        expected = [m.name for m in migrations.discover()]
        con = await asyncpg.connect(empty_database_url)
        try:
            rows = await con.fetch("SELECT name, sha256 FROM schema_migrations ORDER BY name")
        finally:
            await con.close()
        assert [r["name"] for r in rows] == sorted(expected)
        checksums = {m.name: m.checksum for m in migrations.discover()}
        assert all(r["sha256"] == checksums[r["name"]] for r in rows)

        # Each file was applied by exactly one replica; the others found nothing to do.
        applied = Counter(f for r in replicas for f in applied_events(r.output()))
        assert applied == Counter(expected), {r.port: r.output()[-2000:] for r in replicas}
    finally:
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        # uvicorn finishes its graceful shutdown, then re-raises SIGTERM on itself.
        assert replica.proc is not None and replica.proc.returncode in (0, -signal.SIGTERM)
        assert "Application shutdown complete." in replica.output()


@pytest.mark.slow
async def test_migrate_jobs_started_together_apply_each_migration_once(
    empty_database_url: str,
) -> None:
    """The migration Job retried or run twice by a pipeline: all succeed, once each."""
    env = support.base_env(empty_database_url, "smtp://127.0.0.1:25")
    for name in ("SMTP_URL", "PUBLIC_URL", "SECRET_KEYS", "ADMIN_TOKENS"):
        env.pop(name)  # `migrate` needs only DATABASE_URL
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "migrate",
            env=env,
            cwd=support.ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(REPLICAS)
    ]
    outputs = await asyncio.wait_for(
        asyncio.gather(*(p.communicate() for p in processes)), timeout=120
    )
    logs = [out.decode(errors="replace") for out, _ in outputs]
    assert [p.returncode for p in processes] == [0] * REPLICAS, logs
    expected = [m.name for m in migrations.discover()]
    applied = Counter(f for log in logs for f in applied_events(log))
    assert applied == Counter(expected), logs
    con = await asyncpg.connect(empty_database_url)
    try:
        names = await con.fetch("SELECT name FROM schema_migrations ORDER BY name")
    finally:
        await con.close()
    assert [r["name"] for r in names] == sorted(expected)
