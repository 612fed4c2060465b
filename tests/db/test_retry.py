"""The one deadlock-retry rule (service/db/retry.py), against a real PostgreSQL: a real
deadlock between two connections, and errors raised by the server with their SQLSTATE."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from service.db import retry

RAISE = "DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{}'; END $$"


@pytest.fixture
async def pool(database_url: str, db: asyncpg.Connection):
    await db.execute(
        "CREATE TABLE probe (id int PRIMARY KEY, n int NOT NULL);"
        " INSERT INTO probe VALUES (1, 0), (2, 0)"
    )
    made = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    yield made
    await made.close()


async def _waiting_for_a_lock(db: asyncpg.Connection, pid: int) -> None:
    for _ in range(500):
        if await db.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the first transaction never waited for the second's lock")


async def test_a_real_deadlock_is_run_again_and_then_succeeds(pool, database_url, db) -> None:
    """Two transactions lock rows 1 and 2 in opposite orders. The helper's waits first, so
    PostgreSQL's deadlock check (after deadlock_timeout) aborts it with 40P01; the other
    commits, and the second attempt goes through.

    A backend checks for a deadlock once, deadlock_timeout after it began to wait. Under
    load the cycle could close after the helper's check had found none, and the other
    transaction's later check would abort the other one instead (seen once in CI). So the
    helper's check waits longer than the cycle takes to close and the other's longer still,
    where the role may set them (superuser; the embedded server's role is one)."""
    other = await asyncpg.connect(database_url)
    may_set = await db.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    first_locked, other_locked, other_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    attempts: list[int] = []

    async def work(con: asyncpg.Connection) -> str:
        attempts.append(con.get_server_pid())
        if len(attempts) > 1:
            # The retry starts once the other transaction committed: started while the
            # other still waited for row 1, it could take that row first and close a
            # second cycle (seen once: three attempts). That race is not this test's.
            await other_done.wait()
        async with con.transaction():
            if may_set:
                await con.execute("SET LOCAL deadlock_timeout = '3s'")
            await con.execute("UPDATE probe SET n = n + 1 WHERE id = 1")
            if len(attempts) == 1:
                first_locked.set()
                await other_locked.wait()
            await con.execute("UPDATE probe SET n = n + 1 WHERE id = 2")
        return "done"

    async def opposite_order() -> None:
        await first_locked.wait()
        async with other.transaction():
            if may_set:
                await other.execute("SET LOCAL deadlock_timeout = '60s'")
            await other.execute("UPDATE probe SET n = n + 10 WHERE id = 2")
            other_locked.set()
            await _waiting_for_a_lock(db, attempts[0])
            await other.execute("UPDATE probe SET n = n + 10 WHERE id = 1")
        other_done.set()

    try:
        result, _ = await asyncio.wait_for(
            asyncio.gather(retry.run(pool, work), opposite_order()), 30
        )
    finally:
        await other.close()
    assert result == "done" and len(attempts) == 2
    # The aborted attempt left nothing; the other transaction and the retry both count.
    assert dict(await db.fetch("SELECT id, n FROM probe ORDER BY id")) == {1: 11, 2: 11}


@pytest.mark.parametrize("sqlstate", ["40P01", "40001"])
async def test_deadlock_and_serialization_failure_are_retried_up_to_attempts(
    pool, db, sqlstate
) -> None:
    calls: list[int] = []

    async def always_aborted(con: asyncpg.Connection) -> None:
        calls.append(1)
        async with con.transaction():
            await con.execute("UPDATE probe SET n = n + 1 WHERE id = 1")
            await con.execute(RAISE.format(sqlstate))

    with pytest.raises(retry.RETRIED) as raised:
        await retry.run(pool, always_aborted)
    assert raised.value.sqlstate == sqlstate
    assert len(calls) == retry.ATTEMPTS == 3
    assert await db.fetchval("SELECT n FROM probe WHERE id = 1") == 0  # all rolled back

    calls.clear()

    async def aborted_once(con: asyncpg.Connection) -> int:
        calls.append(1)
        if len(calls) == 1:
            await con.execute(RAISE.format(sqlstate))
        return len(calls)

    assert await retry.run(pool, aborted_once) == 2


async def test_other_errors_are_not_retried(pool) -> None:
    calls: list[int] = []

    async def unique_violation(con: asyncpg.Connection) -> None:
        calls.append(1)
        await con.execute("INSERT INTO probe VALUES (1, 0)")

    with pytest.raises(asyncpg.UniqueViolationError):
        await retry.run(pool, unique_violation)
    assert len(calls) == 1


def test_the_three_former_loops_use_the_helper() -> None:
    """Erasure, tracking withdrawal and bounce actions had a loop each; none is left."""
    from pathlib import Path

    import service

    root = Path(service.__file__).parent
    for path in ("privacy/erasure.py", "tracking/consent.py", "bounces/actions.py"):
        text = (root / path).read_text()
        assert "retry.run(" in text and "DeadlockDetectedError" not in text, path
