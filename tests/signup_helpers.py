"""Helpers shared by the sign-up, confirmation and outbox tests."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import asyncpg
import httpx

from tests import support

_LINK = re.compile(r"http://newsletter\.test(/(?:confirm|cancel)/[A-Za-z0-9._-]+)")


async def subscribe(client: httpx.AsyncClient, email: str, **fields: str) -> httpx.Response:
    return await client.post("/subscribe", data={"email": email, **fields})


async def subscribe_json(client: httpx.AsyncClient, payload: object, **kw) -> httpx.Response:
    return await client.post("/subscribe", json=payload, **kw)


def links(message: support.Received) -> dict[str, str]:
    """The confirm and cancel paths of a confirmation email (from its text part)."""
    found = {}
    for path in _LINK.findall(message.part("plain")):
        found[urlsplit(path).path.split("/")[1]] = path
    return found


async def wait_until(
    check: Callable[[], Awaitable[object]], timeout: float = 10.0, interval: float = 0.02
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def table_counts(db: asyncpg.Connection) -> dict[str, int]:
    tables = ("subscribers", "consent_events", "outbox", "rate_limits", "list_daily")
    return {t: await db.fetchval(f"SELECT count(*) FROM {t}") for t in tables}  # noqa: S608


async def outbox_empty(db: asyncpg.Connection) -> bool:
    return await db.fetchval("SELECT count(*) FROM outbox") == 0
