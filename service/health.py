"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

READY_TIMEOUT = 2.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the database answers a query within READY_TIMEOUT seconds."""
    pool = request.app.state.pool
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            async with pool.acquire() as con:
                await con.fetchval("SELECT 1")
    except Exception as exc:  # any failure means "not ready"; the class says why
        return JSONResponse(
            {"status": "unavailable", "database": exc.__class__.__name__},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return JSONResponse({"status": "ok", "database": "ok"})


async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
