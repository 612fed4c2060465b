"""The suite's own rules (tests/suite_hooks.py), each run in a small pytest of its own:
a hang fails with the stack of the task that waits, a test that starts a process is
marked slow, and in CI a skip for a missing system package fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import support


def inner_pytest(
    directory: Path, source: str, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`pytest` with the suite's hooks on one test file of `source`."""
    (directory / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nmarkers =\n    slow: spawns\n"
    )
    (directory / "test_inner.py").write_text(textwrap.dedent(source))
    environment = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    environment.update(env or {}, PYTHONPATH=str(support.ROOT))
    command = [sys.executable, "-m", "pytest", "-p", "tests.suite_hooks"]
    command += ["-p", "no:cacheprovider", "-rA", *options, "test_inner.py"]
    return subprocess.run(
        command,
        cwd=directory,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # a pytest process
def test_a_hung_async_test_fails_with_the_stack_of_the_task_that_waits(tmp_path: Path) -> None:
    result = inner_pytest(
        tmp_path,
        """
        import asyncio

        async def wait_for_a_reply_that_never_comes():
            await asyncio.Event().wait()

        async def test_hangs():
            await wait_for_a_reply_that_never_comes()

        def test_after_it_the_run_goes_on():
            pass
        """,
        "--timeout=2",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Timeout >2.0s" in result.stdout
    # The coroutine that waits, not only the event loop's select(), is in the report.
    assert "in wait_for_a_reply_that_never_comes" in result.stdout
    assert re.search(r"1 failed, 1 passed", result.stdout), result.stdout


@pytest.mark.slow  # a pytest process
def test_a_blocking_call_that_hangs_fails_too(tmp_path: Path) -> None:
    result = inner_pytest(
        tmp_path,
        """
        import time

        def test_sleeps():
            time.sleep(60)
        """,
        "--timeout=1",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Timeout >1.0s" in result.stdout and "time.sleep(60)" in result.stdout


@pytest.mark.slow  # a pytest process
def test_a_test_that_starts_a_process_unmarked_fails_and_marked_passes(tmp_path: Path) -> None:
    result = inner_pytest(
        tmp_path,
        """
        import subprocess
        import pytest

        def test_unmarked():
            subprocess.run(["true"], check=True)

        @pytest.mark.slow
        def test_marked():
            subprocess.run(["true"], check=True)

        def test_no_process():
            pass
        """,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "started a process (true) but is not marked slow" in result.stdout
    assert re.search(r"ERROR test_inner.py::test_unmarked", result.stdout), result.stdout
    assert re.search(r"PASSED test_inner.py::test_marked", result.stdout), result.stdout
    assert re.search(r"3 passed, 1 error", result.stdout), result.stdout


SKIPS = """
    import pytest

    def test_needs_a_package():
        pytest.skip("frobnicator is not installed (apt-get install frobnicator)")

    @pytest.mark.skipif(True, reason="frobd is not installed")
    def test_needs_a_daemon():
        pass

    def test_skips_for_another_reason():
        pytest.skip("runs on Tuesdays only")
    """


@pytest.mark.slow  # a pytest process
def test_in_ci_a_skip_for_a_missing_system_package_fails(tmp_path: Path) -> None:
    result = inner_pytest(tmp_path, SKIPS, env={"CI": "true"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "CI=true: a system package the suite needs is missing" in result.stdout
    assert re.search(r"1 failed, 1 skipped, 1 error", result.stdout), result.stdout


@pytest.mark.slow  # a pytest process
def test_outside_ci_the_same_tests_skip(tmp_path: Path) -> None:
    result = inner_pytest(tmp_path, SKIPS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"3 skipped", result.stdout), result.stdout


def test_the_conftest_names_only_test_files_that_exist() -> None:
    conftest = (support.ROOT / "tests" / "conftest.py").read_text()
    named = set(re.findall(r"\btest_\w+\.py\b", conftest))
    assert named, "the conftest names no test file: this check has nothing to check"
    assert {name for name in named if not any((support.ROOT / "tests").rglob(name))} == set()
