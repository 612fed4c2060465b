"""One rule for running a transaction again when PostgreSQL aborted it for a lock conflict.

PostgreSQL breaks a deadlock by aborting one of the transactions in it with SQLSTATE
40P01 (deadlock_detected); under REPEATABLE READ or SERIALIZABLE a conflicting update
aborts one with 40001 (serialization_failure). Both leave the database as if the
transaction never ran, and PostgreSQL's documentation says to retry the whole transaction
(https://www.postgresql.org/docs/current/mvcc-serialization-failure-handling.html). No
other error is retried here: a lost database is "unavailable" (`connections.UNAVAILABLE`,
answered 503) and anything else is a bug.

The retry starts at once: the transaction that won still holds its locks, so the new
attempt simply waits behind it. ATTEMPTS bounds the work a pathological lock order can
cause; the last error is raised.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

T = TypeVar("T")

ATTEMPTS = 3
RETRIED: tuple[type[Exception], ...] = (
    asyncpg.DeadlockDetectedError,  # 40P01
    asyncpg.SerializationError,  # 40001
)


async def run(
    pool: asyncpg.Pool,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    attempts: int = ATTEMPTS,
) -> T:
    """`work` on a pooled connection, again (on a fresh one) when PostgreSQL aborted it
    for a deadlock or a serialization failure. `work` must do all its writes in one
    transaction, or a retry would repeat the ones already committed."""
    for attempt in range(1, attempts + 1):
        try:
            async with pool.acquire() as con:
                return await work(con)
        except RETRIED:
            if attempt >= attempts:
                raise
    raise ValueError(f"attempts must be at least 1, not {attempts}")
