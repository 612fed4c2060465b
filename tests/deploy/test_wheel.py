"""The project installs from its wheel alone: the SQL ships inside it (`service.sql`).

The wheel is built from the repository and installed into a copy of a virtual
environment outside the repository that holds the locked dependencies (requirements.lock,
hash-checked; kept between runs on the lock file's hash), and its `newsletter migrate` is
run from a directory where no source tree is in reach, against an empty database.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import asyncpg
import pytest

from tests import support

ROOT = Path(__file__).resolve().parents[2]
# Builds a wheel and installs the locked dependencies into a new venv: minutes on a
# loaded machine, past the suite's default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _run(*command: str | Path, **kw) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=600, **kw
    )
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def locked_venv() -> Path:
    """A venv with requirements.lock installed (hash-checked), kept between runs under a
    name that carries the lock file's hash: a changed lock file makes a new one. Made
    under a temporary name and renamed, so a half-made one is never used."""
    lock = (ROOT / "requirements.lock").read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "newsletter-tests"
    venv = cache / f"wheel-venv-{sys.version_info[0]}.{sys.version_info[1]}-"
    venv = venv.with_name(venv.name + hashlib.sha256(lock).hexdigest()[:16])
    if (venv / "bin" / "python").exists():
        return venv
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
    _run(sys.executable, "-m", "venv", building)
    _run(
        building / "bin" / "python", "-m", "pip", "install", "-q", "--require-hashes",
        "--no-deps", "-r", ROOT / "requirements.lock",
    )  # fmt: skip
    try:
        building.rename(venv)
    except OSError:  # another run made it meanwhile
        shutil.rmtree(building, ignore_errors=True)
    return venv


async def test_the_wheel_alone_installs_and_migrates_an_empty_database(
    tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str
) -> None:
    work = tmp_path_factory.mktemp("wheel")
    assert not work.is_relative_to(ROOT)
    source = work / "source"  # a clean copy: the build writes build/ and egg-info
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__"),
    )
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", source)
    [wheel] = (work / "dist").glob("newsletter_service-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    migrations_in_wheel = [n for n in names if n.startswith("service/sql/") and n.count("/") == 2]
    assert "service/sql/001_schema.sql" in migrations_in_wheel
    assert "service/sql/queries/signup.sql" in names
    # Every module ships, not only what migrating needs (a package left out of
    # pyproject.toml's list is missing from the wheel and the image).
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "service").rglob("*.py")}
    assert modules - set(names) == set()
    # The compiled catalogs of the languages (committed .mo files, package data).
    catalogs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "service/i18n/locale").glob("*.mo")}
    assert len(catalogs) == 7 and catalogs - set(names) == set()

    venv = work / "venv"
    shutil.copytree(locked_venv(), venv, symlinks=True)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", wheel)
    shutil.rmtree(source)

    name = f"t_wheel_{os.getpid()}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {
            "DATABASE_URL": support.with_database(pg_admin_url, name)
        }
        where = _run(
            venv / "bin" / "python",
            "-c",
            "import service; print(service.__file__)",
            cwd=work,
            env=env,
        )
        assert Path(where.stdout.strip()).is_relative_to(venv)
        german = _run(
            venv / "bin" / "python",
            "-c",
            "from service import i18n; print(i18n.gettext('de', 'Subscribe'))",
            cwd=work,
            env=env,
        )
        assert german.stdout.strip() == "Anmelden"
        _run(venv / "bin" / "newsletter", "migrate", cwd=work, env=env)
        con = await asyncpg.connect(env["DATABASE_URL"])
        try:
            applied = await con.fetchval("SELECT count(*) FROM schema_migrations")
            assert applied == sum(n.endswith(".sql") for n in migrations_in_wheel)
            assert await con.fetchval("SELECT to_regclass('subscribers') IS NOT NULL")
        finally:
            await con.close()
    finally:
        await support.drop_database(pg_admin_url, name)
