"""Arranging campaigns, subscribers and deliveries directly in SQL for the pixel tests."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from service.tokens import Tokens
from tests import support

TOKENS = Tokens((support.TEST_KEY,), 3600)

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)


async def seed(
    con: asyncpg.Connection,
    subscribers: int,
    *,
    consent: bool = True,
    sent_seconds_ago: float = 3600,
) -> tuple[int, list[int]]:
    """A campaign first sent `sent_seconds_ago`, mailed to `subscribers` active people."""
    campaign_id = await con.fetchval(
        """INSERT INTO campaigns (name, subject, html, text, first_sent_at, recipients, sent)
           VALUES ('c', 's', '<p>h</p>', 't', now() - make_interval(secs => $1), $2, $2)
           RETURNING id""",
        sent_seconds_ago,
        subscribers,
    )
    ids = await con.fetch(
        """INSERT INTO subscribers (email, status, tracking_consent, confirmed_at)
           SELECT 'p' || g || '-' || $1::bigint || '@example.com', 'active', $2, now()
           FROM generate_series(1, $3) g RETURNING id""",
        campaign_id,
        consent,
        subscribers,
    )
    subscriber_ids = [row["id"] for row in ids]
    await con.execute(
        """INSERT INTO deliveries (campaign_id, subscriber_id, sent_at)
           SELECT $1, s, now() - make_interval(secs => $2) FROM unnest($3::bigint[]) s""",
        campaign_id,
        sent_seconds_ago,
        subscriber_ids,
    )
    return campaign_id, subscriber_ids


def pixel_path(subscriber_id: int, campaign_id: int) -> str:
    return f"/o/{TOKENS.pixel(subscriber_id, campaign_id)}.gif"


async def wait_for_count(
    con: asyncpg.Connection, sql: str, expected: int, *args: object, timeout: float = 10.0
) -> int:
    """Poll `sql` (a count) until it reaches `expected` or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = await con.fetchval(sql, *args)
        if value >= expected or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)
