"""The service as the benches run it: `python -m <module> <args>` on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def machine_cpu() -> tuple[float, float]:
    """Seconds of CPU time the machine spent busy and idle (or waiting for I/O) so far."""
    user, nice, system, idle, iowait, *rest = map(int, Path("/proc/stat").read_text().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + sum(rest)) / tick, (idle + iowait) / tick


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """Started on entry and ready once `ready` answers 200; terminated on exit.

    `preexec` runs in the child before the exec (bench/pods.py puts it in its pod's
    cgroup there). Its output goes to a temporary log, shown if it exits early.
    """

    def __init__(
        self,
        env: dict[str, str],
        args: list[str],
        module: str = "service",
        ready: str = "/readyz",
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.port = free_port()
        self.env, self.args, self.module, self.ready = env, args, module, ready
        self.preexec = preexec
        self.url = f"http://127.0.0.1:{self.port}"
        self.listen = ["--host", "127.0.0.1", "--port", str(self.port)]

    def __enter__(self) -> ServiceProcess:
        self.log = tempfile.NamedTemporaryFile(prefix="bench-service-", suffix=".log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args, *self.listen],
            env=self.env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=self.preexec,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = Path(self.log.name).read_text()[-2000:]
                raise RuntimeError(f"{self.module} {self.args[0]} exited: {log}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + self.ready, timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.module} {self.args[0]} did not start")

    def cpu_seconds(self) -> float:
        """CPU time (user and system, all threads) the process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
