import asyncio
from pathlib import Path

import asyncpg
import pytest

from service.db import migrations
from service.db.migrations import MigrationError


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def test_files_are_applied_in_numeric_order_and_recorded(empty_db: str, tmp_path) -> None:
    directory = write(
        tmp_path / "sql",
        {
            "002_second.sql": "INSERT INTO log VALUES ('second');",
            "001_first.sql": "CREATE TABLE log (what text); INSERT INTO log VALUES ('first');",
            "010_tenth.sql": "INSERT INTO log VALUES ('tenth');",
        },
    )
    con = await asyncpg.connect(empty_db)
    try:
        assert await migrations.migrate(con, directory) == [
            "001_first.sql",
            "002_second.sql",
            "010_tenth.sql",
        ]
        assert [r["what"] for r in await con.fetch("SELECT what FROM log")] == [
            "first",
            "second",
            "tenth",
        ]
        recorded = await con.fetch("SELECT name, sha256 FROM schema_migrations ORDER BY name")
        assert [r["name"] for r in recorded] == ["001_first.sql", "002_second.sql", "010_tenth.sql"]
        assert all(len(r["sha256"]) == 64 for r in recorded)
        assert await migrations.migrate(con, directory) == []
    finally:
        await con.close()


async def test_a_changed_applied_file_is_refused(empty_db: str, tmp_path) -> None:
    directory = write(tmp_path / "sql", {"001_a.sql": "CREATE TABLE a (x int);"})
    con = await asyncpg.connect(empty_db)
    try:
        await migrations.migrate(con, directory)
        (directory / "001_a.sql").write_text("CREATE TABLE a (x bigint);")
        write(directory, {"002_b.sql": "CREATE TABLE b (x int);"})
        with pytest.raises(MigrationError, match=r"001_a\.sql was changed after it was applied"):
            await migrations.migrate(con, directory)
        assert await con.fetchval("SELECT to_regclass('b')") is None
    finally:
        await con.close()


async def test_a_failing_migration_is_rolled_back_whole(empty_db: str, tmp_path) -> None:
    directory = write(
        tmp_path / "sql", {"001_bad.sql": "CREATE TABLE half (x int); SELECT * FROM missing;"}
    )
    con = await asyncpg.connect(empty_db)
    try:
        with pytest.raises(MigrationError, match=r"001_bad\.sql failed: UndefinedTableError"):
            await migrations.migrate(con, directory)
        assert await con.fetchval("SELECT to_regclass('half')") is None
        assert await con.fetchval("SELECT count(*) FROM schema_migrations") == 0
    finally:
        await con.close()


async def test_no_transaction_marker_allows_concurrent_index(empty_db: str, tmp_path) -> None:
    directory = write(
        tmp_path / "sql",
        {
            "001_t.sql": "CREATE TABLE t (x int);",
            "002_idx.sql": "-- migrate: no-transaction\nCREATE INDEX CONCURRENTLY t_x ON t (x);",
        },
    )
    con = await asyncpg.connect(empty_db)
    try:
        await migrations.migrate(con, directory)
        assert await con.fetchval("SELECT to_regclass('t_x')") is not None
    finally:
        await con.close()


async def _lock_requested(con: asyncpg.Connection, table: str) -> None:
    """Until some session waits for a lock on `table` (the migration's ALTER)."""
    for _ in range(600):  # a hang guard, not a timing: 60 s
        waiting = await con.fetchval(
            "SELECT count(*) FROM pg_locks WHERE relation = to_regclass($1) AND NOT granted",
            table,
        )
        if waiting:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"nobody waited for a lock on {table}")


async def test_a_migration_waiting_for_a_lock_does_not_hold_up_writers(
    empty_db: str, tmp_path
) -> None:
    # PostgreSQL queues lock requests in order: an ALTER waiting behind a long reader
    # used to make every later INSERT wait behind the ALTER, for as long as the reader ran.
    directory = write(tmp_path / "sql", {"001_t.sql": "CREATE TABLE t (x int);"})
    con, reader, writer = [await asyncpg.connect(empty_db) for _ in range(3)]
    try:
        await migrations.migrate(con, directory)
        write(directory, {"002_alter.sql": "ALTER TABLE t ADD COLUMN y int;"})
        reading = reader.transaction()
        await reading.start()
        await reader.fetch("SELECT * FROM t")  # its ACCESS SHARE lock lasts until it ends
        migrating = asyncio.ensure_future(
            migrations.migrate(con, directory, lock_timeout=0.3, lock_wait=120)
        )
        await _lock_requested(writer, "t")
        await writer.execute("SET statement_timeout = '30s'")
        await writer.execute("INSERT INTO t VALUES (1)")  # before: cancelled after 30 s
        assert not migrating.done()
        await reading.commit()
        assert await migrating == ["002_alter.sql"]
        assert await writer.fetchval("SELECT count(*) FROM t WHERE y IS NULL") == 1
    finally:
        for c in (con, reader, writer):
            await c.close()


async def test_a_migration_that_cannot_take_its_lock_says_who_holds_it(
    empty_db: str, tmp_path
) -> None:
    directory = write(tmp_path / "sql", {"001_t.sql": "CREATE TABLE t (x int);"})
    con, reader = [await asyncpg.connect(empty_db) for _ in range(2)]
    try:
        await migrations.migrate(con, directory)
        write(directory, {"002_alter.sql": "ALTER TABLE t ADD COLUMN y int;"})
        reading = reader.transaction()
        await reading.start()
        await reader.fetch("SELECT * FROM t")
        await asyncio.sleep(1.1)  # a transaction over a second old is named as a holder
        pid = reader.get_server_pid()
        with pytest.raises(MigrationError) as raised:
            await migrations.migrate(con, directory, lock_timeout=0.2, lock_wait=1.0)
        message = str(raised.value)
        assert "002_alter.sql could not take its locks within 1s" in message
        assert f"pid {pid} (idle in transaction" in message
        assert await con.fetchval("SELECT count(*) FROM schema_migrations") == 1
        await reading.commit()
        assert await migrations.migrate(con, directory) == ["002_alter.sql"]
    finally:
        for c in (con, reader):
            await c.close()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1_short.sql": ""}, "must be named NNN_name.sql"),
        ({"001_Upper.sql": ""}, "must be named NNN_name.sql"),
        ({"001_a.sql": "", "001_b.sql": ""}, "share the number 1"),
    ],
)
def test_badly_named_files_are_refused(tmp_path, files: dict, message: str) -> None:
    with pytest.raises(MigrationError, match=message):
        migrations.discover(write(tmp_path / "sql", files))


async def test_concurrent_runners_apply_each_migration_exactly_once(
    empty_db: str, tmp_path
) -> None:
    # The sleep widens the race window: without the lock both runners would apply it.
    directory = write(
        tmp_path / "sql",
        {
            "001_slow.sql": "SELECT pg_sleep(0.3); CREATE TABLE counter (n int);",
            "002_count.sql": "INSERT INTO counter VALUES (1);",
        },
    )
    connections = [await asyncpg.connect(empty_db) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrations.migrate(c, directory) for c in connections))
        assert sorted(len(r) for r in results) == [0, 0, 0, 2]
        assert await connections[0].fetchval("SELECT count(*) FROM counter") == 1
    finally:
        for con in connections:
            await con.close()


async def test_the_real_schema_migrates_from_scratch(empty_db: str) -> None:
    con = await asyncpg.connect(empty_db)
    try:
        applied = await migrations.migrate(con)
        assert applied == [m.name for m in migrations.discover()]
        assert await con.fetchval("SELECT to_regclass('subscribers')") is not None
    finally:
        await con.close()
