"""The asyncpg connection pool, configured from settings, and what "unavailable" means."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from service.settings import Settings

log = logging.getLogger("newsletter.db")


class CannotConnect(Exception):
    """Opening a connection to the database failed, whatever the reason.

    Refused, reset or timed-out sockets, a database not accepting connections (SQLSTATE
    55000), too many connections (53300), a server starting up (57P03): at connect time
    every one of them means "not now", while the same classes raised by a query can be a
    bug. The pool and the one-shot connections open theirs through `open_connection`, so
    the distinction is made where it is known.
    """


# The one definition of "the database is unavailable": the request may succeed if it is
# retried later, so it is answered 503 with RETRY_AFTER, never 500. SQLSTATE class 08 is
# "connection exception"; 57P01 admin_shutdown, 57P02 crash_shutdown and 57P03
# cannot_connect_now are the server going away or not yet back
# (https://www.postgresql.org/docs/current/errcodes-appendix.html). Any other database
# error is a bug and surfaces as a 500.
UNAVAILABLE: tuple[type[Exception], ...] = (
    CannotConnect,
    asyncpg.PostgresConnectionError,  # class 08, incl. "connection was closed mid-operation"
    # asyncpg's "cannot switch to state …": the first use of a pooled connection that the
    # server ended while it sat idle (seen on every pg_terminate_backend); nothing was sent.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.AdminShutdownError,  # 57P01
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.CannotConnectNowError,  # 57P03
)


def is_unavailable(exc: BaseException) -> bool:
    """UNAVAILABLE, or asyncpg's InterfaceError "connection is closed": a query on a
    connection the server had already ended (its goodbye arrived before the query; when it
    arrives during the query asyncpg raises ConnectionDoesNotExistError, class 08). Other
    InterfaceErrors ("another operation is in progress", …) are bugs."""
    if isinstance(exc, UNAVAILABLE):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)


# Seconds a client is asked to wait before retrying, on every 503 the service gives.
RETRY_AFTER = "5"


async def open_connection(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """`asyncpg.connect`, with any failure to connect raised as CannotConnect."""
    try:
        return await asyncpg.connect(dsn, **kwargs)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CannotConnect(f"{exc.__class__.__name__}: {exc}") from exc


async def _init_connection(con: asyncpg.Connection) -> None:
    # Every timestamp the service writes or compares is UTC.
    await con.execute("SET TIME ZONE 'UTC'")


# asyncpg's own reset on release, plus UTC again at its end, in one round trip. Behind
# PgBouncer in transaction mode RESET ALL lands on some server connection and PgBouncer
# then replays that connection's time zone to this client's later transactions.
RESET_QUERY = (
    "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL; SET TIME ZONE 'UTC';"
)


async def _reset_connection(con: asyncpg.Connection) -> None:
    # The pool has already rolled back any open transaction (Connection._reset()).
    await con.execute(RESET_QUERY)


class Pool(asyncpg.Pool):
    """asyncpg's pool, where waiting for a free connection is bounded too.

    `acquire()` without a timeout waits forever, and every `pool.fetch…()` is one. When
    the pool's connections are all busy, or held by a slot asyncpg failed to give back
    during a database outage (see `close_pool`), a request would hang instead of
    answering 503: CI saw a confirm request hang past its 120 s test timeout while the
    database was cut off. A wait longer than `acquire_timeout` raises TimeoutError,
    which every endpoint answers as "unavailable" (503 + Retry-After).
    """

    # The bound is DB_COMMAND_TIMEOUT, but never under this: an acquire may open a new
    # connection (TLS, a pooler's login), which a short statement limit says nothing about.
    MIN_ACQUIRE_TIMEOUT = 2.0

    def __init__(self, *args: Any, acquire_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


async def create_pool(settings: Settings) -> asyncpg.Pool:
    """A pool that also works behind PgBouncer in transaction mode.

    With `DB_STATEMENT_CACHE_SIZE=0` asyncpg uses unnamed prepared statements only, which
    PgBouncer's transaction pooling requires. Waiting for a free connection takes at most
    DB_COMMAND_TIMEOUT (at least Pool.MIN_ACQUIRE_TIMEOUT), as a statement does.
    """
    # asyncpg.create_pool's own defaults, spelt out: Pool's constructor has none.
    return await Pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        connect=open_connection,
        setup=None,
        init=_init_connection,
        reset=_reset_connection,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        acquire_timeout=max(settings.db_command_timeout, Pool.MIN_ACQUIRE_TIMEOUT),
        statement_cache_size=settings.db_statement_cache_size,
        command_timeout=settings.db_command_timeout,
        # In the startup packet, UTC is also the session default RESET ALL returns to.
        server_settings={"application_name": "newsletter", "timezone": "UTC"},
    )


# Seconds a stopping replica waits for its pool's connections to come back. By then the
# server has finished its requests and the outbox, recorder and retention have stopped.
POOL_CLOSE_GRACE = 10.0


async def close_pool(pool: asyncpg.Pool, grace: float = POOL_CLOSE_GRACE) -> None:
    """`pool.close()`, bounded: asyncpg waits forever for a connection still marked in use,
    and one can be left so when an acquire is cancelled at the wrong moment
    (MagicStack/asyncpg#547, #955; seen with asyncpg 0.30 while the database restarted).
    A replica must stop anyway: after `grace` seconds the rest is terminated."""
    closing = asyncio.ensure_future(pool.close())
    done, _ = await asyncio.wait({closing}, timeout=grace)
    if done:
        try:
            closing.result()
        except TimeoutError:
            # asyncpg closes each connection within its command_timeout (DB_COMMAND_TIMEOUT):
            # a short one on a busy server runs out while the server says goodbye. The pool
            # has terminated the rest before raising; the replica stops all the same.
            log.warning("database pool closed by terminating: a connection was slow to close")
        return
    log.warning(
        "database pool did not close in time; terminated",
        extra={"count": pool.get_size() - pool.get_idle_size()},  # connections still in use
    )
    closing.cancel()  # Pool.close() terminates every connection when it is cancelled
    with contextlib.suppress(asyncio.CancelledError):
        await closing


# The time a statement known to be long may take (queueing a million emails takes about
# 20 s; a migration or a purge longer): it replaces DB_COMMAND_TIMEOUT for those alone.
LONG_COMMAND_TIMEOUT = 300.0


async def connect(settings: Settings, command_timeout: float | None = None) -> asyncpg.Connection:
    """A single connection for one-shot commands (migrate, purge), the periodic retention
    pass, and for queueing a scheduled send (service/campaigns/schedule.py), which may
    outlast DB_COMMAND_TIMEOUT (the default `command_timeout` is the longer of the two).

    It goes to DATABASE_DIRECT_URL when set: migrations and the retention pass hold a
    session-level advisory lock, which a transaction-mode pooler would not keep on one
    server connection.
    """
    if command_timeout is None:
        command_timeout = max(settings.db_command_timeout, LONG_COMMAND_TIMEOUT)
    con = await open_connection(
        settings.direct_database_url,
        statement_cache_size=settings.db_statement_cache_size,
        command_timeout=command_timeout,
        server_settings={"application_name": "newsletter-cli", "timezone": "UTC"},
    )
    await _init_connection(con)
    return con
