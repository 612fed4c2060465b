"""Send throughput against its ceiling: the plain aiosmtplib client and the service's outbox
worker, side by side in one run, to the same Postfix `smtp-sink` on loopback.

Rows (all to one `smtp-sink` process, emails of about 2.8 KiB):
- `plain client, N connection(s)`: aiosmtplib's `sendmail` of one prebuilt message over
  N connections in parallel: the ceiling of a Python SMTP client on this machine;
- `service, N lane(s)[, DKIM]`: a campaign of RECIPIENTS subscribers sent by the real
  outbox worker (`OUTBOX_CONCURRENCY=N`, in this process, against its own PostgreSQL with
  fsync on), from the send request until every email is counted as sent, unsigned and
  signed (DKIM_ALGORITHM, RSA 2048 by default).

Each service row carries its ratio to the plain client over the same number of
connections, and the issue's targets (four connections: >= 35 % unsigned, >= 25 % and
>= 1,000 emails/s signed). Needs Postfix's `smtp-sink` (Debian package `postfix`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
import httpx

from service.app import create_app
from service.db import migrations
from service.settings import Settings

RECIPIENTS = int(os.environ.get("BENCH_SEND_RECIPIENTS", "10000"))
PLAIN_MESSAGES = int(os.environ.get("BENCH_SEND_PLAIN", "10000"))
ALGORITHM = os.environ.get("BENCH_DKIM_ALGORITHM", "rsa-sha256")
ADMIN_TOKEN = "bench-admin-token-0123456789"
KEY = "bench-secret-key-0123456789-abcdefghijklmnop"
TARGETS = {  # (lanes, dkim) -> (share of the plain client, emails/s)
    (4, False): (0.35, None),
    (4, True): (0.25, 1000),
}
CAMPAIGN = {
    "name": "bench",
    "subject": "News for {{ name }}",
    "html": "<h1>Hello {{ name }}</h1>" + "<p>Some news of the week, told briefly.</p>" * 24,
    "text": "Hello {{ name }}\n" + "Some news of the week, told briefly.\n" * 24,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """Postfix's `smtp-sink`: a C SMTP server that accepts and discards, in its own process."""
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(binary).exists():
        raise RuntimeError("smtp-sink not found: install the Debian package postfix")
    port = _free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen([binary, *user, "-m", "64", f"127.0.0.1:{port}", "256"])
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def plain_client(port: int, message: bytes, connections: int, count: int) -> float:
    """emails/s of aiosmtplib's sendmail over `connections` connections."""
    per = count // connections

    async def lane() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        for _ in range(per):
            await smtp.sendmail("news@example.com", ["reader@example.org"], message)
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(connections)))
    return per * connections / (time.perf_counter() - started)


def _dkim_key(directory: Path, algorithm: str) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if algorithm == "ed25519-sha256":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = directory / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


async def _reset(url: str, count: int) -> None:
    con = await asyncpg.connect(url)
    try:
        await con.execute("TRUNCATE subscribers, campaigns CASCADE")
        await con.execute(
            "INSERT INTO subscribers (email, name, status, confirmed_at)"
            " SELECT 'reader' || n || '@example.org', 'Reader ' || n, 'active', now()"
            " FROM generate_series(1, $1) AS n",
            count,
        )
        await con.execute("VACUUM ANALYZE subscribers")
        await con.execute("VACUUM ANALYZE outbox")
        await con.execute("VACUUM ANALYZE deliveries")
    finally:
        await con.close()


async def service_send(
    url: str, port: int, lanes: int, dkim_key: Path | None, count: int, **extra: Any
) -> float:
    """emails/s of the outbox worker sending one campaign of `count` emails (`extra`:
    further settings, e.g. bench_send_rate's caps)."""
    await _reset(url, count)
    dkim = (
        {
            "dkim_private_key_file": str(dkim_key),
            "dkim_selector": "s1",
            "dkim_domain": "example.com",
        }
        if dkim_key
        else {}
    )
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
        **dkim,
        **extra,
    )
    app = create_app(settings)
    watcher = await asyncpg.connect(url)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                created = await client.post("/admin/api/campaigns", headers=headers, json=CAMPAIGN)
                campaign_id = created.json()["id"]
                started = time.perf_counter()
                await client.post(f"/admin/api/campaigns/{campaign_id}/send", headers=headers)
                query = "SELECT sent, failed FROM campaigns WHERE id = $1"
                while True:
                    sent, failed = await watcher.fetchrow(query, campaign_id)
                    if sent + failed >= count:
                        break
                    await asyncio.sleep(0.02)
                elapsed = time.perf_counter() - started
                if failed:
                    raise RuntimeError(f"{failed} emails failed in the bench")
    finally:
        await watcher.close()
    return count / elapsed


async def sample_email() -> bytes:
    """An email of the campaign's shape and size (two quoted-printable parts, about 3 KiB)
    for the plain client, built once: the ceiling spends nothing on building."""
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"] = "Bench News <news@example.com>"
    message["To"] = "Reader 1 <reader1@example.org>"
    message["Subject"] = "News for Reader 1"
    message.set_content(CAMPAIGN["text"] + "\n" + "x" * 600, cte="quoted-printable")
    message.add_alternative(CAMPAIGN["html"], subtype="html", cte="quoted-printable")
    return message.as_bytes()


async def run() -> list[dict]:
    import pgserver

    load = os.getloadavg()
    rows: list[dict] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-send-") as directory,
        smtp_sink() as port,
    ):
        server = pgserver.get_server(directory, cleanup_mode="delete")
        try:
            url = server.get_uri()
            con = await asyncpg.connect(url)
            try:
                await migrations.migrate(con)
            finally:
                await con.close()
            key = _dkim_key(Path(directory), ALGORITHM)
            message = await sample_email()
            plain = {}
            for connections in (1, 4):
                rate = await plain_client(port, message, connections, PLAIN_MESSAGES)
                plain[connections] = rate
                rows.append(
                    {
                        "bench": "send",
                        "name": f"plain aiosmtplib client, {connections} connection(s)",
                        "emails_per_s": round(rate),
                        "kib": round(len(message) / 1024, 1),
                    }
                )
            for signed in (False, True):
                for lanes in (1, 4):
                    rate = await service_send(url, port, lanes, key if signed else None, RECIPIENTS)
                    share = rate / plain[lanes]
                    row = {
                        "bench": "send",
                        "name": f"service, {lanes} lane(s)"
                        + (f", DKIM {ALGORITHM}" if signed else ""),
                        "emails_per_s": round(rate),
                        "of_plain": f"{share:.0%}",
                    }
                    target = TARGETS.get((lanes, signed))
                    if target:
                        least, floor = target
                        wanted = f">= {least:.0%}" + (f", >= {floor}/s" if floor else "")
                        met = share >= least and (floor is None or rate >= floor)
                        row["target"] = wanted + (" met" if met else " NOT met")
                    rows.append(row)
        finally:
            server.cleanup()
    for row in rows:
        row["load_avg_1m"] = round(load[0], 2)
    return rows


def main() -> list[dict]:
    return asyncio.run(run())


if __name__ == "__main__":
    for row in main():
        print(row)
