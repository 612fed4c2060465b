"""The service through a real PgBouncer in transaction pooling mode.

In production the replicas reach PostgreSQL through CloudNativePG's Pooler
(k8s/postgres/pooler.yaml) with DB_STATEMENT_CACHE_SIZE=0. Here the same: Debian's
pgbouncer in transaction mode in front of the test server, the app built with that
setting, and real queries from many tasks at once. A control test shows why the
setting exists: with asyncpg's named statement cache the same traffic fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests import pgbouncer
from tests.conftest import running

# slow: every test here runs PgBouncer processes.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(pgbouncer.executable() is None, reason=pgbouncer.NOT_INSTALLED),
]


@pytest.fixture(scope="module")
def bouncer(pg_admin_url: str) -> Iterator[pgbouncer.PgBouncer]:
    with pgbouncer.running(pg_admin_url, pool_mode="transaction") as running_bouncer:
        yield running_bouncer


async def test_one_client_connection_is_served_by_several_backends(bouncer, database_url) -> None:
    """Proves the fixture pools per transaction: the premise of every other test here."""
    url = bouncer.url_for(database_url)
    first = await asyncpg.connect(url, statement_cache_size=0)
    second = await asyncpg.connect(url, statement_cache_size=0)
    try:
        before = await first.fetchval("SELECT pg_backend_pid()")
        async with second.transaction():
            # `second` now holds the backend `first` just used (PgBouncer reuses the
            # most recently released one), so `first` must get another.
            held = await second.fetchval("SELECT pg_backend_pid()")
            during = await first.fetchval("SELECT pg_backend_pid()")
        assert held == before
        assert during != before
    finally:
        await first.close()
        await second.close()


async def test_named_prepared_statements_break_in_transaction_mode(bouncer, database_url) -> None:
    """Why DB_STATEMENT_CACHE_SIZE=0: a cached statement lives on one backend only."""
    url = bouncer.url_for(database_url)
    cached = await asyncpg.connect(url, statement_cache_size=100)
    other = await asyncpg.connect(url, statement_cache_size=0)
    try:
        assert await cached.fetchval("SELECT $1::int + 1", 1) == 2  # prepared on backend A
        async with other.transaction():
            await other.fetchval("SELECT 1")  # holds backend A
            with pytest.raises(asyncpg.PostgresError):
                await cached.fetchval("SELECT $1::int + 1", 2)  # runs on backend B
    finally:
        await cached.close()
        await other.close()


@pytest.mark.parametrize("via", ["pgbouncer", "direct"])
async def test_service_is_ready_and_answers_concurrent_queries_in_utc(
    via, bouncer, database_url, db, make_settings
) -> None:
    # A database whose default time zone is not UTC, so the pool's UTC is what shows.
    name = urlsplit(database_url).path.lstrip("/")
    await db.execute(f"ALTER DATABASE \"{name}\" SET timezone = 'America/New_York'")
    url = bouncer.url_for(database_url) if via == "pgbouncer" else database_url
    settings = make_settings(database_url=url, db_statement_cache_size=0, db_pool_max=8)
    async with running(settings) as (app, client):
        pool = app.state.pool

        async def transaction(i: int) -> tuple[int, str]:
            async with pool.acquire() as con, con.transaction():
                await con.execute(
                    "INSERT INTO list_daily (day, signups) VALUES (DATE '2020-01-01' + $1::int, $2)",
                    i,
                    i,
                )
                value = await con.fetchval(
                    "SELECT signups FROM list_daily WHERE day = DATE '2020-01-01' + $1::int", i
                )
                zone = await con.fetchval("SHOW TIME ZONE")
            return value, zone

        async def hold_a_backend() -> None:
            # Another client in a transaction: the pool's next transactions must land on
            # other backends than the ones they last used.
            async with pool.acquire() as con, con.transaction():
                await con.execute("SELECT pg_sleep(0.05)")

        probes = [client.get("/readyz") for _ in range(20)]
        results = await asyncio.gather(
            *(transaction(i) for i in range(60)), *probes, hold_a_backend()
        )
        rows, answers = results[:60], results[60:80]
        assert [value for value, _ in rows] == list(range(60))
        # Every transaction sees UTC, on whichever server connection it lands.
        assert {zone for _, zone in rows} == {"UTC"}
        assert [r.status_code for r in answers] == [200] * 20
        assert await pool.fetchval("SELECT count(*) FROM list_daily") == 60
        assert await pool.fetchval("SHOW TIME ZONE") == "UTC"
        assert (await client.get("/metrics")).status_code == 200


async def test_pool_survives_a_pgbouncer_restart(pg_admin_url, database_url, make_settings) -> None:
    """A Pooler pod replaced during a rollout: readiness dips, then recovers by itself."""
    first = pgbouncer.PgBouncer(pg_admin_url).start()
    port = first.port
    try:
        settings = make_settings(
            database_url=first.url_for(database_url), db_statement_cache_size=0
        )
        async with running(settings) as (_app, client):
            assert (await client.get("/readyz")).status_code == 200
            first.stop()
            assert (await client.get("/readyz")).status_code == 503
            replacement = pgbouncer.PgBouncer(pg_admin_url)
            replacement.port = port
            replacement.start()
            try:
                for _ in range(100):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("readiness did not recover after PgBouncer came back")
            finally:
                replacement.stop()
    finally:
        first.stop()
