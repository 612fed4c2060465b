"""The production image builds, migrates, serves a sign-up and stops cleanly on SIGTERM,
run with the manifests' restrictions: read-only root, every capability dropped, no
privilege escalation, uid 10001 (k8s/base/deployment.yaml).

Building takes minutes (Debian's docker.io engine, the classic builder, a stand-in base
made by mmdebstrap on first use; see .ci/image), so it runs with `make test-image`
(RUN_IMAGE_TEST=1), not in `make test`. Without an engine it skips, saying why.
PostgreSQL (pgserver) listens on a Unix socket only; a small TCP relay on 127.0.0.1
lets the container, on the host's network, reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from tests import support

ROOT = Path(__file__).resolve().parents[2]
TAG = "newsletter:test-image"
RESTRICTED = [
    "--network=host",
    "--read-only",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--user=10001:10001",
    "--tmpfs=/tmp:size=64m",
]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("RUN_IMAGE_TEST") != "1",
        reason="builds a container image (minutes): run `make test-image`",
    ),
]


@contextlib.asynccontextmanager
async def tcp_relay(socket_path: str) -> AsyncIterator[int]:
    """127.0.0.1:<port> forwarded to PostgreSQL's Unix socket."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(socket_path)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


def _docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert not check or done.returncode == 0, f"docker {args[0]}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed (apt-get install docker.io)")
    engine = subprocess.run([ROOT / ".ci" / "image", "engine"], capture_output=True, text=True)
    if engine.returncode != 0:
        pytest.skip(f"no container engine can run here: {engine.stderr.strip()[-500:]}")
    os.environ["DOCKER_HOST"] = engine.stdout.strip()
    build = subprocess.run(
        [ROOT / ".ci" / "image", "build"],
        env={**os.environ, "IMAGE_TAG": TAG},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if build.returncode == 3:
        pytest.skip(f"cannot build here: {build.stderr.strip()[-500:]}")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    # The build stage's certificate authorities never reach the image or its history.
    history = _docker("history", "--no-trunc", TAG).stdout
    config = _docker("image", "inspect", "--format={{json .Config}}", TAG).stdout
    assert "CERTIFICATE" not in history and "EXTRA_CA_PEM" not in history
    assert "PIP_CERT" not in config and "build-ca" not in config
    return TAG


async def test_the_image_migrates_serves_a_signup_and_stops_on_sigterm(
    image: str, pg_admin_url: str, smtp: support.SmtpSink
) -> None:
    socket_dir = parse_qs(urlsplit(pg_admin_url).query).get("host", ["/tmp"])[0]
    port = urlsplit(pg_admin_url).port or 5432
    name = await support.create_database(pg_admin_url, "template0")
    http_port = support.free_port()
    container = f"newsletter-image-test-{os.getpid()}"
    try:
        async with tcp_relay(f"{socket_dir}/.s.PGSQL.{port}") as relay_port:
            env = {
                "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{relay_port}/{name}",
                "SMTP_URL": smtp.url,
                "PUBLIC_URL": support.PUBLIC_URL,
                "SECRET_KEYS": support.TEST_KEY,
                "ADMIN_TOKENS": support.ADMIN_TOKEN,
                "MAIL_FROM": "Test News <news@newsletter.test>",
            }
            env_args = [f"--env={k}={v}" for k, v in env.items()]

            migrate = await asyncio.to_thread(
                _docker, "run", "--rm", *RESTRICTED, *env_args, image, "newsletter", "migrate"
            )
            assert "migration applied" in migrate.stdout + migrate.stderr

            await asyncio.to_thread(
                _docker, "run", "--detach", f"--name={container}", *RESTRICTED, *env_args,
                image, "newsletter", "serve", "--no-migrate", "--port", str(http_port),
            )  # fmt: skip
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
                for _ in range(600):
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
                else:
                    logs = _docker("logs", container, check=False)
                    pytest.fail(f"never ready: {logs.stdout[-2000:]}{logs.stderr[-2000:]}")
                signup = await client.post("/subscribe", data={"email": "image@example.com"})
            assert signup.status_code == 200, signup.text
            [message] = await smtp.wait_for(1, timeout=30)
            assert message.to == "image@example.com"

            user = _docker("exec", container, "id", "-u").stdout.strip()
            assert user == "10001"
            write = _docker("exec", container, "touch", "/opt/venv/x", check=False)
            assert write.returncode != 0 and "Read-only file system" in write.stderr

            await asyncio.to_thread(_docker, "stop", "--time=30", container)  # SIGTERM
            state = _docker("inspect", "--format={{.State.ExitCode}}", container).stdout
            logs = _docker("logs", container)
            assert state.strip() == "0", logs.stdout[-2000:]
            assert '"event": "stopped"' in logs.stdout + logs.stderr
        con = await asyncpg.connect(support.with_database(pg_admin_url, name))
        try:
            assert await con.fetchval("SELECT count(*) FROM subscribers") == 1
        finally:
            await con.close()
    finally:
        _docker("rm", "--force", container, check=False)
        await support.drop_database(pg_admin_url, name)
