"""The Dockerfile's policies, and the source layout it relies on, without Docker.

No container engine runs here, so the Dockerfile is parsed and its rules checked
(multi-stage, numeric non-root USER, no HEALTHCHECK, `newsletter serve`, nothing but
the venv and /app in the final stage, a build context that holds what it copies),
and the layout the image runs with (service/ beside sql/ in /app, on PYTHONPATH) is
rebuilt in a temporary directory and migrated from.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from tests import support

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and stages; continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert match, f"unparsable FROM {rest!r}"
            stages.append(Stage(match.group(1), match.group(2)))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


def final_stage_user() -> str:
    """The USER of the image that runs (also the pods' runAsUser, see test_k8s_manifests)."""
    users = stages()[-1].all("USER")
    assert users, "the final stage sets no USER"
    return users[-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), "use the exec (JSON) form"
    return value


def test_dockerfile_is_multi_stage_on_one_slim_python_base() -> None:
    global_args, all_stages = parse(DOCKERFILE.read_text())
    assert len(all_stages) >= 2
    build, runtime = all_stages[0], all_stages[-1]
    assert build.name and runtime.name
    for stage in (build, runtime):
        base = stage.base
        for name, default in global_args.items():
            base = base.replace("${" + name + "}", default).replace("$" + name, default)
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    assert build.base == runtime.base, "the venv must run on the Python it was built with"


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    user, _, group = final_stage_user().partition(":")
    assert user.isdigit() and int(user) >= 1000
    assert not group or (group.isdigit() and int(group) >= 1000)


def test_image_has_no_healthcheck_and_serves_by_default() -> None:
    for stage in stages():
        assert not stage.all("HEALTHCHECK"), "Kubernetes probes the pods; no HEALTHCHECK"
    runtime = stages()[-1]
    (cmd,) = runtime.all("CMD")
    assert exec_form(cmd) == ["newsletter", "serve"]
    assert not runtime.all("ENTRYPOINT")
    assert "8000" in runtime.all("EXPOSE")


def test_final_stage_copies_only_the_venv_and_the_source_tree() -> None:
    runtime = stages()[-1]
    copies = runtime.all("COPY") + runtime.all("ADD")
    assert copies
    build_name = stages()[0].name
    for args in copies:
        assert args.startswith(f"--from={build_name} "), f"unexpected copy into the image: {args}"
    targets = {args.split()[-1] for args in copies}
    assert targets == {"/opt/venv", "/app"}
    runs = " ".join(runtime.all("RUN"))
    assert not re.search(r"apt-get|apk |pip |gcc|build-essential|curl|wget", runs), runs
    env = " ".join(runtime.all("ENV"))
    assert "PYTHONPATH=/app" in env and "/opt/venv/bin" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "the root filesystem is read-only"


def test_builder_drops_the_installers_from_the_venv() -> None:
    runs = " ".join(stages()[0].all("RUN"))
    assert re.search(r"pip uninstall -y[^&]*\bpip\b", runs)
    assert "compileall" in runs, "byte-code cannot be written at run time"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins, `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", ""))
            for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_dockerignore_sends_what_the_build_copies_and_nothing_private() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for args in stages()[0].all("COPY"):
        if not args.startswith("--from"):
            sources += args.split()[:-1]
    assert {"pyproject.toml", "README.md", "service", "sql"} <= set(sources)
    for source in sources:
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*") if p.is_file()
            and "__pycache__" not in p.parts
        ]  # fmt: skip
        for path in files:
            assert not _ignored(path, patterns), f"{path} is excluded but COPY needs it"
    for private in (".git/config", ".venv/pyvenv.cfg", ".newsletter/secrets.json", "tests/x.py"):
        assert _ignored(private, patterns), f"{private} would be sent to the builder"
    assert _ignored("service/__pycache__/x.pyc", patterns)


@pytest.mark.slow
async def test_image_layout_finds_the_sql_and_migrates(tmp_path, pg_admin_url) -> None:
    """/app holds service/ and sql/ as the Dockerfile copies them; run from there.

    The dependencies come from the test venv (installing them again would need the
    network); the service code and SQL come only from the copied tree, with the
    working directory elsewhere, as in the container.
    """
    app = tmp_path / "app"
    app.mkdir()
    for name in ("service", "sql"):
        shutil.copytree(ROOT / name, app / name, ignore=shutil.ignore_patterns("__pycache__"))
    name = f"t_layout_{os.getpid()}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL")}
        env.update(PYTHONPATH=str(app), DATABASE_URL=support.with_database(pg_admin_url, name))
        where = subprocess.run(
            [sys.executable, "-c", "import service, service.migrations as m; "
             "print(service.__file__); print(m.SQL_DIR); print(len(m.discover()))"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert where.returncode == 0, where.stderr
        module_file, sql_dir, count = where.stdout.split()
        assert Path(module_file).is_relative_to(app)
        assert Path(sql_dir) == app / "sql"
        assert int(count) >= 1

        migrate = subprocess.run(
            [sys.executable, "-m", "service", "migrate"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert migrate.returncode == 0, migrate.stderr
        con = await asyncpg.connect(env["DATABASE_URL"])
        try:
            applied = await con.fetchval("SELECT count(*) FROM schema_migrations")
            assert applied == int(count)
            assert await con.fetchval("SELECT to_regclass('subscribers') IS NOT NULL")
        finally:
            await con.close()
    finally:
        await support.drop_database(pg_admin_url, name)
