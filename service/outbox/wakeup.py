"""A delivery loop's sleep that a NOTIFY cuts short: the outbox's email lanes and the
events loop each have one.

LISTEN runs on a connection of its own to DATABASE_DIRECT_URL (a transaction-mode pooler
does not keep a LISTEN); when it cannot be opened the loop goes on polling and tries
again after a poll interval (at least a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg

from service.db import connections
from service.settings import Settings

log = logging.getLogger("newsletter.outbox")

ERRORS = (asyncpg.PostgresError, *connections.UNAVAILABLE)


class Wakeup:
    def __init__(self, settings: Settings, channel: str, what: str) -> None:
        self.settings = settings
        self.channel = channel
        self.what = what  # "outbox" or "event": the log line says whose listener failed
        self._event = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._retry_at = 0.0

    def set(self) -> None:
        self._event.set()

    async def sleep(self, seconds: float) -> None:
        """Sleeps `seconds`, or until `set()` or a NOTIFY on the channel."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout=max(seconds, 0.01))
        self._event.clear()

    async def listen(self) -> None:
        """Makes sure the LISTEN connection is open (cheap when it is)."""
        if self._listener is not None and not self._listener.is_closed():
            return
        if time.monotonic() < self._retry_at:
            return
        try:
            con = await connections.open_connection(self.settings.direct_database_url, timeout=5)
            await con.add_listener(self.channel, lambda *_: self._event.set())
        except ERRORS as exc:
            self._retry_at = time.monotonic() + max(self.settings.outbox_poll_interval, 1)
            log.warning(
                f"{self.what} listener unavailable", extra={"error": exc.__class__.__name__}
            )
            return
        self._listener = con
        self._event.set()  # work may have been queued while nobody listened

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(*ERRORS):
                await self._listener.close(timeout=2)
            self._listener = None
