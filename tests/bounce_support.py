"""Shared by the bounce tests: the real samples and return paths."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import asyncpg

from service import logs
from service.bounces import verp
from service.settings import Settings
from service.tokens import Tokens
from tests import people, support

SAMPLES = Path(__file__).parent / "data" / "bounces"
DOMAIN = "bounce.newsletter.test"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def tokens() -> Tokens:
    return Tokens((support.TEST_KEY,), 3600)


def return_path(settings: Settings, subscriber_id: int, campaign_id: int | None) -> str:
    path = verp.return_path(settings, tokens(), subscriber_id, campaign_id)
    assert path is not None
    return path


def with_return_path(raw: bytes, address: str) -> bytes:
    """A bounce as a mailbox keeps it: the envelope recipient in Delivered-To."""
    return f"Delivered-To: {address}\r\n".encode() + raw


async def mailed(
    db: asyncpg.Connection, address: str, sent_at: datetime | None = None
) -> tuple[int, int]:
    """A subscriber who was sent a campaign (an hour ago unless `sent_at`): (id, campaign)."""
    campaign = await people.add_campaign(db)
    sid = await people.add_subscriber(db, address)
    await db.execute(
        "INSERT INTO deliveries (campaign_id, subscriber_id, sent_at) VALUES ($1, $2, $3)",
        campaign,
        sid,
        sent_at or datetime.now(UTC) - timedelta(hours=1),
    )
    return sid, campaign


def dsn(
    *addresses: str,
    date: datetime | None = None,
    to: str = "news@newsletter.test",
    message_id: str = "<dsn@mx.example.net>",
    status: str = "5.1.1",
) -> bytes:
    """A delivery status notification (RFC 3464) as a mail system writes it: `Action:
    failed` for each address, dated `date` (now by default; None-like "" omits it)."""
    when = format_datetime(date or datetime.now(UTC))
    blocks = "".join(
        f"\r\nFinal-Recipient: rfc822; {a}\r\nAction: failed\r\nStatus: {status}\r\n"
        for a in addresses
    )
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        f"To: {to}\r\n"
        f"Date: {when}\r\n"
        f"Message-ID: {message_id}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
        "\r\n--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n"
        f"{blocks}"
        "\r\n--b--\r\n"
    ).encode()


@contextlib.contextmanager
def service_logs(level: str = "debug") -> Iterator[io.StringIO]:
    """The service's logging setup (service/logs.py) writing into a buffer, as in
    production, and the previous setup back afterwards."""
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "mail.log", "aioimaplib")
    saved = [
        (lg, lg.level, lg.handlers[:], lg.propagate, lg.disabled)
        for lg in (logging.getLogger(name) for name in names)
    ]
    buffer = io.StringIO()
    logs.configure(level, buffer)
    try:
        yield buffer
    finally:
        for lg, lvl, handlers, propagate, disabled in saved:
            lg.setLevel(lvl)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
