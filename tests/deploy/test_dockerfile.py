"""The Dockerfile's policies, read from the file without Docker.

The Dockerfile is parsed and its rules checked (multi-stage, numeric non-root USER, no
HEALTHCHECK, `newsletter serve`, nothing but the venv in the final stage, locked and
hash-checked dependencies, a build context that holds what it copies). That the image
builds and runs is tests/deploy/test_image.py (`make test-image`); that the wheel alone
migrates is tests/deploy/test_wheel.py.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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


def test_final_stage_copies_only_the_venv() -> None:
    runtime = stages()[-1]
    copies = runtime.all("COPY") + runtime.all("ADD")
    assert copies
    build_name = stages()[0].name
    for args in copies:
        assert args.startswith(f"--from={build_name} "), f"unexpected copy into the image: {args}"
    targets = {args.split()[-1] for args in copies}
    assert targets == {"/opt/venv"}
    runs = " ".join(runtime.all("RUN"))
    assert not re.search(r"apt-get|apk |pip |gcc|build-essential|curl|wget", runs), runs
    env = " ".join(runtime.all("ENV"))
    assert "/opt/venv/bin" in env and "PYTHONPATH" not in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "the root filesystem is read-only"


def test_builder_installs_the_locked_dependencies_with_their_hashes() -> None:
    runs = stages()[0].all("RUN")
    assert any("--require-hashes" in run and "-r requirements.lock" in run for run in runs)
    assert any(run.startswith("/opt/venv/bin/pip install --no-deps") for run in runs)
    runtime = stages()[-1]
    assert not any("EXTRA_CA_PEM" in args for args in runtime.all("ARG") + runtime.all("ENV"))


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
    assert {"requirements.lock", "pyproject.toml", "README.md", "service", "sql"} <= set(sources)
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
