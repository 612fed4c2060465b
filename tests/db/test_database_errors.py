"""One policy for database errors: "unavailable" is a 503 with one Retry-After; any other
database error is a bug, answered 500 and logged with its class (never its message)."""

from __future__ import annotations

import json
import logging

import asyncpg
import pytest

from service.db import connections as database
from service.logs import JsonFormatter
from tests.signup_helpers import subscribe

BUG = """
CREATE FUNCTION test_bug() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'a bug in a query' USING ERRCODE = 'XX000'; END $$;
CREATE TRIGGER test_bug BEFORE INSERT OR UPDATE ON {table}
FOR EACH ROW EXECUTE FUNCTION test_bug();
"""


def _records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


async def test_a_query_that_fails_is_a_500_with_its_class_logged_not_a_503(
    app, client, db, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    await db.execute(BUG.format(table="subscribers"))
    form = await subscribe(client, "bug@example.com")
    api = await client.post(
        "/subscribe", json={"email": "bug2@example.com"}, headers={"Accept": "application/json"}
    )
    assert form.status_code == 500 and api.status_code == 500
    assert api.json() == {"error": "Internal Server Error"}
    assert "retry-after" not in form.headers
    [first, second] = _records(caplog, "database error")
    assert second.error == first.error
    assert first.error == "InternalServerError" and first.sqlstate == "XX000"
    assert first.levelno == logging.ERROR
    assert not _records(caplog, "database unavailable")
    for record in caplog.records:
        assert "bug@example.com" not in str(record.__dict__)


async def test_a_failing_query_on_a_page_is_a_500_too(app, client, db, caplog) -> None:
    caplog.set_level(logging.WARNING)
    subscriber_id = await db.fetchval(
        "INSERT INTO subscribers (email) VALUES ('page@example.com') RETURNING id"
    )
    await db.execute(BUG.format(table="subscribers"))
    token = app.state.tokens.confirm(subscriber_id)
    response = await client.post(f"/confirm/{token}", data={})
    assert response.status_code == 500
    # An HTML page like the others, not a bare "Internal Server Error".
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>Something went wrong</h1>" in response.text
    [record] = _records(caplog, "database error")
    assert record.error == "InternalServerError" and record.sqlstate == "XX000"


async def test_a_connection_the_server_ends_is_unavailable(database_url, db) -> None:
    """pg_terminate_backend is what a restart or failover does to open connections."""
    victim = await asyncpg.connect(database_url)
    try:
        await db.execute("SELECT pg_terminate_backend($1)", victim.get_server_pid())
        with pytest.raises(Exception) as caught:
            await victim.fetchval("SELECT 1")
    finally:
        victim.terminate()
    # ConnectionDoesNotExistError when the server's goodbye arrives during the query,
    # InterfaceError("connection is closed") when it arrived before: both unavailable.
    assert database.is_unavailable(caught.value), repr(caught.value)


async def test_a_refused_connection_is_unavailable(unused_tcp_port: int) -> None:
    with pytest.raises(database.CannotConnect) as caught:
        await database.open_connection(
            f"postgresql://nobody@127.0.0.1:{unused_tcp_port}/none", timeout=5
        )
    assert isinstance(caught.value, database.UNAVAILABLE)
    assert isinstance(caught.value.__cause__, OSError)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.UndefinedColumnError,
        asyncpg.exceptions.UniqueViolationError,
        asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
        asyncpg.exceptions.DataError,
    ],
)
def test_query_errors_are_not_unavailable(error: type[Exception]) -> None:
    assert not issubclass(error, database.UNAVAILABLE)
    assert not issubclass(OSError, database.UNAVAILABLE) and not issubclass(
        TimeoutError, database.UNAVAILABLE
    )


async def test_a_query_with_no_answer_within_the_command_timeout_is_a_503(
    app_factory, db, caplog
) -> None:
    """Behind PgBouncer a lost database looks like this: the query waits, then times out."""
    caplog.set_level(logging.WARNING)
    async with app_factory(db_command_timeout=0.5) as (app, client):
        token = app.state.tokens.unsubscribe(1)
        async with db.transaction():
            await db.execute("LOCK TABLE subscribers IN ACCESS EXCLUSIVE MODE")
            response = await client.get(f"/unsubscribe/{token}")
    assert response.status_code == 503
    assert response.headers["retry-after"] == database.RETRY_AFTER
    [record] = _records(caplog, "database unavailable")
    assert record.error == "TimeoutError"


async def test_a_pool_with_a_connection_never_released_still_closes(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stopping replica must not wait forever for a connection left marked in use (an
    acquire cancelled at the wrong moment can leave one so, MagicStack/asyncpg#547)."""
    caplog.set_level(logging.WARNING)
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=2)
    leaked = await pool.acquire()  # never released
    async with pool.acquire() as con:
        assert await con.fetchval("SELECT 1") == 1
    await database.close_pool(pool, grace=0.5)
    [record] = _records(caplog, "database pool did not close in time; terminated")
    assert record.count == 1  # the connection still in use
    assert json.loads(JsonFormatter().format(record))["count"] == 1  # a field logs keep
    assert pool._closed  # every connection terminated, the leaked one too
    with pytest.raises(asyncpg.InterfaceError):
        await leaked.fetchval("SELECT 1")


async def test_a_pool_whose_connections_all_came_back_closes_quietly(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    async with pool.acquire() as con:
        await con.fetchval("SELECT 1")
    await database.close_pool(pool, grace=30)
    assert not _records(caplog, "database pool did not close in time; terminated")
    assert pool._closed


def test_only_a_closed_connection_among_interface_errors_is_unavailable() -> None:
    assert database.is_unavailable(asyncpg.InterfaceError("connection is closed"))
    assert not database.is_unavailable(
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
    )
    assert not database.is_unavailable(asyncpg.exceptions.UndefinedTableError("no table"))


async def test_requests_after_the_server_ended_pooled_connections_are_never_a_500(
    app, client, db, admin_headers
) -> None:
    """A restart or failover ends the pool's idle connections; whether the pool notices
    first (it reconnects: 200) or the request's query does ("connection is closed" or class
    08: 503), it is never answered as a bug."""
    for _ in range(5):
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'newsletter' AND datname = current_database()"
        )
        answer = await client.get("/admin/api/campaigns", headers=admin_headers)
        assert answer.status_code in (200, 503), answer.text


async def test_a_pool_whose_connections_close_slower_than_the_command_timeout_still_closes(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncpg closes each connection within its command_timeout: a replica with a short
    DB_COMMAND_TIMEOUT on a busy server used to stop with a TimeoutError out of the
    pool's close (seen in the suite with 0.1 s)."""
    caplog.set_level(logging.WARNING)
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=2, command_timeout=1e-9)
    await database.close_pool(pool, grace=30)
    assert _records(caplog, "database pool closed by terminating: a connection was slow to close")
    assert pool._closed
