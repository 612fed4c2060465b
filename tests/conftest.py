"""Fixtures: a real PostgreSQL, a fresh database per test, a real SMTP server, the app.

The server is `TEST_DATABASE_URL` when set, else one embedded pgserver instance for the
whole run: started by the main pytest process (xdist's controller under `-n`), shared by
its workers through the environment. The schema is migrated once into a template
database named after a hash of the migrations, so a long-lived `TEST_DATABASE_URL` server
reuses it across runs; each test gets its own copy with `CREATE DATABASE … TEMPLATE` (a
file copy, a few milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import hypothesis
import pytest
from starlette.applications import Starlette

from service.app import create_app
from service.settings import Settings
from service.tracking import geo
from tests import suite_hooks, suite_runtime, support

CLIENT_IP = "198.51.100.23"

# Hypothesis's per-example deadline (200 ms) is a wall-clock assertion: on a loaded machine
# it fails correct tests (and hypothesis 6.100, the floor, then crashes in its own error
# report). Durations belong to `make bench`. HYPOTHESIS_PROFILE=floors (the second pass of
# `make test`) runs fewer examples: the first pass runs the full number on the same code.
hypothesis.settings.register_profile("suite", deadline=None)
hypothesis.settings.register_profile("floors", deadline=None, max_examples=25)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path plugin reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(suite_hooks, "newsletter_suite_hooks")
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = suite_runtime.basetemp()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == 0 and not hasattr(session.config, "workerinput"):
        suite_runtime.remove_basetemp()


def pytest_sessionstart(session: pytest.Session) -> None:
    """The main process starts the run's PostgreSQL before xdist starts its workers (its
    own sessionstart runs last), so every worker inherits one server and one template.
    geoip2fast's loader runs `ps` twice (its memory report), once per process: loaded
    here, it is no test's process."""
    with suite_hooks.infrastructure():
        if not hasattr(session.config, "workerinput"):
            suite_runtime.start(session.config)
        geo.resolver()


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        suite_runtime.stop()


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    with suite_hooks.infrastructure():
        return suite_runtime.admin_url()


@pytest.fixture
async def empty_db(pg_admin_url: str):
    """A database of its own with no schema (the tests of migrations migrate it)."""
    con = await asyncpg.connect(pg_admin_url)
    name = "e_" + support.uuid.uuid4().hex[:10]
    await con.execute(f'CREATE DATABASE "{name}"')
    await con.close()
    yield support.with_database(pg_admin_url, name)
    await support.drop_database(pg_admin_url, name)


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> str:
    return suite_runtime.template_name()


class Databases:
    """Each test's own database, made one test ahead and dropped behind it.

    A test spends most of its time waiting, not computing; creating the next database
    from the template and dropping the last one meanwhile, on the session's loop, takes
    both out of every test's setup and teardown.
    """

    def __init__(self, admin_url: str, template: str) -> None:
        self.admin_url = admin_url
        self.template = template
        self._next: asyncio.Task[str] | None = None
        self._drops: set[asyncio.Task[None]] = set()

    def _create(self) -> asyncio.Task[str]:
        return asyncio.ensure_future(support.create_database(self.admin_url, self.template))

    async def take(self) -> str:
        name = await (self._next or self._create())
        self._next = self._create()
        return name

    def drop(self, name: str) -> None:
        task = asyncio.ensure_future(support.drop_database(self.admin_url, name))
        self._drops.add(task)
        task.add_done_callback(self._drops.discard)

    async def close(self) -> None:
        if self._next is not None:
            self.drop(await self._next)
        await asyncio.gather(*self._drops)


@pytest.fixture(scope="session")
async def databases(pg_admin_url: str, template_db: str) -> AsyncIterator[Databases]:
    made = Databases(pg_admin_url, template_db)
    yield made
    await made.close()


@pytest.fixture
async def database_url(pg_admin_url: str, databases: Databases) -> AsyncIterator[str]:
    name = await databases.take()
    yield support.with_database(pg_admin_url, name)
    databases.drop(name)


