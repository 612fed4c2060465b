"""Arranging subscribers with everything the service can hold about them, and searching
every table of the schema for what identifies a person."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from service import ratelimit
from service.settings import Settings


@dataclass(frozen=True)
class Person:
    id: int
    email: str
    name: str
    ips: tuple[str, ...]
    user_agents: tuple[str, ...]

    @property
    def needles(self) -> tuple[str, ...]:
        return (self.email, self.name, *self.ips, *self.user_agents)


async def add_campaign(db: asyncpg.Connection, name: str = "Spring news") -> int:
    return await db.fetchval(
        "INSERT INTO campaigns (name, subject, html, text) VALUES ($1, 'Hello {{ name }}',"
        " '<p>Hi {{ name }}</p>', 'Hi {{ name }}') RETURNING id",
        name,
    )


async def add_subscriber(
    db: asyncpg.Connection,
    email: str,
    *,
    name: str | None = None,
    status: str = "active",
    tracking_consent: bool = False,
) -> int:
    return await db.fetchval(
        "INSERT INTO subscribers (email, name, status, tracking_consent, confirmed_at)"
        " VALUES ($1, $2, $3, $4, CASE WHEN $3 = 'active' THEN now() END) RETURNING id",
        email,
        name,
        status,
        tracking_consent,
    )


async def add_many(db: asyncpg.Connection, count: int, prefix: str = "reader") -> None:
    """`count` active subscribers in one statement (`{prefix}{n}@example.org`)."""
    await db.execute(
        "INSERT INTO subscribers (email, name, status, confirmed_at)"
        " SELECT $1 || n || '@example.org', 'Reader ' || n, 'active', now()"
        " FROM generate_series(1, $2) AS n",
        prefix,
        count,
    )


async def add_person(
    db: asyncpg.Connection, settings: Settings, email: str, tag: str, campaign_id: int
) -> Person:
    """A subscriber with consent evidence, a queued and a sent delivery, open events and
    address-keyed rate-limit rows, each with IPs and user agents of their own (`tag`
    makes them unique, so that a search hit can only be this person)."""
    name = f"Person {tag}"
    n = zlib.crc32(tag.encode())
    ips = (f"203.0.113.{n % 250 + 2}", f"2001:db8:{n % 65000:x}::{n % 4000 + 7:x}")
    agents = (f"SignupBrowser/{tag}", f"MailReader/{tag}")
    sid = await add_subscriber(db, email, name=name, tracking_consent=True)
    for kind, ip, agent in (
        ("signup", ips[0], agents[0]),
        ("tracking_granted", ips[0], agents[0]),
        ("confirm", ips[1], agents[0]),
    ):
        await db.execute(
            "INSERT INTO consent_events (subscriber_id, kind, ip, user_agent, source,"
            " consent_text_version, method) VALUES ($1, $2, $3, $4, $5, 'v1', 'button')",
            sid,
            kind,
            ip,
            agent,
            f"https://site.example/{tag}",
        )
    other_campaign = await add_campaign(db, f"Older news {tag}")
    await db.execute(
        "INSERT INTO deliveries (campaign_id, subscriber_id, sent_at, first_open_at)"
        " VALUES ($1, $2, now(), now())",
        other_campaign,
        sid,
    )
    await db.execute(
        "INSERT INTO deliveries (campaign_id, subscriber_id) VALUES ($1, $2)", campaign_id, sid
    )
    await db.execute(
        # Due tomorrow: the app's outbox worker leaves it alone during the test.
        "INSERT INTO outbox (kind, subscriber_id, campaign_id, run_at)"
        " VALUES ('campaign', $1, $2, now() + interval '1 day')",
        sid,
        campaign_id,
    )
    for ip in ips:
        await db.execute(
            "INSERT INTO opens (subscriber_id, campaign_id, at, ip, user_agent, client, os,"
            " country) VALUES ($1, $2, now(), $3, $4, 'Thunderbird', 'Linux', 'FR')",
            sid,
            other_campaign,
            ip,
            agents[1],
        )
    await db.execute(
        "INSERT INTO rate_limits (scope, key, window_start, hits)"
        " VALUES ('address', $1, date_trunc('day', now()), 1)",
        await address_key_today(db, email),
    )
    return Person(sid, email, name, ips, agents)


async def address_key_today(db: asyncpg.Connection, email: str) -> bytes:
    """The key of the address's rate-limit rows today, as the service computes it."""
    today = datetime.now(UTC).date()
    return ratelimit.address_key(await ratelimit.key_of_day(db, today), email)


async def base_tables(db: asyncpg.Connection) -> list[str]:
    """Every table of the schema, as it is now: a table added by a future migration is
    searched too."""
    rows = await db.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
    )
    return [row["table_name"] for row in rows]


async def find_anywhere(db: asyncpg.Connection, needles: tuple[str, ...]) -> dict[str, set[str]]:
    """{table: needles found in some row of it (the whole row cast to text)}."""
    found: dict[str, set[str]] = {}
    for table in await base_tables(db):
        quoted = '"' + table.replace('"', '""') + '"'
        for needle in needles:
            hit = await db.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {quoted} AS r"  # noqa: S608 (a catalogue name)
                " WHERE strpos(lower(r::text), lower($1)) > 0)",
                needle,
            )
            if hit:
                found.setdefault(table, set()).add(needle)
    return found


async def address_rate_limit_rows(db: asyncpg.Connection, settings: Settings, email: str) -> int:
    """Rows keyed by the address under any day key the database holds."""
    return await db.fetchval(
        "SELECT count(*) FROM rate_limits WHERE scope = 'address' AND key = ANY($1::bytea[])",
        await ratelimit.address_keys(db, email),
    )
