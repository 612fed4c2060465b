"""The small-server deployment (deploy/compose, docs/deploying/small-server.md) works as
documented: from the image `make image` builds, `up` migrates once and starts the web
replicas, the worker, PostgreSQL and Caddy; a sign-up through Caddy's HTTPS gets its
confirmation email and the link confirms; a `pg_dump` backup restored after an erasure
brings the person back until `newsletter reapply-erasures` erases them again.

It builds images and starts containers (minutes), so it runs with `make test-compose`
(RUN_COMPOSE_TEST=1), not in `make test`; without docker, a compose client or an engine
it skips, saying why, as tests/deploy/test_image.py does. No registry is needed: the
newsletter image and the stand-in Debian base come from .ci/image; PostgreSQL and Caddy
are Debian's packages built on that base. Caddy serves `localhost` with a certificate
from its own local CA, which the test trusts; mail goes to an aiosmtpd container (the
image has aiosmtpd) writing a Maildir the test reads.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import support

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
TAG = "newsletter:test-compose"
EMAIL = "compose@example.com"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        os.environ.get("RUN_COMPOSE_TEST") != "1",
        reason="builds container images and runs a compose project (minutes): run `make test-compose`",
    ),
]


def _compose_command() -> list[str]:
    """`docker compose` (v2) where the plugin is installed, else Debian's docker-compose (v1)."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no compose client (apt-get install docker-compose, or make system-deps)")


