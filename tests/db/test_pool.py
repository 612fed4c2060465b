"""The pool's bounded wait for a free connection (service/db/connections.Pool)."""

from __future__ import annotations

import asyncio

from service.db import connections

# A hang is a failure here, not a wait for the suite's timeout.
HANG = 60.0


async def test_a_request_that_finds_every_connection_busy_answers_503(
    app_factory, admin_headers
) -> None:
    """Before, `acquire()` waited forever: a request hung as long as the pool stayed
    busy (in CI, past the test's 120 s while the database was cut off)."""
    async with app_factory(db_pool_min=1, db_pool_max=1, db_command_timeout=0.5) as (app, client):
        async with app.state.pool.acquire(timeout=HANG):  # the one connection, held
            response = await asyncio.wait_for(
                client.get("/admin/api/subscribers/ada@example.com", headers=admin_headers),
                HANG,
            )
        assert response.status_code == 503
        assert response.headers["retry-after"] == connections.RETRY_AFTER
        # Given back, the connection serves the next request.
        again = await client.get("/admin/api/subscribers/ada@example.com", headers=admin_headers)
        assert again.status_code == 404


async def test_the_bound_is_the_command_timeout_but_not_under_a_connects_time(
    make_settings,
) -> None:
    for command_timeout, bound in ((10.0, 10.0), (0.1, connections.Pool.MIN_ACQUIRE_TIMEOUT)):
        settings = make_settings(db_pool_min=0, db_command_timeout=command_timeout)
        pool = await connections.create_pool(settings)
        try:
            assert pool.acquire_timeout == bound
        finally:
            await connections.close_pool(pool)


async def test_an_explicit_timeout_still_wins(make_settings) -> None:
    """With the pool's own bound at 600 s, a waiting acquire given 0.2 s gives up: were
    the pool's bound used, the wait would outlast the hang guard."""
    settings = make_settings(db_pool_min=1, db_pool_max=1, db_command_timeout=600)
    pool = await connections.create_pool(settings)
    try:
        assert isinstance(pool, connections.Pool) and pool.acquire_timeout == 600
        async with pool.acquire():

            async def second() -> None:
                async with pool.acquire(timeout=0.2):
                    raise AssertionError("the pool's one connection was given twice")

            waiting = asyncio.ensure_future(second())
            done, _ = await asyncio.wait({waiting}, timeout=HANG)
            assert waiting in done, "the acquire waited for the pool's bound"
            assert isinstance(waiting.exception(), TimeoutError)
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await connections.close_pool(pool)
