import asyncio

import asyncpg
import httpx
import pytest

from service import migrations
from tests import support
from tests.conftest import running


async def test_healthz_answers_without_touching_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ok_when_the_database_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


# It starts a PostgreSQL server of its own (a process), hence `slow`. It used to hang now
# and then (1 run in 10 with asyncpg 0.30 through PgBouncer) in pool.close(), waiting for
# a connection left marked in use: probes are no longer cut short (health.DatabaseProbe)
# and the app's close is bounded (db.close_pool, tested in test_database_errors.py).
@pytest.mark.slow
async def test_readyz_goes_503_while_the_database_is_stopped_and_recovers(
    tmp_path, make_settings
) -> None:
    """A server of its own, so stopping it disturbs no other test."""
    import pgserver
    from pgserver._commands import pg_ctl

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="delete")
    try:
        url = server.get_uri()
        con = await asyncpg.connect(url)
        await migrations.migrate(con)
        await con.close()
        async with (
            asyncio.timeout(120),
            running(make_settings(database_url=url)) as (_app, client),
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
            for _ in range(50):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("readiness did not come back after the database restarted")
        # Leaving `running` stopped the app; the timeout above turns a hang into a failure.
    finally:
        server.cleanup()


async def test_unknown_path_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/no/such/page")).status_code == 404


async def test_health_routes_refuse_other_methods(client: httpx.AsyncClient) -> None:
    assert (await client.post("/healthz")).status_code == 405


def test_test_keys_are_long_enough() -> None:
    assert len(support.TEST_KEY) >= 32 and len(support.OLD_TEST_KEY) >= 32
