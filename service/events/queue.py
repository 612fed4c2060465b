"""Queueing events in the transaction of the change they tell about.

Every function takes only the connection: the receivers and the types each wants are in
the table `event_endpoints` (written at start by `sync_endpoints`), so a statement on any
floor can queue an event without the settings, and an erasure queues its event in the
very transaction that deletes the person (never one without the other). With no
receiver configured nothing is written.

Only active subscribers are announced: the other systems hear of a person when they
confirm (`subscriber.confirmed`), of every later change to their name, address, topics or
tracking choice (`subscriber.updated`, one per transaction), and of their erasure
(`subscriber.erased`: the address and the cause, nothing else).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from service.db.queries import queries
from service.settings import Settings

q = queries("events")

CONFIRMED = "subscriber.confirmed"
UPDATED = "subscriber.updated"
ERASED = "subscriber.erased"
# Why a person was erased: they unsubscribed (a link, their page, one-click), the
# operator erased them (API, dashboard), their address bounced, or they complained.
CAUSES = ("unsubscribe", "operator", "bounce", "complaint")


async def sync_endpoints(pool: asyncpg.Pool, settings: Settings) -> None:
    """Writes this process's receivers (EVENTS_URL, EVENTS_TYPES) into the database."""
    endpoints = settings.event_endpoints
    await q.sync_endpoints.execute(
        pool,
        urls=[e.url for e in endpoints],
        types=["" if e.types is None else " ".join(sorted(e.types)) for e in endpoints],
    )


def person_data(row: asyncpg.Record) -> dict[str, Any]:
    """What `subscriber.confirmed` and `subscriber.updated` say about a person (the `person`
    query's row); the one place that decides it. `id` lets a receiver follow an address
    change; `tracking` is whether the person agreed to have their opens measured;
    `language` the one they chose (a primary subtag, `de`; null: none chosen, so the first
    of LANGUAGES)."""
    data: dict[str, Any] = {
        "id": row["id"],
        "email": row["email"],
        "name": row["name"],
        "topics": list(row["topics"]),
        "tracking": bool(row["tracking_consent"]) and row["tracking_withdrawn_at"] is None,
        "language": row["lang"],
    }
    return data


async def _queue(
    con: asyncpg.Connection, event_type: str, subscriber_id: int, address: str, data: dict
) -> None:
    await q.queue.execute(
        con,
        type=event_type,
        subscriber_id=subscriber_id,
        address=address,
        webhook_id=f"msg_{uuid.uuid4().hex}",
        data=json.dumps(data, ensure_ascii=False),
    )


async def _announce(con: asyncpg.Connection, event_type: str, subscriber_id: int) -> None:
    row = await q.person.fetchrow(con, subscriber_id=subscriber_id)
    if row is None or row["status"] != "active":
        return
    await _queue(con, event_type, subscriber_id, row["email"], person_data(row))


async def confirmed(con: asyncpg.Connection, subscriber_id: int) -> None:
    """The person confirmed: call it in the activating transaction, before the changes
    that come with the confirmation (topics, choices), which fold into this event."""
    await _announce(con, CONFIRMED, subscriber_id)


async def updated(con: asyncpg.Connection, subscriber_id: int) -> None:
    """The person's name, address, topics or tracking choice changed: call it after the
    change, in its transaction. Calls after the first in one transaction refresh the
    event already queued (or the confirmation's)."""
    await _announce(con, UPDATED, subscriber_id)


async def erased(con: asyncpg.Connection, subscriber_id: int, email: str, cause: str) -> None:
    """The person was erased (after the subscriber row is deleted, in that transaction):
    their queued events not in flight go, and the erasure is queued with the address
    and the cause only."""
    if cause not in CAUSES:
        raise ValueError(f"unknown erasure cause {cause!r}")
    await q.forget_person.execute(con, subscriber_id=subscriber_id)
    await _queue(con, ERASED, subscriber_id, email, {"email": email, "cause": cause})


async def export(con: asyncpg.Connection, subscriber_id: int) -> list[asyncpg.Record]:
    """The person's queued events, for an access request."""
    return await q.export_events.fetch(con, subscriber_id=subscriber_id)
