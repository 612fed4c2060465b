"""Campaign throughput: queue a campaign for N subscribers and send it through the real
outbox worker (with 1 and with 4 sending lanes) to a real SMTP server on loopback, in a
process of its own; report queueing time and mails/second.

Runs on its own embedded PostgreSQL (pgserver, in a temporary directory) with durable
settings left at PostgreSQL's defaults, so the figures are those of a plain server.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
from aiosmtpd.smtp import SMTP

from service import campaigns, migrations
from service.app import create_app
from service.settings import Settings

RECIPIENTS = int(os.environ.get("BENCH_CAMPAIGN_RECIPIENTS", "10000"))
QUEUE_ONLY = int(os.environ.get("BENCH_CAMPAIGN_QUEUE", "100000"))
ADMIN_TOKEN = "bench-admin-token-0123456789"
KEY = "bench-secret-key-0123456789-abcdefghijklmnop"


class CountingSink:
    """A real SMTP server that only counts: the bench measures the sender, not a parser."""

    def __init__(self, received, nbytes) -> None:
        self.received = received  # multiprocessing.Value: read by the measuring process
        self.nbytes = nbytes

    async def handle_DATA(self, server, session, envelope) -> str:
        with self.received.get_lock():
            self.received.value += 1
        with self.nbytes.get_lock():
            self.nbytes.value += len(envelope.original_content or envelope.content)
        return "250 OK"


def _serve_sink(port, received, nbytes, ready) -> None:
    """The relay in a process of its own, as a real relay is: it must not share the
    sender's CPU (and its event loop), or the bench would measure both at once."""

    async def serve() -> None:
        sink = CountingSink(received, nbytes)
        server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(sink, hostname="bench.sink", decode_data=False),
            host="127.0.0.1",
            port=0,
        )
        port.value = server.sockets[0].getsockname()[1]
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(serve())


@contextlib.contextmanager
def smtp_sink() -> Iterator[tuple[Any, Any, int]]:
    context = multiprocessing.get_context("spawn")
    port, received, nbytes = context.Value("i", 0), context.Value("q", 0), context.Value("q", 0)
    ready = context.Event()
    process = context.Process(target=_serve_sink, args=(port, received, nbytes, ready))
    process.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the SMTP sink did not start")
        yield received, nbytes, port.value
    finally:
        process.terminate()
        process.join(10)


async def add_subscribers(con: asyncpg.Connection, count: int) -> None:
    await con.execute("TRUNCATE subscribers, campaigns CASCADE")
    await con.execute(
        "INSERT INTO subscribers (email, name, status, confirmed_at)"
        " SELECT 'reader' || n || '@example.org', 'Reader ' || n, 'active', now()"
        " FROM generate_series(1, $1) AS n",
        count,
    )


async def measure_queueing(con: asyncpg.Connection, count: int) -> dict:
    await add_subscribers(con, count)
    campaign_id = await campaigns.create_campaign(
        con, name="bench", subject="Hello {{ name }}", html="<p>Hi {{ name }}</p>", text="Hi"
    )
    started = time.perf_counter()
    queued = await campaigns.queue_send(con, campaign_id)
    elapsed = time.perf_counter() - started
    return {
        "bench": "campaign_send",
        "name": "queue one campaign (INSERT … SELECT)",
        "subscribers": queued,
        "seconds": round(elapsed, 2),
        "per_second": round(queued / elapsed),
    }


async def measure_sending(url: str, count: int, lanes: int) -> dict:
    with smtp_sink() as (received, nbytes, port):
        con = await asyncpg.connect(url)
        try:
            await add_subscribers(con, count)
        finally:
            await con.close()
        settings = Settings(
            database_url=url,
            smtp_url=f"smtp://127.0.0.1:{port}",
            public_url="https://news.example.com",
            secret_keys=(KEY,),
            admin_tokens=(ADMIN_TOKEN,),
            mail_from="Bench News <news@example.com>",
            outbox_poll_interval=0.05,
            outbox_concurrency=lanes,
            purge_interval=3600,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                created = await client.post(
                    "/admin/api/campaigns",
                    headers=headers,
                    json={
                        "name": "bench",
                        "subject": "News for {{ name }}",
                        "html": "<h1>Hello {{ name }}</h1>" + "<p>Some news.</p>" * 40,
                        "text": "Hello {{ name }}\n" + "Some news.\n" * 40,
                    },
                )
                campaign_id = created.json()["id"]
                started = time.perf_counter()
                await client.post(f"/admin/api/campaigns/{campaign_id}/send", headers=headers)
                while received.value < count:
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
    return {
        "bench": "campaign_send",
        "name": f"send through the outbox worker to SMTP, {lanes} lane(s)",
        "subscribers": count,
        "seconds": round(elapsed, 2),
        "per_second": round(count / elapsed),
        "avg_kib": round(nbytes.value / max(received.value, 1) / 1024, 1),
    }


async def run() -> list[dict]:
    import pgserver

    with tempfile.TemporaryDirectory(prefix="bench-campaign-") as directory:
        server = pgserver.get_server(directory, cleanup_mode="delete")
        try:
            url = server.get_uri()
            con = await asyncpg.connect(url)
            try:
                await migrations.migrate(con)
                rows = [await measure_queueing(con, QUEUE_ONLY)]
            finally:
                await con.close()
            for lanes in (1, 4):  # side by side: OUTBOX_CONCURRENCY's effect
                rows.append(await measure_sending(url, RECIPIENTS, lanes))
        finally:
            server.cleanup()
    return rows


def main() -> list[dict]:
    return asyncio.run(run())


if __name__ == "__main__":
    for row in main():
        print(row)
