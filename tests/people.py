"""Arranging subscribers with everything the service can hold about them, and searching
every table of the schema for what identifies a person."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from service.settings import Settings
from service.web import ratelimit


@dataclass(frozen=True)
class Person:
    id: int
    email: str
    name: str
    ips: tuple[str, ...]
    user_agents: tuple[str, ...]

    @property
    def needles(self) -> tuple[str, ...]:
        """The texts that identify the person (in pages, logs and rows)."""
        return (self.email, self.name, *self.ips, *self.user_agents)

    @property
    def traces(self) -> tuple[str | int, ...]:
        """The texts and the row id: what find_anywhere looks for after an erasure."""
        return (self.id, *self.needles)


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
    """A subscriber with consent evidence, a queued and a sent delivery, open events,
    address-keyed rate-limit rows, a soft bounce and a manage link, each with IPs and
    user agents of their own (`tag` makes them unique, so that a search hit can only be
    this person)."""
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
    # Rows keyed by the id alone, with no text of the person: only find_anywhere's id
    # search sees them (a soft bounce of the confirmation email, an unused manage link).
    await db.execute("INSERT INTO soft_bounces (subscriber_id, campaign_id) VALUES ($1, 0)", sid)
    await db.execute(
        "INSERT INTO manage_links (subscriber_id, expires_at)"
        " VALUES ($1, now() + interval '1 hour')",
        sid,
    )
    # A topic membership (issue 28): keyed by the id alone too.
    topic_id = await db.fetchval(
        "INSERT INTO topics (slug, name) VALUES ('weekly', 'Weekly')"
        " ON CONFLICT (slug) DO UPDATE SET name = EXCLUDED.name RETURNING id"
    )
    await db.execute(
        "INSERT INTO subscriber_topics (topic_id, subscriber_id) VALUES ($1, $2)", topic_id, sid
    )
    return Person(sid, email, name, ips, agents)


async def address_key_today(db: asyncpg.Connection, email: str) -> bytes:
    """The key of the address's rate-limit rows today, as the service computes it."""
    today = datetime.now(UTC).date()
    return ratelimit.address_key(await ratelimit.key_of_day(db, today), email)


async def base_tables(db: asyncpg.Connection) -> list[str]:
    """Every table of the schema, as it is now: a table added by a future migration is
    searched too. A partitioned table counts once (reading it reads its partitions)."""
    rows = await db.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        " AND NOT EXISTS (SELECT 1 FROM pg_class p WHERE p.relname = table_name"
        "                 AND p.relnamespace = 'public'::regnamespace AND p.relispartition)"
        " ORDER BY table_name"
    )
    return [row["table_name"] for row in rows]


# The erasure journal keeps the erased row's internal id and creation time, and nothing
# else, by design (sql/072_erasure_journal.sql): `reapply-erasures` erases the row again
# after a backup restore. Every other table must hold no id of an erased subscriber.
KEEPS_ERASED_IDS = frozenset({"erasure_journal"})

# user_agents (sql/161) holds each user-agent string once, shared by every open that sent
# it, with no id, time or count of anyone: a string alone is what every device of one
# model and version sends. The erasure deletes the person's opens, the only link to it;
# the retention pass deletes the strings no open within OPEN_RETENTION has used.
# find_anywhere therefore does not look for a person's user agents there.
SHARED_USER_AGENTS = "user_agents"


async def subscriber_id_columns(db: asyncpg.Connection) -> list[tuple[str, str]]:
    """(table, column) of every column that holds a subscriber's id, from the catalogue:
    subscribers.id, every `subscriber_id` column (with or without a foreign key: the
    queueing tables lost theirs in sql/130) and every column with a foreign key to
    subscribers."""
    rows = await db.fetch(
        """SELECT c.table_name, c.column_name
           FROM information_schema.columns c
           JOIN information_schema.tables t
             ON t.table_schema = c.table_schema AND t.table_name = c.table_name
           WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
             AND NOT EXISTS (SELECT 1 FROM pg_class p  -- read through its parent
                             WHERE p.relname = c.table_name AND p.relispartition
                               AND p.relnamespace = 'public'::regnamespace)
             AND (c.column_name = 'subscriber_id'
                  OR (c.table_name = 'subscribers' AND c.column_name = 'id'))
           UNION
           SELECT src.relname::text, a.attname::text
           FROM pg_constraint k
           JOIN pg_class src ON src.oid = k.conrelid
           JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = ANY(k.conkey)
           WHERE k.contype = 'f' AND k.confrelid = 'subscribers'::regclass
           ORDER BY 1, 2"""
    )
    return [(r[0], r[1]) for r in rows if r[0] not in KEEPS_ERASED_IDS]


async def find_anywhere(
    db: asyncpg.Connection, needles: tuple[str | int, ...]
) -> dict[str, set[str | int]]:
    """{table: needles found in some row of it}: a text needle anywhere in the row (the
    whole row cast to text), an int needle (a subscriber's id) in a column that holds
    subscribers' ids (rows keyed by the id alone, with no text of the person)."""
    found: dict[str, set[str | int]] = {}
    texts = [n for n in needles if isinstance(n, str)]
    ids = [n for n in needles if isinstance(n, int)]
    for table in await base_tables(db):
        if table == SHARED_USER_AGENTS:
            continue
        quoted = '"' + table.replace('"', '""') + '"'
        for needle in texts:
            hit = await db.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {quoted} AS r"  # noqa: S608 (a catalogue name)
                " WHERE strpos(lower(r::text), lower($1)) > 0)",
                needle,
            )
            if hit:
                found.setdefault(table, set()).add(needle)
    for table, column in await subscriber_id_columns(db) if ids else []:
        quoted = '"' + table.replace('"', '""') + '"'
        name = '"' + column.replace('"', '""') + '"'
        for needle in ids:
            hit = await db.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {quoted} WHERE {name} = $1)",  # noqa: S608
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
