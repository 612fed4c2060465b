import subprocess
import sys

import asyncpg
import pytest

from service.db import migrations
from tests import support

# Every test runs the `newsletter` command in a process of its own.
pytestmark = pytest.mark.slow


def newsletter(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        cwd=support.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def bare_env() -> dict[str, str]:
    import os

    keep = ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
    return {k: v for k, v in os.environ.items() if k in keep}


def test_serve_without_database_url_exits_with_one_line_naming_it() -> None:
    env = support.base_env("", "smtp://127.0.0.1:2525")
    del env["DATABASE_URL"]
    result = newsletter("serve", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "newsletter: configuration error: DATABASE_URL is not set (required)"
    ]
    assert "Traceback" not in result.stderr


def test_serve_names_every_missing_required_variable() -> None:
    result = newsletter("serve", env=bare_env())
    assert result.returncode == 2
    for name in ("DATABASE_URL", "SMTP_URL", "PUBLIC_URL", "SECRET_KEYS"):
        assert f"{name} is not set" in result.stderr


def test_serve_with_an_unreachable_database_fails_with_one_line() -> None:
    env = support.base_env("postgresql://nobody@127.0.0.1:1/none", "smtp://127.0.0.1:2525")
    result = newsletter("serve", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("newsletter: ")


async def test_migrate_applies_the_schema_and_is_idempotent(pg_admin_url: str) -> None:
    con = await asyncpg.connect(pg_admin_url)
    name = "cli_" + support.uuid.uuid4().hex[:10]
    await con.execute(f'CREATE DATABASE "{name}"')
    await con.close()
    url = support.with_database(pg_admin_url, name)
    try:
        env = {**bare_env(), "DATABASE_URL": url}
        first = newsletter("migrate", env=env)
        assert first.returncode == 0, first.stderr
        con = await asyncpg.connect(url)
        try:
            applied, schema = await _migrations_and_schema(con)
            # Every migration file, each recorded with its checksum.
            expected = [(m.name, m.checksum) for m in migrations.discover()]
            assert [(r["name"], r["sha256"]) for r in applied] == expected
            second = newsletter("migrate", env=env)
            assert second.returncode == 0, second.stderr
            # The second run applied nothing: the same records (not re-stamped) and the
            # same schema.
            assert await _migrations_and_schema(con) == (applied, schema)
        finally:
            await con.close()
    finally:
        await support.drop_database(pg_admin_url, name)


async def _migrations_and_schema(con: asyncpg.Connection) -> tuple[list, str]:
    applied = await con.fetch(
        "SELECT name, sha256, applied_at FROM schema_migrations ORDER BY name"
    )
    schema = await con.fetchval(
        """SELECT md5(string_agg(item, ',' ORDER BY item)) FROM (
               SELECT format('%s.%s:%s', table_name, column_name, data_type) AS item
               FROM information_schema.columns WHERE table_schema = 'public'
               UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
               UNION ALL SELECT 'trigger ' || tgname || ' on ' || tgrelid::regclass::text
               FROM pg_trigger WHERE NOT tgisinternal
           ) AS items"""
    )
    return applied, schema


@pytest.mark.parametrize("args", [[], ["frobnicate"]])
def test_unknown_or_missing_commands_print_usage(args: list[str]) -> None:
    result = newsletter(*args, env=bare_env())
    assert result.returncode == 2
    assert "usage: newsletter" in result.stderr
