"""The asyncpg connection pool, configured from settings."""

from __future__ import annotations

import asyncpg

from service.settings import Settings

# The database cannot be reached or the connection broke: answer 503 and let the
# client retry, rather than 500 (asyncpg raises InternalClientError for a connection
# left mid-operation by a dropped server).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,  # database not accepting connections
    OSError,
    TimeoutError,
)


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


async def create_pool(settings: Settings) -> asyncpg.Pool:
    """A pool that also works behind PgBouncer in transaction mode.

    With `DB_STATEMENT_CACHE_SIZE=0` asyncpg uses unnamed prepared statements only, which
    PgBouncer's transaction pooling requires.
    """
    return await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        statement_cache_size=settings.db_statement_cache_size,
        command_timeout=settings.db_command_timeout,
        init=_init_connection,
        reset=_reset_connection,
        # In the startup packet, UTC is also the session default RESET ALL returns to.
        server_settings={"application_name": "newsletter", "timezone": "UTC"},
    )


async def connect(settings: Settings) -> asyncpg.Connection:
    """A single connection for one-shot commands (migrate, purge).

    It goes to DATABASE_DIRECT_URL when set: migrations hold a session-level advisory
    lock, which a transaction-mode pooler would not keep on one server connection.
    """
    con = await asyncpg.connect(
        settings.direct_database_url,
        statement_cache_size=settings.db_statement_cache_size,
        command_timeout=max(settings.db_command_timeout, 300),
        server_settings={"application_name": "newsletter-cli", "timezone": "UTC"},
    )
    await _init_connection(con)
    return con
