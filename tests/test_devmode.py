import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import aiosmtplib
import httpx
import pytest

from service import devmode
from tests import support
from tests.conftest import running
from tests.signup_helpers import subscribe, wait_until


@pytest.fixture
def make_dev_settings(make_settings):
    """Dev-mode settings with the catcher on a free port of its own."""

    def make(**overrides):
        return make_settings(
            dev=True, smtp_url=f"smtp://127.0.0.1:{support.free_port()}", **overrides
        )

    return make


@pytest.fixture
def dev_settings(make_dev_settings):
    return make_dev_settings()


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


async def test_links_in_the_previewed_email_open_the_page_itself(dev_settings) -> None:
    async with running(dev_settings) as (_app, client):
        await send_to_catcher(dev_settings.smtp.port)
        html = (await client.get("/dev/mail/1/html")).text
        csp = (await client.get("/dev/mail/1/html")).headers["content-security-policy"]
    assert html.startswith('<base target="_top"><p><a href=')
    assert "allow-top-navigation-by-user-activation" in csp


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<html><head><title>x</title></head>", '<html><head><base target="_top"><title>'),
        ('<HEAD lang="en"><p>', '<HEAD lang="en"><base target="_top"><p>'),
        ("<header>x</header>", '<base target="_top"><header>'),
    ],
)
def test_the_base_target_goes_into_the_head_when_there_is_one(html: str, expected: str) -> None:
    assert devmode.open_links_on_top(html).startswith(expected)


async def test_caught_mail_is_kept_in_the_dev_directory_across_restarts(
    make_dev_settings, tmp_path
) -> None:
    settings = make_dev_settings(dev_mail_dir=str(tmp_path / "mail"))
    async with running(settings) as (_app, client):
        await send_to_catcher(settings.smtp.port)
        assert "survives a restart" in (await client.get("/dev/mail")).text
    assert [p.name for p in (tmp_path / "mail").iterdir()] == ["00000001.eml"]
    async with running(settings) as (_app, client):
        listing = (await client.get("/dev/mail")).text
        assert "Please confirm" in listing and "reader@example.org" in listing
        assert "abc.def" in (await client.get("/dev/mail/1")).text
        await send_to_catcher(settings.smtp.port)
        assert "/dev/mail/2" in (await client.get("/dev/mail")).text  # numbering goes on


async def test_without_a_directory_the_page_says_mail_is_gone_after_a_restart(
    dev_settings,
) -> None:
    async with running(dev_settings) as (_app, client):
        assert "gone after a restart" in (await client.get("/dev/mail")).text


async def test_a_confirmation_held_back_by_the_minimum_interval_is_listed_with_its_time(
    dev_settings, db
) -> None:
    async with running(dev_settings) as (app, client):
        await subscribe(client, "ada@example.com")
        await wait_until(lambda: _caught(app))
        await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
        assert 'id="held-back"' not in (await client.get("/dev/mail")).text
        await subscribe(client, "ada@example.com")  # the same address again at once
        page = (await client.get("/dev/mail")).text
    assert 'id="held-back"' in page
    held = re.search(r'<ul class="held">(.*?)</ul>', page, re.S).group(1)
    assert "ada@example.com" in held and "less than 10 minutes before" in held
    # The first email's claim on the address's allowance, ten minutes on.
    claimed = await db.fetchval("SELECT last_at FROM rate_limits WHERE scope = 'address'")
    allowed = (claimed + timedelta(minutes=10)).astimezone(UTC)
    assert f"allowed from {allowed:%Y-%m-%d %H:%M:%S} UTC" in held


async def test_a_confirmation_held_back_by_the_daily_limit_is_allowed_again_tomorrow(
    make_dev_settings, db
) -> None:
    settings = make_dev_settings(rate_confirm_per_day=1, rate_confirm_min_interval=0)
    async with running(settings) as (app, client):
        await subscribe(client, "ada@example.com")
        await wait_until(lambda: _caught(app))
        await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
        await subscribe(client, "ada@example.com")
        page = (await client.get("/dev/mail")).text
    held = re.search(r'<ul class="held">(.*?)</ul>', page, re.S).group(1)
    assert "the most RATE_CONFIRM_PER_DAY allows" in held
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    assert f"allowed from {tomorrow.isoformat()} 00:00:00 UTC" in held


async def _caught(app) -> bool:
    return bool(app.state.mailbox.messages)


def test_port_in_use_sees_a_listener_and_not_a_free_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert devmode.port_in_use(listener.getsockname()[1])
    assert not devmode.port_in_use(support.free_port())


