"""Who is in which topic: joining (consent, with its evidence and the welcome email)
and leaving (as harmless as unsubscribing, recorded too).

Every change here runs in the caller's transaction, which holds the subscriber row
(FOR UPDATE or its own UPDATE), so an erasure waits for it (sql/130, sql/131).
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from service.db.queries import queries
from service.events import queue as events
from service.privacy import evidence

q = queries("topics")

SLUGS_MAX = 50  # topics one request may name


class UnknownTopics(ValueError):
    """Slugs that name no topic."""

    def __init__(self, slugs: list[str]) -> None:
        super().__init__(", ".join(slugs))
        self.slugs = slugs


async def resolve(con: asyncpg.Connection | asyncpg.Pool, slugs: Iterable[str]) -> list[int]:
    """The topic ids of these slugs (none given: the default topics).

    Raises UnknownTopics naming the slugs that are not topics."""
    wanted = sorted(set(slugs))
    if not wanted:
        return list(await q.default_topic_ids.fetchval(con))
    rows = await q.topic_ids.fetch(con, slugs=wanted)
    unknown = sorted(set(wanted) - {row["slug"] for row in rows})
    if unknown:
        raise UnknownTopics(unknown)
    return sorted(row["id"] for row in rows)


async def known(con: asyncpg.Connection, slugs: Iterable[str]) -> list[int]:
    """The ids of those slugs that name a topic (a page's checkboxes: a topic deleted
    since the page was shown is no error); none given: none."""
    rows = await q.topic_ids.fetch(con, slugs=sorted(set(slugs)))
    return sorted(row["id"] for row in rows)


async def form_choices(con: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    """Every topic (slug, name, is_default) for a sign-up form's checkboxes."""
    return await q.form_choices.fetch(con)


async def choices(con: asyncpg.Connection, subscriber_id: int) -> list[asyncpg.Record]:
    """Every topic with whether the subscriber is in it (id, slug, name, description,
    member), for a page to show as checkboxes."""
    return await q.topics_of.fetch(con, subscriber_id=subscriber_id)


async def join(
    con: asyncpg.Connection,
    subscriber_id: int,
    topic_ids: Iterable[int],
    who: evidence.Evidence,
) -> list[str]:
    """Joins these topics (consent: one evidence row per topic joined) and queues the
    welcome email of each that has one; returns the slugs joined now."""
    rows = await q.join_topics.fetch(con, subscriber_id=subscriber_id, topic_ids=list(topic_ids))
    for row in rows:
        await evidence.record(con, subscriber_id, evidence.TOPIC_JOINED, who, topic=row["slug"])
    if rows:
        await events.updated(con, subscriber_id)
    welcomes = [row["welcome_campaign_id"] for row in rows if row["welcome_campaign_id"]]
    if welcomes:
        await q.queue_welcome.fetchval(con, subscriber_id=subscriber_id, campaign_ids=welcomes)
    return [row["slug"] for row in rows]


async def leave(
    con: asyncpg.Connection,
    subscriber_id: int,
    topic_ids: Iterable[int],
    who: evidence.Evidence,
) -> list[str]:
    """Leaves these topics, one evidence row per topic left; returns their slugs."""
    rows = await q.leave_topics.fetch(con, subscriber_id=subscriber_id, topic_ids=list(topic_ids))
    for row in rows:
        await evidence.record(con, subscriber_id, evidence.TOPIC_LEFT, who, topic=row["slug"])
    if rows:
        await events.updated(con, subscriber_id)
    return [row["slug"] for row in rows]


async def set_topics(
    con: asyncpg.Connection,
    subscriber_id: int,
    topic_ids: Iterable[int],
    who: evidence.Evidence,
) -> tuple[list[str], list[str]]:
    """Makes the subscriber's topics exactly these: (joined, left) slugs."""
    wanted = set(topic_ids)
    current = {row["id"] for row in await choices(con, subscriber_id) if row["member"]}
    joined = await join(con, subscriber_id, sorted(wanted - current), who)
    left = await leave(con, subscriber_id, sorted(current - wanted), who)
    return joined, left


async def memberships(con: asyncpg.Connection, subscriber_id: int) -> int:
    return await q.count_memberships.fetchval(con, subscriber_id=subscriber_id)
