"""A real PgBouncer (Debian's package) in transaction pooling mode for the tests.

It listens on a free loopback port and forwards every database name (`*`) to the
test PostgreSQL, through its unix socket (the embedded pgserver listens on nothing
else) or its TCP address (TEST_DATABASE_URL). Clients authenticate with `trust`:
it exists for the tests only and binds 127.0.0.1.

    with pgbouncer.running(pg_admin_url) as bouncer:
        url = bouncer.url_for(database_url)   # same database, through PgBouncer
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from tests.support import free_port

NOT_INSTALLED = (
    "pgbouncer is not installed (Debian/Ubuntu: `apt-get install pgbouncer`, or "
    "`make system-deps` as root)"
)


def executable() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    fallback = Path("/usr/sbin/pgbouncer")  # Debian installs it outside a user's PATH
    return str(fallback) if fallback.exists() else None


class PgBouncer:
    """One pgbouncer process; `start()` returns once it accepts connections."""

    def __init__(self, upstream_url: str, pool_mode: str = "transaction") -> None:
        self.upstream = urlsplit(upstream_url)
        self.pool_mode = pool_mode
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def url_for(self, database_url: str) -> str:
        """The URL of the same database and user, through PgBouncer."""
        parts = urlsplit(database_url)
        user = parts.username or "postgres"
        return urlunsplit(("postgresql", f"{user}@127.0.0.1:{self.port}", parts.path, "", ""))

    @property
    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _upstream_host(self) -> tuple[str, int]:
        socket_dir = parse_qs(self.upstream.query).get("host", [""])[0]
        host = socket_dir or self.upstream.hostname or "127.0.0.1"
        return host, self.upstream.port or 5432

    def _run_as(self, host: str) -> str | None:
        """PgBouncer refuses to run as root: then take the socket directory's owner."""
        if os.geteuid() != 0:
            return None
        if host.startswith("/"):
            return pwd.getpwuid(os.stat(host).st_uid).pw_name
        return "nobody"

    def _write_config(self, host: str, user: str | None) -> Path:
        login = unquote(self.upstream.username or "postgres")
        password = unquote(self.upstream.password or "")
        (self.directory / "userlist.txt").write_text(f'"{login}" "{password}"\n')
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            "\n".join(
                (
                    "[databases]",
                    f"* = host={host} port={self._upstream_host()[1]}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self.directory / 'userlist.txt'}",
                    f"pool_mode = {self.pool_mode}",
                    "max_client_conn = 500",
                    "default_pool_size = 20",
                    "ignore_startup_parameters = extra_float_digits",
                    # After a failed server login PgBouncer refuses that database for
                    # this long (default 15 s); the outage tests expect quick recovery.
                    "server_login_retry = 1",
                    # A client waiting this long for a server connection (the database is
                    # gone) gets SQLSTATE 08P01, a connection error: the app's 503. The
                    # production pooler waits 30 s, longer than DB_COMMAND_TIMEOUT, so
                    # there the query's own timeout answers 503; 3 s keeps tests short.
                    "query_wait_timeout = 3",
                    f"logfile = {self.directory / 'pgbouncer.log'}",
                    f"pidfile = {self.directory / 'pgbouncer.pid'}",
                    "",
                )
            )
        )
        if user is not None:
            account = pwd.getpwnam(user)
            for path in (self.directory, *self.directory.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)
        return config

    def start(self, timeout: float = 10.0) -> PgBouncer:
        binary = executable()
        if binary is None:
            raise RuntimeError(NOT_INSTALLED)
        host, _port = self._upstream_host()
        user = self._run_as(host)
        config = self._write_config(host, user)
        command = [binary, *(["-u", user] if user else []), str(config)]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.directory
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.proc.returncode}:\n{self.log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen within {timeout}s:\n{self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: immediate shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running(upstream_url: str, pool_mode: str = "transaction") -> Iterator[PgBouncer]:
    bouncer = PgBouncer(upstream_url, pool_mode).start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