def _ci_image(*args: str, tag: str = TAG) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [ROOT / ".ci" / "image", *args],
        env={**os.environ, "IMAGE_TAG": tag},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode == 3:
        pytest.skip(f"cannot build here: {done.stderr.strip()[-500:]}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


class Project:
    """One compose project: the repository's docker-compose.yml, the test's .env and an
    override that adds the mail sink."""

    def __init__(self, tmp: Path, command: list[str]) -> None:
        self.tmp = tmp
        self.https_port = support.free_port()
        self.public_url = f"https://localhost:{self.https_port}"
        self.password = secrets.token_hex(16)
        self.admin_token = secrets.token_hex(32)
        self.maildir = tmp / "mail"
        self.maildir.mkdir()
        self.maildir.chmod(0o777)  # the sink runs as uid 10001
        env = {
            "SITE_ADDRESS": "localhost",
            "PUBLIC_URL": self.public_url,
            "MAIL_FROM": "Compose News <news@newsletter.test>",
            "SMTP_URL": "smtp://mailsink:2525",
            "POSTGRES_PASSWORD": self.password,
            "SECRET_KEYS": secrets.token_hex(32),
            "ADMIN_TOKENS": self.admin_token,
            "NEWSLETTER_IMAGE": TAG,
            "WEB_REPLICAS": "2",
            "HTTP_PORT": str(support.free_port()),
            "HTTPS_PORT": str(self.https_port),
            "FRONT_SUBNET": "172.31.249.0/24",
        }
        (tmp / "test.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        (tmp / "override.yml").write_text(
            "services:\n"
            "  mailsink:\n"
            f"    image: {TAG}\n"
            '    user: "10001:10001"\n'
            '    command: ["python", "-m", "aiosmtpd", "-n", "-l", "0.0.0.0:2525",'
            ' "-c", "aiosmtpd.handlers.Mailbox", "/mail/box"]\n'
            f'    volumes: ["{self.maildir}:/mail"]\n'
            "    networks: [back]\n"
            "    stop_signal: SIGINT\n"  # PID 1 ignores SIGTERM; SIGINT ends the loop
            "  worker:\n"
            "    depends_on: [mailsink]\n"
        )
        self.base = [
            *command,
            f"--project-name=newsletter-compose-test-{os.getpid()}",
            f"--env-file={tmp / 'test.env'}",
            f"--file={COMPOSE_DIR / 'docker-compose.yml'}",
            f"--file={tmp / 'override.yml'}",
        ]

    def run(
        self, *args: str, check: bool = True, timeout: float = 600, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(
            [*self.base, *args], input=stdin, capture_output=True, timeout=timeout
        )
        if check and done.returncode != 0:
            logs = subprocess.run([*self.base, "logs", "--no-color"], capture_output=True)
            pytest.fail(
                f"compose {' '.join(args)}: {done.stderr.decode()[-3000:]}\n"
                f"logs: {logs.stdout.decode()[-4000:]}"
            )
        return done

    def sql(self, query: str) -> str:
        """psql in the postgres container, as its superuser (peer authentication)."""
        return self.run(
            "exec", "-T", "postgres", "psql", "-tAc", query, "newsletter"
        ).stdout.decode()

    def tls(self) -> ssl.SSLContext:
        """Trust Caddy's local CA only (it makes the root on its first start)."""
        path = "/data/caddy/pki/authorities/local/root.crt"
        for _ in range(120):
            done = self.run("exec", "-T", "caddy", "cat", path, check=False)
            if done.returncode == 0 and b"BEGIN CERTIFICATE" in done.stdout:
                return ssl.create_default_context(cadata=done.stdout.decode())
            time.sleep(0.5)
        pytest.fail("Caddy never made its local CA")

    def wait_ready(self, client: httpx.Client) -> None:
        """Every web replica healthy (its own /readyz, the compose healthcheck), then the
        same through Caddy."""
        for _ in range(300):
            ids = self.run("ps", "--quiet", "web").stdout.decode().split()
            states = [
                subprocess.run(
                    ["docker", "inspect", "--format={{.State.Health.Status}}", id_],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                for id_ in ids
            ]
            if states and all(state == "healthy" for state in states):
                break
            time.sleep(1)
        else:
            pytest.fail(f"web replicas never healthy: {states}")
        for _ in range(300):
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        pytest.fail(f"never ready through Caddy: {self.run('logs', '--no-color').stdout[-4000:]!r}")

    def mail(self, count: int) -> list[email.message.EmailMessage]:
        new = self.maildir / "box" / "new"
        for _ in range(120):
            files = sorted(new.glob("*"), key=lambda f: f.stat().st_mtime) if new.is_dir() else []
            if len(files) >= count:
                return [
                    email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
                    for f in files
                ]
            time.sleep(0.5)
        pytest.fail(f"{count} email(s) expected in the sink, found {len(files)}")


@pytest.fixture(scope="module")
def images() -> str:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed (apt-get install docker.io)")
    engine = subprocess.run([ROOT / ".ci" / "image", "engine"], capture_output=True, text=True)
    if engine.returncode != 0:
        pytest.skip(f"no container engine can run here: {engine.stderr.strip()[-500:]}")
    os.environ["DOCKER_HOST"] = engine.stdout.strip()
    _ci_image("build")
    _ci_image("debian")
    return TAG


@pytest.fixture
def project(images: str, tmp_path: Path) -> Iterator[Project]:
    project = Project(tmp_path, _compose_command())
    # PostgreSQL and Caddy from Debian's packages (`docker compose build`, as documented).
    project.run("build", timeout=1800)
    try:
        yield project
    finally:
        project.run("down", "--volumes", "--remove-orphans", "--timeout=60", check=False)


def test_compose_signs_up_through_caddy_and_a_restore_reapplies_erasures(
    project: Project,
) -> None:
    project.run("up", "--detach", "--no-build")
    migrate = project.run("logs", "--no-color", "migrate").stdout.decode()
    assert "migration applied" in migrate
    # The replicas, the worker and the one-shot migration, as k8s/ runs them.
    services = project.run("ps", "--services").stdout.decode().split()
    assert {"postgres", "migrate", "web", "worker", "caddy"} <= set(services)
    web = project.run("ps", "--quiet", "web").stdout.decode().split()
    assert len(web) == 2

    with httpx.Client(base_url=project.public_url, verify=project.tls(), timeout=30) as client:
        project.wait_ready(client)
        signup = client.post("/subscribe", data={"email": EMAIL})
        assert signup.status_code == 200, signup.text
        [message] = project.mail(1)
        assert message["To"] == EMAIL
        text = message.get_body(preferencelist=("plain",)).get_content()
        match = re.search(rf"{re.escape(project.public_url)}/confirm/[^\s\"'<>]+", text)
        assert match, f"no confirmation link in {text!r}"
        link = match.group(0).removeprefix(project.public_url)
        assert client.get(link).status_code == 200
        confirmed = client.post(link, data={"choices": "1"})
        assert confirmed.status_code in (200, 303), confirmed.text
        assert project.sql("SELECT status FROM subscribers").split() == ["active"]

        # A backup, then an erasure the backup does not know about.
        backup = project.run("exec", "-T", "postgres", "pg_dump", "--format=custom", "newsletter")
        assert backup.stdout.startswith(b"PGDMP")
        erased = client.delete(
            f"/admin/api/subscribers/{EMAIL}",
            headers={"Authorization": f"Bearer {project.admin_token}"},
        )
        assert erased.status_code == 204, erased.text
    assert project.sql("SELECT count(*) FROM subscribers").strip() == "0"

    # The restore, step by step as docs/deploying/small-server.md gives it.
    project.run("stop", "web", "worker")
    project.run("exec", "-T", "postgres", "createdb", "--owner=newsletter", "journal_copy")
    project.run(
        "exec", "-T", "postgres", "sh", "-c",
        "pg_dump --table=erasure_journal newsletter | psql --quiet journal_copy",
    )  # fmt: skip
    project.run("exec", "-T", "postgres", "dropdb", "newsletter")
    project.run("exec", "-T", "postgres", "createdb", "--owner=newsletter", "newsletter")
    project.run(
        "exec", "-T", "postgres", "pg_restore", "--no-owner", "--role=newsletter",
        "--dbname=newsletter", stdin=backup.stdout,
    )  # fmt: skip
    assert project.sql("SELECT count(*) FROM subscribers").strip() == "1"  # back again
    project.run("run", "--rm", "-T", "migrate")
    reapply = project.run(
        "run", "--rm", "-T", "migrate", "sh", "-c",
        'exec newsletter reapply-erasures --journal-url "${DATABASE_URL%/*}/journal_copy"',
    )  # fmt: skip
    counts = json.loads(reapply.stdout.decode().strip().splitlines()[-1])
    assert counts == {"journal": 1, "erased": 1}
    assert project.sql("SELECT count(*) FROM subscribers").strip() == "0"
    project.run("exec", "-T", "postgres", "dropdb", "journal_copy")

    # Back in service: `up` runs the migration again first (nothing to do), then the rest.
    project.run("up", "--detach", "--no-build")
    with httpx.Client(base_url=project.public_url, verify=project.tls(), timeout=30) as client:
        project.wait_ready(client)
        assert client.post("/subscribe", data={"email": "again@example.com"}).status_code == 200
        assert project.mail(2)[-1]["To"] == "again@example.com"
