import json
import os
import signal
import subprocess
import sys
import time
from email.message import EmailMessage

import aiosmtplib
import httpx
import pytest

from tests import support
from tests.conftest import running


@pytest.fixture
def dev_settings(make_settings):
    return make_settings(dev=True, smtp_url=f"smtp://127.0.0.1:{support.free_port()}")


async def send_to_catcher(port: int) -> None:
    message = EmailMessage()
    message["From"] = "news@newsletter.test"
    message["To"] = "reader@example.org"
    message["Subject"] = "Please confirm"
    message.set_content("Confirm: http://newsletter.test/confirm/abc.def\n")
    message.add_alternative(
        '<p><a href="http://newsletter.test/confirm/abc.def">Confirm</a>'
        '<img src="http://newsletter.test/o/x.gif" alt=""></p>',
        subtype="html",
    )
    await aiosmtplib.send(message, hostname="127.0.0.1", port=port)


async def test_the_mail_catcher_is_a_real_smtp_server_and_lists_messages(dev_settings) -> None:
    async with running(dev_settings) as (_app, client):
        assert "No mail yet" in (await client.get("/dev/mail")).text
        await send_to_catcher(dev_settings.smtp.port)
        listing = (await client.get("/dev/mail")).text
        assert "Please confirm" in listing and "reader@example.org" in listing
        item = await client.get("/dev/mail/1")
        assert item.status_code == 200
        assert '<a href="http://newsletter.test/confirm/abc.def">' in item.text
        html = await client.get("/dev/mail/1/html")
        assert html.headers["content-security-policy"].startswith("sandbox")
        assert 'src="http://newsletter.test/o/x.gif"' in html.text
        assert (await client.get("/dev/mail/99")).status_code == 404


async def test_the_demo_page_has_the_signup_form_with_a_hidden_honeypot(dev_settings) -> None:
    async with running(dev_settings) as (_app, client):
        page = await client.get("/")
    assert page.status_code == 200
    assert '<form method="post" action="/subscribe">' in page.text
    assert 'name="website"' in page.text and 'tabindex="-1"' in page.text
    assert 'name="tracking"' in page.text  # consent mode: the unticked box
    assert "checked" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


async def test_dev_only_routes_do_not_exist_outside_dev_mode(client: httpx.AsyncClient) -> None:
    for path in ("/", "/dev/mail", "/dev/mail/1", "/dev/mail/1/html"):
        assert (await client.get(path)).status_code == 404, path


@pytest.mark.slow
def test_newsletter_dev_serves_the_demo_and_caught_mail_and_keeps_its_data(tmp_path) -> None:
    port = support.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "SMTP_"))}

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "service", "dev", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_and_check(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("newsletter dev did not serve / within a minute")
        assert httpx.get(f"http://127.0.0.1:{port}/dev/mail").status_code == 200

    def stop(proc: subprocess.Popen) -> str:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        return output

    proc = start()
    try:
        wait_and_check(proc)
    finally:
        output = stop(proc)
    assert f"http://127.0.0.1:{port}/dev/mail" in output
    secrets_file = tmp_path / ".newsletter" / "secrets.json"
    assert oct(secrets_file.stat().st_mode & 0o777) == "0o600"
    first_secrets = json.loads(secrets_file.read_text())
    assert (tmp_path / ".newsletter" / "pgdata").is_dir()

    proc = start()
    try:
        wait_and_check(proc)
    finally:
        stop(proc)
    assert json.loads(secrets_file.read_text()) == first_secrets
    # SIGTERM stopped the embedded PostgreSQL too: nothing is left running.
    assert not (tmp_path / ".newsletter" / "pgdata" / "postmaster.pid").exists()
