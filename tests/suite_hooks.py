"""The suite's pytest hooks (a plugin, loaded by tests/conftest.py).

- A hung test fails after its timeout (pytest-timeout; `timeout` in pyproject.toml) with
  the stack of every asyncio task and thread in the message: the stack a signal lands on
  while an event loop waits is the loop's `select()`, which says nothing; the task that
  waits forever is the part that does.
- In CI (`CI=true`), a test that would skip because a system package is missing (its
  reason says "not installed") fails instead: a green CI then means it ran.
- `slow` means what pyproject.toml says: a test that starts a process (seen through
  Python's audit events) and is not marked `slow` fails, naming the process; the suite's
  own servers start under `infrastructure()`. Slow tests run first, so under xdist their
  long tail overlaps the many short tests instead of ending the run alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

# The phrase a skip's reason carries when a system package is missing: every such skip
# in tests/ says "<package> is not installed" or "… not installed (…)".
MISSING_PACKAGE = "not installed"


def stacks() -> str:
    """Every asyncio task's and every other thread's stack, as text."""
    out = io.StringIO()
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        for task in asyncio.all_tasks(loop):
            frames = _awaiting(task)
            out.write(f"--- asyncio task {task.get_name()} at {_where(frames)}\n")
            out.write("".join(traceback.format_list(frames)))
    current = threading.get_ident()
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        if ident != current:
            frames = traceback.extract_stack(frame)
            out.write(f"--- thread {names.get(ident, ident)} at {_where(frames)}\n")
            out.write("".join(traceback.format_list(frames)))
    return out.getvalue()


def _where(frames: traceback.StackSummary, depth: int = 4) -> str:
    """The innermost frames on one line (innermost last): a CI log that keeps only a
    failure's unindented lines still shows where each task waited."""
    return " > ".join(
        f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in frames[-depth:]
    )


def _awaiting(task: asyncio.Task[Any]) -> traceback.StackSummary:
    """The task's chain of awaits down to where it waits (Task.print_stack shows only its
    outermost coroutine)."""
    frames = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            frames.append((frame, frame.f_lineno))
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return traceback.StackSummary.extract(frames)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's signal method, with `stacks()` in the failure. Other methods, and
    a worker thread where no signal can land, are left to pytest-timeout."""
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        __tracebackhide__ = True
        pytest.fail(
            f"Timeout >{settings.timeout}s; the asyncio tasks and threads then:\n{stacks()}"
        )

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout calls it
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if MISSING_PACKAGE in reason:
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true: a system package the suite needs is missing ({reason}); "
            "`make system-deps` installs it"
        )


# -- the longest tests first ------------------------------------------------------------
DURATIONS_KEY = "newsletter/durations"
SLOW_GUESS = 5.0  # seconds, for a slow test no earlier run has timed
_config: pytest.Config | None = None
_durations: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config


def _cache(config: pytest.Config) -> Any:
    return getattr(config, "cache", None)  # None under -p no:cacheprovider


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first: as the last run here timed them (pytest's cache), else `slow` ones
    first. A stable sort of the same data in every xdist worker, as xdist requires."""
    cache = _cache(config)
    known: dict[str, float] = cache.get(DURATIONS_KEY, {}) if cache is not None else {}

    def expected(item: pytest.Item) -> float:
        guess = SLOW_GUESS if item.get_closest_marker("slow") is not None else 0.0
        return known.get(item.nodeid, guess)

    items.sort(key=expected, reverse=True)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _config is not None and not hasattr(_config, "workerinput"):
        _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    cache = _cache(session.config)
    if cache is None or hasattr(session.config, "workerinput") or not _durations:
        return
    known = cache.get(DURATIONS_KEY, {})
    known.update({nodeid: round(seconds, 2) for nodeid, seconds in _durations.items()})
    cache.set(DURATIONS_KEY, known)


# -- `slow` matches its definition ----------------------------------------------------
SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.fork", "os.system"})
_spawned: list[str] = []
_infrastructure = 0


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in SPAWN_EVENTS and not _infrastructure:
        what = args[0] if args else event
        _spawned.append(os.path.basename(str(what)) if what else event)


sys.addaudithook(_audit)


@contextlib.contextmanager
def infrastructure() -> Iterator[None]:
    """The suite's own servers (PostgreSQL, PgBouncer) start in here: not the test's."""
    global _infrastructure
    _infrastructure += 1
    try:
        yield
    finally:
        _infrastructure -= 1


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _spawned.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Any:
    yield
    if _spawned and item.get_closest_marker("slow") is None:
        started = ", ".join(sorted(set(_spawned)))
        _spawned.clear()
        pytest.fail(f"started a process ({started}) but is not marked slow", pytrace=False)
