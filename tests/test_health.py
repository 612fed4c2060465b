import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service.db import migrations
from tests import pgbouncer, suite_runtime, support
from tests.conftest import running


async def test_healthz_answers_without_touching_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ok_when_the_database_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


@contextlib.contextmanager
def own_server() -> Iterator[Any]:
    """A PostgreSQL of the test's own (a copy of the run's initdb), so stopping it disturbs
    no other test; deleted afterwards."""
    import pgserver

    directory = Path(tempfile.mkdtemp(prefix="newsletter-test-own-pg-"))
    server = pgserver.get_server(
        suite_runtime.fresh_pgdata(directory / "pg"), cleanup_mode="delete"
    )
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


# It starts servers of its own (processes), hence `slow`; `floors` runs it in the PgBouncer
# pass too, where it once hung: there the app reaches its server through a PgBouncer of its
# own in transaction mode, and the outbox's LISTEN connection goes to the server directly,
# as every other test's app does in that pass. The hang: a probe's `pool.acquire()` cut
# short by a timeout leaves asyncpg's pool waiting forever for that connection in
# `Pool.close()` (`wait_until_released`); PgBouncer makes it likely, since it accepts the
# connection at once and holds the first query up to `query_wait_timeout`. With the probe
# of before (`asyncio.timeout` around the acquire) and an unbounded close, this test hung
# there in 1 of 6 runs through PgBouncer at asyncpg 0.30; with the probe never cut short
# (health.DatabaseProbe) and the close bounded (db.close_pool), 12 of 12 passed.
@pytest.mark.slow
@pytest.mark.floors
async def test_readyz_goes_503_while_the_database_is_stopped_and_recovers(make_settings) -> None:
    from pgserver._commands import pg_ctl

    with own_server() as server, contextlib.ExitStack() as stack:
        url = server.get_uri()
        con = await asyncpg.connect(url)
        await migrations.migrate(con)
        await con.close()
        overrides: dict[str, Any] = {"database_url": url, "database_direct_url": url}
        if os.environ.get("TEST_VIA_PGBOUNCER") == "1":
            bouncer = stack.enter_context(pgbouncer.running(url))
            overrides.update(database_url=bouncer.url_for(url), db_statement_cache_size=0)
        async with (
            asyncio.timeout(60),
            running(make_settings(**overrides)) as (_app, client),
        ):
            assert (await client.get("/readyz")).status_code == 200

            await asyncio.to_thread(
                pg_ctl, ["-m", "fast", "-w", "stop"], pgdata=server.pgdata, user=server.system_user
            )
            down = await client.get("/readyz")
            assert down.status_code == 503
            assert down.headers["Retry-After"]
            assert (await client.get("/healthz")).status_code == 200
            # Probes that pile up while it is down share one query and take no more of
            # the pool's connections.
            answers = await asyncio.gather(*(client.get("/readyz") for _ in range(10)))
            assert {answer.status_code for answer in answers} == {503}

            await asyncio.to_thread(server.ensure_postgres_running)
            for _ in range(100):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("readiness did not come back after the database restarted")
        # Leaving `running` stopped the app; the timeout above turns a hang into a failure.


async def test_unknown_path_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/no/such/page")).status_code == 404


async def test_health_routes_refuse_other_methods(client: httpx.AsyncClient) -> None:
    assert (await client.post("/healthz")).status_code == 405


def test_test_keys_are_long_enough() -> None:
    assert len(support.TEST_KEY) >= 32 and len(support.OLD_TEST_KEY) >= 32
