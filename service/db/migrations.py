"""Forward-only SQL migrations from `sql/NNN_name.sql`, safe to run from many replicas.

Each file runs in its own transaction together with its record row (file name and
sha256). The whole run holds a session-level advisory lock, so replicas that start
at the same moment queue behind each other (polling: see `_take_lock`) and the later ones
find nothing to do.
A file whose first line is `-- migrate: no-transaction` (for `CREATE INDEX
CONCURRENTLY`) runs outside a transaction. An applied file that has changed since
is an error: migrations are history, never edited.
"""

from __future__ import annotations

import asyncio
import hashlib
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


async def migrate(con: asyncpg.Connection, directory: Traversable = SQL_DIR) -> list[str]:
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
            await _apply(con, migration)
            log.info("migration applied", extra={"file": migration.name})
            done.append(migration.name)
        return done
    finally:
        await con.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)


async def _apply(con: asyncpg.Connection, migration: Migration) -> None:
    record = "INSERT INTO schema_migrations (name, sha256) VALUES ($1, $2)"
    try:
        if migration.transactional:
            async with con.transaction():
                await con.execute(migration.sql)
                await con.execute(record, migration.name, migration.checksum)
        else:
            await con.execute(migration.sql)
            await con.execute(record, migration.name, migration.checksum)
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"{migration.name} failed: {exc.__class__.__name__}: {exc}") from exc
