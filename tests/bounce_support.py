"""Shared by the bounce tests: the real samples and return paths."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

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