@pytest.mark.slow
def test_a_second_newsletter_dev_on_a_taken_port_says_so_plainly(tmp_path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "service", "dev", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"port {port} is already in use" in done.stderr
    assert "already running" in done.stderr or "still running" in done.stderr
    assert "newsletter dev is running" not in done.stdout  # no misleading banner
    assert "{" not in done.stderr  # a sentence, not a JSON log line
    assert not (tmp_path / ".newsletter").exists()  # nothing was started


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

    def caught_confirmation() -> str:
        deadline = time.monotonic() + 30
        while "Please confirm" not in httpx.get(f"http://127.0.0.1:{port}/dev/mail").text:
            assert time.monotonic() < deadline, "no confirmation email was caught"
            time.sleep(0.2)
        return httpx.get(f"http://127.0.0.1:{port}/dev/mail/1").text

    proc = start()
    try:
        wait_and_check(proc)
        httpx.post(f"http://127.0.0.1:{port}/subscribe", data={"email": "ada@example.com"})
        first = caught_confirmation()
    finally:
        output = stop(proc)
    assert f"http://127.0.0.1:{port}/dev/mail" in output
    assert "Dev Newsletter &lt;newsletter@localhost&gt;" in first  # a readable sender
    assert len(list((tmp_path / ".newsletter" / "mail").glob("*.eml"))) == 1
    secrets_file = tmp_path / ".newsletter" / "secrets.json"
    assert oct(secrets_file.stat().st_mode & 0o777) == "0o600"
    first_secrets = json.loads(secrets_file.read_text())
    assert (tmp_path / ".newsletter" / "pgdata").is_dir()

    proc = start()
    try:
        wait_and_check(proc)
        assert caught_confirmation() == first  # the caught mail survived the restart
    finally:
        stop(proc)
    assert json.loads(secrets_file.read_text()) == first_secrets
    # SIGTERM stopped the embedded PostgreSQL too: nothing is left running.
    assert not (tmp_path / ".newsletter" / "pgdata" / "postmaster.pid").exists()


async def test_an_internationalised_address_is_caught_and_blamed_on_no_limit(
    dev_settings, db
) -> None:
    """The README's own example: the catcher offers SMTPUTF8 as real servers do."""
    async with running(dev_settings) as (app, client):
        await subscribe(client, "jörg@bücher.example")
        await wait_until(lambda: _caught(app))
        listing = (await client.get("/dev/mail")).text
    assert "jörg@bücher.example" in listing
    assert 'id="held-back"' not in listing


async def test_a_confirmation_the_mail_server_refused_is_not_blamed_on_the_limits(
    make_dev_settings, db
) -> None:
    settings = make_dev_settings()
    async with running(settings) as (app, client):
        await subscribe(client, "ada@example.com")
        await wait_until(lambda: _caught(app))
        await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
        # As if the email had failed for good: sent never, the claim made at the sign-up.
        await db.execute("UPDATE subscribers SET confirm_sent_at = NULL")
        page = (await client.get("/dev/mail")).text
    held = re.search(r'<ul class="held">(.*?)</ul>', page, re.S).group(1)
    assert "previous confirmation email" not in held
    assert "the mail server did not accept it" in held


async def test_the_pixel_url_is_shown_but_not_offered_as_a_link(dev_settings) -> None:
    """Clicking it would record an open that nobody made."""
    async with running(dev_settings) as (_app, client):
        await send_to_catcher(dev_settings.smtp.port)
        item = (await client.get("/dev/mail/1")).text
    assert '<a href="http://newsletter.test/o/x.gif"' not in item
    assert "<code>http://newsletter.test/o/x.gif</code>" in item
    assert '<a href="http://newsletter.test/confirm/abc.def">' in item


async def test_check_your_inbox_links_to_the_caught_mail_in_dev_only(dev_settings, client) -> None:
    async with running(dev_settings) as (_app, dev_client):
        thanks = await subscribe(dev_client, "ada@example.com")
    assert '<a href="/dev/mail">' in thanks.text
    assert "/dev/mail" not in (await subscribe(client, "bob@example.com")).text


async def test_a_link_request_held_back_by_the_allowance_is_listed_with_its_time(
    dev_settings, db
) -> None:
    """A fresh link asked for within RATE_CONFIRM_MIN_INTERVAL of the last email: no row
    records it, but /dev/mail lists it with the other held-back emails."""
    from tests.manage_support import manage_path
    from tests.people import add_subscriber

    sid = await add_subscriber(db, "ada@example.com")
    async with running(dev_settings) as (app, client):
        await client.post(manage_path(sid), data={"action": "send_link"})
        await wait_until(lambda: _caught(app))
        await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
        answer = await client.post(manage_path(sid), data={"action": "send_link"})
        assert "We could not email you a link just now." in answer.text
        page = (await client.get("/dev/mail")).text
    held = re.search(r'<ul class="held">(.*?)</ul>', page, re.S).group(1)
    assert "ada@example.com" in held and "asked for a link to their data" in held
    claimed = await db.fetchval("SELECT last_at FROM rate_limits WHERE scope = 'address'")
    allowed = (claimed + timedelta(minutes=10)).astimezone(UTC)
    assert f"allowed from {allowed:%Y-%m-%d %H:%M:%S} UTC" in held
