"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

import asyncio

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.db import connections
from service.db.queries import queries

breaker_q = queries("breaker")

READY_TIMEOUT = 2.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


class DatabaseProbe:
    """One readiness query at a time, never cancelled half-way.

    Cancelling `pool.acquire()` while it connects (a timeout around it) can leave asyncpg's
    pool believing the connection is still in use (MagicStack/asyncpg#547, #955): the
    pool then never closes and a replica hangs on shutdown; it was seen while the database
    was stopped. So the probe runs as a task of its own that finishes by itself (the
    connect and command timeouts bound it), the request waits for it at most
    READY_TIMEOUT, and while it runs, further probes (kubelet asks every few seconds)
    wait for the same one instead of taking more pool connections.
    """

    def __init__(self) -> None:
        self._running: asyncio.Task[None] | None = None

    async def check(self, pool: asyncpg.Pool) -> None:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._query(pool))
            # Its outcome is read here even when no request waits for it any more.
            self._running.add_done_callback(lambda task: task.cancelled() or task.exception())
        await asyncio.wait_for(asyncio.shield(self._running), READY_TIMEOUT)

    @staticmethod
    async def _query(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as con:
            await con.fetchval("SELECT 1")


async def readyz(request: Request) -> Response:
    """Ready when the database answers a query within READY_TIMEOUT seconds."""
    state = request.app.state
    try:
        await state.database_probe.check(state.pool)
    except Exception as exc:  # any failure means "not ready"; the class says why
        return JSONResponse(
            {"status": "unavailable", "database": exc.__class__.__name__},
            status_code=503,
            headers={"Retry-After": connections.RETRY_AFTER},
        )
    return JSONResponse({"status": "ok", "database": "ok"})


async def metrics(request: Request) -> Response:
    state = request.app.state
    registry = state.metrics.registry
    await _paused_campaigns(state)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def _paused_campaigns(state: object) -> None:
    """The paused-campaigns gauge, read from the database at each scrape (the pause is
    the deployment's, not one process's); left as it was when the database is away."""
    gauge = state.metrics.campaigns_paused  # type: ignore[attr-defined]
    try:
        rows = await breaker_q.paused_by_reason.fetch(state.pool)  # type: ignore[attr-defined]
    except (asyncpg.PostgresError, *connections.UNAVAILABLE, TimeoutError):
        return
    gauge.clear()
    for row in rows:
        gauge.labels(row["reason"] or "other").set(row["n"])
