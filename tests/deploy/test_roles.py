"""The role split: `serve --no-worker` answers pages and the pixel and sends nothing,
`newsletter worker` sends the outbox with only health and metrics over HTTP, and
`newsletter serve` alone still does everything."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import asyncpg
import httpx
import pytest

from service.app import create_app
from tests import support
from tests.signup_helpers import outbox_empty, subscribe, wait_until


async def test_a_web_process_queues_mail_that_only_a_worker_process_sends(
    make_settings, db: asyncpg.Connection, smtp: support.SmtpSink
) -> None:
    settings = make_settings()
    web, worker = create_app(settings, "web"), create_app(settings, "worker")
    async with web.router.lifespan_context(web):
        assert web.state.outbox is None  # no sending lane in the web role
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url=support.PUBLIC_URL) as client:
            assert (await subscribe(client, "split@example.com")).status_code == 200
        assert await db.fetchval("SELECT count(*) FROM outbox") == 1
        async with worker.router.lifespan_context(worker):
            assert worker.state.outbox is not None
            [message] = await smtp.wait_for(1)
            await wait_until(lambda: outbox_empty(db))
            transport = httpx.ASGITransport(app=worker)
            async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
                assert (await client.get("/readyz")).status_code == 200
                assert "emails_sent_total" in (await client.get("/metrics")).text
                # No public page, no pixel, no admin API in the worker role.
                for path in ("/subscribe", "/o/x.gif", "/admin/api/campaigns"):
                    assert (await client.get(path)).status_code == 404
    assert message.to == "split@example.com"


def test_an_unknown_role_is_refused(make_settings) -> None:
    with pytest.raises(ValueError, match="role"):
        create_app(make_settings(), "mailer")


async def test_outbox_concurrency_zero_runs_no_worker(make_settings) -> None:
    app = create_app(make_settings(outbox_concurrency=0))
    async with app.router.lifespan_context(app):
        assert app.state.outbox is None


@pytest.mark.slow
async def test_the_worker_command_sends_and_stops_cleanly_on_sigterm(
    database_url: str, db: asyncpg.Connection, smtp: support.SmtpSink
) -> None:
    env = support.base_env(database_url, smtp.url, OUTBOX_POLL_INTERVAL="0.2s")
    web = support.ServiceProcess(env, "--no-worker").start()
    worker = support.ServiceProcess(env, command="worker").start()
    try:
        await web.wait_ready(path="/readyz")
        await worker.wait_ready(path="/readyz")
        async with httpx.AsyncClient(base_url=web.url) as client:
            assert (await subscribe(client, "worker@example.com")).status_code == 200
        [message] = await smtp.wait_for(1, timeout=30)
        assert message.to == "worker@example.com"
        async with httpx.AsyncClient(base_url=worker.url) as client:
            assert (await client.get("/subscribe")).status_code == 404
        worker.signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown
        assert await asyncio.to_thread(worker.wait, 30) in (0, -signal.SIGTERM)
        assert '"stopped"' in worker.output()
    finally:
        worker.stop()
        web.stop()


# -- what runs in each role: retention and the bounce mailbox ---------------------------


@pytest.mark.parametrize("role", ["all", "worker", "web"])
async def test_retention_and_the_bounce_mailbox_run_in_worker_and_all_never_in_web(
    make_settings, db: asyncpg.Connection, role: str
) -> None:
    """The real lifespan of each role, with a retention pass due within 0.5 s and a
    mailbox to poll (a listener on loopback that counts the poller's
    connections): both run in `worker` and `all`, neither in `web`."""
    connections = 0

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        # Just enough IMAP for the poll to fail at once (and be retried): a greeting, the
        # capabilities, and every other command refused (LOGIN first).
        writer.write(b"* OK ready\r\n")
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                tag, _, command = line.partition(b" ")
                if command.upper().startswith(b"CAPABILITY"):
                    writer.write(b"* CAPABILITY IMAP4rev1\r\n" + tag + b" OK done\r\n")
                else:
                    writer.write(tag + b" NO refused\r\n")
                await writer.drain()
        writer.close()

    mailbox = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = mailbox.sockets[0].getsockname()[1]
    # An erasure-journal row older than every backup: the retention pass deletes it.
    await db.execute(
        "INSERT INTO erasure_journal (subscriber_id, created_at, erased_at)"
        " VALUES (1, now() - interval '400 days', now() - interval '400 days')"
    )
    settings = make_settings(
        purge_interval=0.5,
        bounce_imap_url=f"imap://bounces:secret@127.0.0.1:{port}/INBOX",
        bounce_imap_interval=0.2,
    )
    app = create_app(settings, role)
    try:
        async with app.router.lifespan_context(app):
            tasks = {task.get_name() for task in asyncio.all_tasks()}
            if role == "web":
                await asyncio.sleep(1.5)  # three times the retention's longest first delay
            else:
                await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM erasure_journal"))
                await wait_until(lambda: _value(connections >= 1))
    finally:
        mailbox.close()
        await mailbox.wait_closed()
    running = {"retention", "bounce-mailbox"} & tasks
    journal = await db.fetchval("SELECT count(*) FROM erasure_journal")
    if role == "web":
        assert (running, journal, connections) == (set(), 1, 0)
    else:
        assert running == {"retention", "bounce-mailbox"}
        assert journal == 0 and connections >= 1


async def _value(value: object) -> object:
    return value
