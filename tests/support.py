"""Test helpers: a real SMTP sink, throwaway databases, real uvicorn processes."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from aiosmtpd.smtp import SMTP, Envelope, Session

ROOT = Path(__file__).resolve().parent.parent
TEST_KEY = "test-secret-key-0123456789-abcdefghijklmnop"
OLD_TEST_KEY = "old-secret-key-9876543210-zyxwvutsrqponmlk"
ADMIN_TOKEN = "test-admin-token-0123456789"
PUBLIC_URL = "http://newsletter.test"


def b36(number: int) -> str:
    """An id as links of earlier releases carried it (service/tokens.py still reads them)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def proc_field(pid: int, file: str, name: str) -> int:
    """A number from /proc/<pid>/<file> (`status`: VmRSS in KiB; `io`: syscw, ...)."""
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/{file}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def create_database(admin_url: str, template: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    con = await asyncpg.connect(admin_url)
    try:
        await con.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await con.close()
    return name


async def drop_database(admin_url: str, name: str) -> None:
    con = await asyncpg.connect(admin_url)
    try:
        await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await con.close()


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage
    raw: bytes

    @property
    def to(self) -> str:
        return self.recipients[0]

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        return body.get_content() if body is not None else ""


class SmtpSink:
    """A real SMTP server (aiosmtpd) on loopback that keeps what it receives.

    `fail_next(code, times)` makes the next DATA commands answer with that code, for
    retry and rejection tests; `stop()`/`start()` simulate an unreachable relay.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.messages: list[Received] = []
        self._failures: list[str] = []
        self._server: asyncio.AbstractServer | None = None
        self.connections = 0

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def fail_next(self, reply: str, times: int = 1) -> None:
        self._failures.extend([reply] * times)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._failures:
            return self._failures.pop(0)
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), message, raw)  # type: ignore[arg-type]
        )
        return "250 OK"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            self.connections += 1
            return SMTP(self, hostname="sink.test", decode_data=False)

        self._server = await loop.create_server(factory, host="127.0.0.1", port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} messages within {timeout}s, got {len(self.messages)}"
                )
            await asyncio.sleep(0.02)
        return self.messages[:count]

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.recipients]


def base_env(database_url: str, smtp_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "SMTP_"))}
    env.update(
        DATABASE_URL=database_url,
        SMTP_URL=smtp_url,
        PUBLIC_URL=PUBLIC_URL,
        SECRET_KEYS=TEST_KEY,
        ADMIN_TOKENS=ADMIN_TOKEN,
        MAIL_FROM="Test News <news@newsletter.test>",
    )
    env.update(extra)
    return env


def run_cli(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m service <args>` as its own process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=dict(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


class ServiceProcess:
    """`python -m service serve` in a real uvicorn process on a free port."""

    def __init__(
        self, env: Mapping[str, str], *args: str, port: int | None = None, command: str = "serve"
    ) -> None:
        self.command = command  # or "worker"
        self.port = port or free_port()
        self.env = dict(env)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"svc-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                self.command,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self.args,
            ],
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    async def wait_ready(self, timeout: float = 30.0, path: str = "/healthz") -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"service exited with {self.proc.returncode}:\n{self.output()}"
                    )
                try:
                    if (await client.get(self.url + path, timeout=1)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"service not ready within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()


class SlowSmtpSink(SmtpSink):
    """An SmtpSink that stores each message, then holds its "250 OK" for `delay` seconds.

    Sends stay in flight long enough to kill a sender in the middle of one. A message
    whose connection is lost while its reply is held lands in `unacknowledged`: the relay
    has it but the sender never learnt so — the at-least-once window, where a retry by
    another sender makes a duplicate.
    """

    def __init__(self, delay: float, port: int | None = None) -> None:
        super().__init__(port)
        self.delay = delay
        self.held: list[Received] = []
        self.unacknowledged: list[Received] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if not reply.startswith("250"):
            return reply
        received = self.messages[-1]
        self.held.append(received)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:  # aiosmtpd cancels the handler when the peer goes
            self.unacknowledged.append(received)
            raise
        finally:
            self.held.remove(received)
        return reply


@dataclass
class DkimKey:
    """A fresh RSA key for DKIM tests, and the DNS answer a verifier would look up."""

    path: str
    public_der: bytes

    def dnsfunc(self, selector: str, domain: str):
        import base64

        def lookup(name: bytes, timeout: int = 5) -> bytes:
            assert name == f"{selector}._domainkey.{domain}.".encode()
            return b"v=DKIM1; k=rsa; p=" + base64.b64encode(self.public_der)

        return lookup


def dkim_key(directory: Path) -> DkimKey:
    """A fresh 2048-bit RSA key (PKCS #1 PEM, as `openssl genrsa -traditional` writes it),
    made in-process: no `openssl` process, so the tests that sign stay out of `slow`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = directory / "dkim.pem"
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return DkimKey(str(key), public)


async def cut_off(database_url: str, keep_pid: int) -> asyncpg.Connection:
    """Refuses new connections to the test database and drops the open ones."""
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(with_database(database_url, "postgres"))
    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = $1 AND pid NOT IN (pg_backend_pid(), $2)",
        name,
        keep_pid,
    )
    return admin


async def restore(admin: asyncpg.Connection, database_url: str) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    await admin.close()


async def lock_waited_on(db: asyncpg.Connection, pid: int, timeout: float = 30.0) -> None:
    """Returns once backend `pid` waits for a lock (pg_locks): positive evidence that it is
    blocked, where sleeping a while and seeing nothing happen proves nothing."""
    deadline = time.monotonic() + timeout
    while not await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)", pid
    ):
        assert time.monotonic() < deadline, f"backend {pid} never waited for a lock"
        await asyncio.sleep(0.01)
