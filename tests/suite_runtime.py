"""The run's PostgreSQL and its template database, shared by every pytest worker.

The main pytest process (xdist's controller under `-n`, or pytest itself) starts one
embedded pgserver, unless TEST_DATABASE_URL names a server, and migrates the template
once; its workers find both through two environment variables it sets before they start.
A run without `-n` starts the server on first use, so a file with no database test needs
none. The data directory comes from one `initdb` per run, kept pristine, so a test that
stops a server of its own copies it (`fresh_pgdata`) instead of running initdb again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import asyncpg
import pytest

from service.db import migrations
from tests import support

URL_VARIABLE = "NEWSLETTER_TEST_PG_URL"
TEMPLATE_VARIABLE = "NEWSLETTER_TEST_TEMPLATE"
PRISTINE_VARIABLE = "NEWSLETTER_TEST_PGDATA"

# A throwaway server: durability traded for speed, and room for several workers' pools.
THROWAWAY_SETTINGS = (
    "fsync = off",
    "synchronous_commit = off",
    "full_page_writes = off",
    "jit = off",
    "max_connections = 400",
)

_basetemp: Path | None = None
_server: object | None = None  # pgserver.PostgresServer, imported only when needed
_directory: Path | None = None


def template_name() -> str:
    """`nl_template_<hash of sql/ and the migration runner>`: a server that already has it
    (a TEST_DATABASE_URL one, from an earlier run) clones it without migrating again."""
    digest = hashlib.sha256()
    sql = support.ROOT / "sql"
    for path in sorted(sql.rglob("*.sql")):
        digest.update(path.relative_to(sql).as_posix().encode() + b"\0" + path.read_bytes())
    digest.update((support.ROOT / "service" / "db" / "migrations.py").read_bytes())
    return f"nl_template_{digest.hexdigest()[:16]}"


def basetemp() -> Path:
    """The session's own base for tmp_path, instead of pytest's /tmp/pytest-of-<user>.

    PostgreSQL runs as `pgserver` when we are root, and the tests that start a server of
    their own put its data under tmp_path. pytest resets /tmp/pytest-of-<user> to mode
    0700 whenever any pytest session starts (another checkout, a test that runs pytest):
    from then on `pgserver` cannot reach its data directory, and initdb or the server
    fails half-way ("could not open file …/global/pg_control: Permission denied")."""
    global _basetemp
    _basetemp = Path(tempfile.mkdtemp(prefix="newsletter-pytest-"))
    return _basetemp


def remove_basetemp() -> None:
    """After a green run; a failed one keeps its files to look at."""
    if _basetemp is not None:
        shutil.rmtree(_basetemp, ignore_errors=True)


def _system_user() -> str | None:
    """pgserver runs PostgreSQL as `pgserver` when we are root (PostgreSQL refuses root)."""
    return "pgserver" if os.geteuid() == 0 else None


def _own(directory: Path) -> None:
    user = _system_user()
    if user is not None:
        for path in (directory, *directory.rglob("*")):
            shutil.chown(path, user, user)


def _initdb(directory: Path) -> Path:
    """A pristine, stopped data directory with THROWAWAY_SETTINGS, made once per run."""
    from pgserver._commands import initdb
    from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

    pristine = directory / "initdb"
    pristine.mkdir()
    user = _system_user()
    if user is not None:
        ensure_user_exists(user)
        ensure_prefix_permissions(pristine)
        _own(pristine)
    initdb(
        ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
        pgdata=pristine,
        user=user,
    )
    with (pristine / "postgresql.auto.conf").open("a") as conf:
        conf.write("".join(f"{setting}\n" for setting in THROWAWAY_SETTINGS))
    return pristine


def _copy(pristine: Path, destination: Path) -> Path:
    shutil.copytree(pristine, destination, symlinks=True)
    _own(destination)
    return destination


def fresh_pgdata(destination: Path) -> Path:
    """A copy of the run's pristine data directory (owned as initdb left it), for a test
    that starts and stops a server of its own with `pgserver.get_server(destination)`."""
    source = os.environ.get(PRISTINE_VARIABLE)
    if not source:
        _start_embedded()
        source = os.environ[PRISTINE_VARIABLE]
    return _copy(Path(source), destination)


def _start_embedded() -> str:
    global _server, _directory
    import pgserver

    # Not under pytest's numbered temporary directories: a second pytest session started
    # meanwhile (another checkout, a second terminal) prunes the older ones, and with
    # them this server's data directory and socket, in the middle of the run.
    _directory = Path(tempfile.mkdtemp(prefix="newsletter-test-pg-"))
    pristine = _initdb(_directory)
    os.environ[PRISTINE_VARIABLE] = str(pristine)
    _server = pgserver.get_server(_copy(pristine, _directory / "data"), cleanup_mode="delete")
    url = _server.get_uri()  # type: ignore[attr-defined]
    os.environ[URL_VARIABLE] = url
    return url


async def _make_template(admin_url: str, name: str) -> None:
    """Migrates a database under a temporary name and renames it: a template that exists
    is complete, and two runs making it at once on one server both end with it."""
    con = await asyncpg.connect(admin_url)
    try:
        if await con.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return
        building = f"nl_building_{uuid.uuid4().hex[:12]}"
        await con.execute(f'CREATE DATABASE "{building}"')
        target = await asyncpg.connect(support.with_database(admin_url, building))
        try:
            await migrations.migrate(target)
        finally:
            await target.close()
        try:
            await con.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        except asyncpg.DuplicateDatabaseError:
            await con.execute(f'DROP DATABASE "{building}"')
    finally:
        await con.close()


def start(config: pytest.Config) -> None:
    """In the main process: under xdist, the server and template before the workers start;
    alone, nothing yet (admin_url starts them on first use)."""
    if getattr(config.option, "numprocesses", None):
        admin_url()


def admin_url() -> str:
    url = os.environ.get(URL_VARIABLE) or os.environ.get("TEST_DATABASE_URL")
    if not url:
        url = _start_embedded()
    if not os.environ.get(TEMPLATE_VARIABLE):
        name = template_name()
        # In a thread of its own: a fixture may ask while an event loop runs.
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, _make_template(url, name)).result()
        os.environ[TEMPLATE_VARIABLE] = name
    return url


def stop() -> None:
    global _server, _directory
    if _server is not None:
        _server.cleanup()  # type: ignore[attr-defined]
        _server = None
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)
        _directory = None
