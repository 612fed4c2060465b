"""Forward-only SQL migrations from `sql/NNN_name.sql`, safe to run from many replicas.

Each file runs in its own transaction together with its record row (file name and
sha256). The whole run holds a session-level advisory lock, so replicas that start
at the same moment queue behind each other (polling: see `_take_lock`) and the later ones
find nothing to do.
A file whose first line is `-- migrate: no-transaction` (for `CREATE INDEX
CONCURRENTLY`) runs outside a transaction. An applied file that has changed since
is an error: migrations are history, never edited.

A transactional file waits at most LOCK_TIMEOUT for each lock it takes, then rolls back
and tries again a little later, for up to LOCK_WAIT in all. An `ALTER TABLE` queued
behind a long reader of the table would otherwise hold up every later statement on it,
the pixel's inserts included, for as long as that reader runs (PostgreSQL grants locks in
order). A no-transaction file has no lock timeout: what it is for, a concurrent index
build, takes no lock that holds up writes, and aborting it would leave an invalid index.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import asyncpg

# The top-level sql/ of the repository, installed as the package data `service.sql`.
SQL_DIR: Traversable = files("service.sql")
# Any constant unique to this service; "nl" "mi" in ASCII.
ADVISORY_LOCK_ID = 0x6E6C_6D69
_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
_NO_TRANSACTION = "-- migrate: no-transaction"

log = logging.getLogger("newsletter.migrations")


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def transactional(self) -> bool:
        return not self.sql.lstrip().startswith(_NO_TRANSACTION)


def discover(directory: Traversable = SQL_DIR) -> list[Migration]:
    """The migration files in order; refuses stray names and duplicate numbers."""
    if not directory.is_dir():
        raise MigrationError(f"migration directory {directory} does not exist")
    migrations: list[Migration] = []
    seen: dict[int, str] = {}
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".sql"):
            continue
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files must be named NNN_name.sql")
        number = int(match.group(1))
        if number in seen:
            raise MigrationError(f"{path.name} and {seen[number]} share the number {number}")
        seen[number] = path.name
        migrations.append(Migration(path.name, path.read_text(encoding="utf-8")))
    migrations.sort(key=lambda m: int(_NAME.match(m.name).group(1)))  # type: ignore[union-attr]
    return migrations


# Seconds between two tries of a replica that waits for another's migrations.
LOCK_POLL = 0.2
# The longest a migration's statement waits for a table lock before it steps back, and
# the longest a migration keeps trying (seconds). The retries wait 0.5 s, 1 s, 2 s … up
# to 10 s between, so that a burst of writes queued behind the failed try gets through.
LOCK_TIMEOUT = 2.0
LOCK_WAIT = 900.0
_RETRY_PAUSES = (0.5, 1.0, 2.0, 5.0, 10.0)


async def _take_lock(con: asyncpg.Connection) -> None:
    """The migrations' advisory lock, waited for by polling, not by `pg_advisory_lock`.

    A backend blocked in `pg_advisory_lock` is inside a statement and holds its snapshot.
    `CREATE INDEX CONCURRENTLY` (a no-transaction migration) waits for every transaction
    with an older snapshot to end, so the replica running it waited for the replicas
    waiting for its lock: PostgreSQL found the cycle and aborted one (40P01; seen when
    replicas started together on an empty database). Between two tries a waiting
    replica holds no snapshot.
    """
    while True:  # the lock is another process's: no event to wait on
        if await con.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_LOCK_ID):
            return
        await asyncio.sleep(LOCK_POLL)


async def migrate(
    con: asyncpg.Connection,
    directory: Traversable = SQL_DIR,
    *,
    lock_timeout: float = LOCK_TIMEOUT,
    lock_wait: float = LOCK_WAIT,
) -> list[str]:
    """Apply pending migrations; returns the names applied by this call."""
    migrations = discover(directory)
    await _take_lock(con)
    try:
        await con.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                name        text PRIMARY KEY,
                sha256      text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        applied = {
            row["name"]: row["sha256"]
            for row in await con.fetch("SELECT name, sha256 FROM schema_migrations")
        }
        known = {m.name for m in migrations}
        for name in sorted(set(applied) - known):
            log.warning("applied migration is missing from the files", extra={"file": name})
        for migration in migrations:
            recorded = applied.get(migration.name)
            if recorded is not None and recorded != migration.checksum:
                raise MigrationError(
                    f"{migration.name} was changed after it was applied "
                    f"(recorded sha256 {recorded[:12]}…, file {migration.checksum[:12]}…); "
                    "add a new migration instead of editing an applied one"
                )
        done = []
        for migration in migrations:
            if migration.name in applied:
                continue
            await apply(con, migration, lock_timeout, lock_wait)
            log.info("migration applied", extra={"file": migration.name})
            done.append(migration.name)
        return done
    finally:
        await con.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)


async def apply(
    con: asyncpg.Connection,
    migration: Migration,
    lock_timeout: float = LOCK_TIMEOUT,
    lock_wait: float = LOCK_WAIT,
) -> None:
    """One migration and its record, tried again while its statements time out waiting
    for a lock. `migrate` calls it under the advisory lock; bench/bench_retention.py calls
    it alone to time each step."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + lock_wait
    for attempt in itertools.count():
        try:
            return await _apply(con, migration, lock_timeout)
        except _LockTimeout as exc:
            pause = _RETRY_PAUSES[min(attempt, len(_RETRY_PAUSES) - 1)]
            blockers = await _blockers(con)
            if loop.time() + pause > give_up:
                raise MigrationError(
                    f"{migration.name} could not take its locks within {lock_wait:g}s "
                    f"(each try waits {lock_timeout:g}s); held by {blockers or 'nobody now'}: "
                    "end those transactions, or run the migration at a quieter time"
                ) from exc.__cause__
            log.warning(
                "migration waits for a lock, tries again",
                extra={"file": migration.name, "attempt": attempt + 1, "blockers": blockers},
            )
            await asyncio.sleep(pause)
    raise AssertionError("itertools.count() ended")