@pytest.fixture
async def smtp() -> AsyncIterator[support.SmtpSink]:
    sink = support.SmtpSink()
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture
def make_settings(database_url: str, smtp: support.SmtpSink) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            database_url=database_url,
            smtp_url=smtp.url,
            public_url=support.PUBLIC_URL,
            secret_keys=(support.TEST_KEY,),
            admin_tokens=(support.ADMIN_TOKEN,),
            mail_from="Test News <news@newsletter.test>",
            db_pool_min=1,
            db_pool_max=5,
            outbox_poll_interval=0.2,
            outbox_backoff_base=0.05,
            outbox_backoff_max=0.2,
            purge_interval=3600,
            # Tests that try every admin route with bad credentials would hit the
            # per-client limit; its own tests set it low (test_privacy_edges.py).
            admin_auth_failures=10_000,
            # Sign-up answers are padded to this; its own test sets it (test_privacy_edges.py).
            signup_min_duration=0.0,
            # PIXEL_MODE=wait answers after the commit, or after PIXEL_WAIT_MAX (2 s) anyway:
            # on a loaded machine a batch can take longer, and a test that checks the row
            # right after the answer then fails although nothing was lost. The bound itself
            # has its own tests (test_recorder.py sets it low).
            pixel_wait_max=30.0,
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """An app with its lifespan entered, and an HTTP client speaking to it over ASGI."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(CLIENT_IP, 50000))
        async with httpx.AsyncClient(
            transport=transport, base_url=support.PUBLIC_URL, follow_redirects=False
        ) as client:
            yield app, client


@pytest.fixture
def app_factory(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """`async with app_factory(**setting_overrides) as (app, client): ...`"""

    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        return running(make_settings(**overrides))

    return factory


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    async with running(settings) as (app, _client):
        yield app


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(CLIENT_IP, 50000))
    async with httpx.AsyncClient(transport=transport, base_url=support.PUBLIC_URL) as client:
        yield client


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, for arranging and asserting."""
    con = await asyncpg.connect(database_url)
    await con.execute("SET TIME ZONE 'UTC'")
    yield con
    await con.close()


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {support.ADMIN_TOKEN}"}


# -- optional: the whole suite through PgBouncer in transaction mode -------------------
# TEST_VIA_PGBOUNCER=1 builds every in-process app (everything made by make_settings)
# against a real PgBouncer in transaction pooling mode (tests/pgbouncer.py, Debian's
# package) with DB_STATEMENT_CACHE_SIZE=0, as the replicas run behind CloudNativePG's
# Pooler. The tests' own connections (`db`, `database_url`) and real `serve` processes
# stay direct, as do the migrations (a session-level advisory lock) and the outbox's LISTEN
# connection (DATABASE_DIRECT_URL). Unset: no change.
if os.environ.get("TEST_VIA_PGBOUNCER") == "1":
    from tests import pgbouncer as _pgbouncer

    _direct_make_settings = make_settings.__wrapped__

    @pytest.fixture(scope="session")
    def pgbouncer_server(pg_admin_url: str) -> Any:
        if _pgbouncer.executable() is None:
            pytest.exit(f"TEST_VIA_PGBOUNCER=1 but {_pgbouncer.NOT_INSTALLED}", returncode=4)
        with suite_hooks.infrastructure(), _pgbouncer.running(pg_admin_url) as bouncer:
            yield bouncer

    @pytest.fixture
    def make_settings(
        database_url: str, smtp: support.SmtpSink, pgbouncer_server: Any
    ) -> Callable[..., Settings]:
        direct = _direct_make_settings(database_url, smtp)

        def make(**overrides: Any) -> Settings:
            overrides.setdefault("database_url", pgbouncer_server.url_for(database_url))
            # As in production (k8s/base/deployment.yaml): LISTEN goes straight to PostgreSQL.
            overrides.setdefault("database_direct_url", database_url)
            overrides.setdefault("db_statement_cache_size", 0)
            return direct(**overrides)

        return make
