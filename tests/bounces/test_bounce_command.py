"""`newsletter bounces` as its own process, and the receiver while the database is away."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys

import aiosmtplib
import pytest

from service.bounces.receiver import BounceServer
from service.db import connections as service_db
from tests import people, support
from tests.bounce_support import DOMAIN, return_path, sample, tokens
from tests.signup_helpers import wait_until


async def _smtp_ready(port: int) -> bool:
    with contextlib.suppress(OSError):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
        return True
    return False


@pytest.mark.slow
async def test_the_bounces_command_receives_a_bounce_and_stops_on_sigterm(
    database_url, db, make_settings
) -> None:
    """`newsletter bounces --host H --port P` (the contract): the flags win over
    BOUNCE_SMTP_HOST and BOUNCE_SMTP_PORT."""
    campaign = await people.add_campaign(db)
    sid = await people.add_subscriber(db, "gone@example.org")
    port, unused = support.free_port(), support.free_port()
    env = support.base_env(
        database_url,
        "smtp://127.0.0.1:1",
        BOUNCE_DOMAIN=DOMAIN,
        BOUNCE_SMTP_HOST="192.0.2.1",  # not this machine: binding it would fail
        BOUNCE_SMTP_PORT=str(unused),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "bounces", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=support.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_until(lambda: _smtp_ready(port), timeout=30)
        path = return_path(make_settings(bounce_domain=DOMAIN), sid, campaign)
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as smtp:
            await smtp.sendmail("", [path], sample("lhost-outlook-02.eml"))
        assert await db.fetchval("SELECT count(*) FROM subscribers") == 0
        assert not await _smtp_ready(unused)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "gone@example.org" not in output  # no address in the logs
    assert '"bounce received"' in output or "bounce received" in output


@pytest.mark.slow
def test_the_bounces_command_needs_bounce_domain(database_url) -> None:
    result = support.run_cli(support.base_env(database_url, "smtp://127.0.0.1:1"), "bounces")
    assert result.returncode == 2
    assert "BOUNCE_DOMAIN" in result.stderr


async def _deliver(port: int, path: str) -> bool:
    """One attempt of the sending system: True on 250, False on 451 (it tries again)."""
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) as smtp:
            await smtp.sendmail("", [path], sample("lhost-postfix-01.eml"))
    except aiosmtplib.SMTPResponseException as deferred:
        assert deferred.code == 451
        return False
    return True


async def test_while_the_database_is_away_the_receiver_answers_451_and_keeps_nothing(
    database_url, db, make_settings
) -> None:
    settings = make_settings(bounce_domain=DOMAIN)
    sid = await people.add_subscriber(db, "later@example.org")
    pool = await service_db.create_pool(settings)
    server = BounceServer(pool, settings, tokens())
    port = await server.start("127.0.0.1", 0)
    path = return_path(settings, sid, None)
    try:
        admin = await support.cut_off(database_url, keep_pid=-1)
        try:
            assert await _deliver(port, path) is False
        finally:
            await support.restore(admin, database_url)
        # The sender retries until the receiver can reach the database again.
        await wait_until(lambda: _deliver(port, path), timeout=30, interval=0.5)
    finally:
        await server.stop()
        await pool.close()
    check = await service_db.connect(settings)
    try:
        assert await check.fetchval("SELECT count(*) FROM subscribers WHERE id = $1", sid) == 0
    finally:
        await check.close()