class _LockTimeout(Exception):
    """A migration's statement waited LOCK_TIMEOUT for a lock; it was rolled back."""


async def _blockers(con: asyncpg.Connection) -> str:
    """The other sessions of this database in a transaction for over a second, longest
    first: who a migration's lock most likely waits for. Process ids, states and ages
    only; their statements may hold personal data and are never logged."""
    rows = await con.fetch(
        """SELECT pid, state, round(extract(epoch FROM now() - xact_start))::int AS age
           FROM pg_stat_activity
           WHERE datname = current_database() AND pid <> pg_backend_pid()
             AND xact_start < now() - interval '1 second'
           ORDER BY xact_start LIMIT 5"""
    )
    return ", ".join(f"pid {r['pid']} ({r['state']}, {r['age']}s in a transaction)" for r in rows)


async def _apply(con: asyncpg.Connection, migration: Migration, lock_timeout: float) -> None:
    record = "INSERT INTO schema_migrations (name, sha256) VALUES ($1, $2)"
    try:
        if migration.transactional:
            async with con.transaction():
                # set_config(…, true) is SET LOCAL: it ends with the transaction.
                await con.execute(
                    "SELECT set_config('lock_timeout', $1, true)", f"{int(lock_timeout * 1000)}ms"
                )
                await con.execute(migration.sql)
                await con.execute(record, migration.name, migration.checksum)
        else:
            await con.execute(migration.sql)
            await con.execute(record, migration.name, migration.checksum)
    except asyncpg.LockNotAvailableError as exc:
        if not migration.transactional:
            raise MigrationError(
                f"{migration.name} failed: {exc.__class__.__name__}: {exc}"
            ) from exc
        raise _LockTimeout() from exc
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"{migration.name} failed: {exc.__class__.__name__}: {exc}") from exc
