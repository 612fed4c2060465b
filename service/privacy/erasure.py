"""Erasure (unsubscribe, `DELETE /admin/api/subscribers/{email}`) and access requests.

Deleting the subscriber row deletes consent evidence (a foreign key `ON DELETE CASCADE`),
deliveries, outbox jobs (row triggers, sql/130) and open events (sql/060), in one statement,
which also leaves the row's id and creation time in the erasure journal (no personal
data; `reapply_erasures` replays it after a backup restore). Three things need doing by
hand, in this order, in the same transaction:

1. the subscriber's outbox jobs, first: the outbox worker keeps a job row locked while
   it talks SMTP, so this waits for an in-flight send, and once the erasure commits no
   email can leave (the worker's next claim finds no job, its composer no subscriber);
2. after the subscriber row, the rate-limit rows keyed by an HMAC of the address (and of
   the new address of a pending address change) under each day key still held (no
   foreign key can reach them);
3. when the erasure has a cause and the person was active, its event for the other
   systems (service/events/queue.py), which first deletes the person's queued events that
   are not in flight (skipping locked rows: it never waits on a receiver).

Locks are taken in the order outbox job, subscriber, rate limit, list_daily: the order
of the outbox worker (job, then the subscriber's `confirm_sent_at`) and of a sign-up
(subscriber, then the address's rate limit), so none of them can deadlock with another.

The anonymous aggregates (campaign counters, `campaign_counts`, `list_daily`) stay.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import asyncpg
from email_validator import EmailNotValidError, validate_email

from service.db import retry
from service.db.queries import queries
from service.events import queue as events
from service.web import ratelimit

q = queries("erasure")

MAX_EMAIL_LENGTH = 320


async def erase_subscriber(
    con: asyncpg.Connection, subscriber_id: int, cause: str | None = None
) -> bool:
    """Deletes every row about the subscriber in one transaction; True if it existed.
    With a `cause` (service/events/queue.py, CAUSES), an active subscriber's erasure is
    announced to the other systems in the same transaction (GDPR Art. 17(2), 19)."""
    async with con.transaction():
        await q.delete_outbox.execute(con, id=subscriber_id)
        pending = await q.pending_addresses.fetch(con, id=subscriber_id)
        gone = await q.delete_subscriber.fetchrow(con, id=subscriber_id)
        if gone is None:
            return False
        for address in (gone["email"], *(row["new_email"] for row in pending)):
            await q.delete_address_rate_limits.execute(
                con, keys=await ratelimit.address_keys(con, address)
            )
        if gone["status"] == "active":
            await q.count_unsubscribe.execute(con)
            if cause is not None:
                await events.erased(con, subscriber_id, gone["email"], cause)
        return True


async def erase(
    pool: asyncpg.Pool,
    *,
    subscriber_id: int | None = None,
    email: str | None = None,
    cause: str | None = None,
) -> bool:
    """`erase_subscriber` (by id) or `erase_by_email` on a pooled connection, run again
    (`retry.run`) when PostgreSQL broke a deadlock with a concurrent sign-up of the same
    address."""
    if email is not None:
        return await retry.run(pool, lambda con: erase_by_email(con, email, cause))
    if subscriber_id is None:
        raise TypeError("erase needs subscriber_id or email")
    return await retry.run(pool, lambda con: erase_subscriber(con, subscriber_id, cause))


def _candidates(email: str) -> list[str]:
    """The address as given and as sign-up stores it (normalised), without duplicates."""
    found = [email]
    try:
        normalised = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError:
        return found
    if normalised.lower() != email.lower():
        found.append(normalised)
    return found


async def find_subscriber(con: asyncpg.Connection, email: str) -> int | None:
    """The id of the subscriber with this address (as given or normalised), or None."""
    for candidate in _candidates(email):
        subscriber_id = await q.find_subscriber.fetchval(con, email=candidate)
        if subscriber_id is not None:
            return subscriber_id
    return None


async def erase_by_email(con: asyncpg.Connection, email: str, cause: str | None = None) -> bool:
    """Erasure request for an address; True if a subscriber was deleted. Also deletes
    the address's rate-limit rows when no subscriber is left (e.g. a cancelled sign-up)."""
    if len(email) > MAX_EMAIL_LENGTH:
        return False
    erased = False
    async with con.transaction():
        for candidate in _candidates(email):
            subscriber_id = await q.find_subscriber.fetchval(con, email=candidate)
            if subscriber_id is not None:
                erased |= await erase_subscriber(con, subscriber_id, cause)
            await q.delete_address_rate_limits.execute(
                con, keys=await ratelimit.address_keys(con, candidate)
            )
    return erased


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _rows(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [{k: _jsonable(v) for k, v in record.items()} for record in records]


async def export_subscriber(con: asyncpg.Connection, email: str) -> dict[str, Any] | None:
    """Everything stored about an address (access request, GDPR Art. 15), or None.

    With the address's rate-limit rows (found by their HMAC under each day key held).
    """
    if len(email) > MAX_EMAIL_LENGTH:
        return None
    subscriber = None
    rate_limits: list[dict[str, Any]] = []
    async with con.transaction(readonly=True, isolation="repeatable_read"):
        for candidate in _candidates(email):
            subscriber = subscriber or await q.export_subscriber.fetchrow(con, email=candidate)
            rate_limits += _rows(
                await q.export_rate_limits.fetch(
                    con, keys=await ratelimit.address_keys(con, candidate)
                )
            )
        if subscriber is None and not rate_limits:
            return None
        export: dict[str, Any] = {
            "subscriber": None,
            "consent_events": [],
            "topics": [],
            "opens": [],
            "deliveries": [],
            "queued_emails": [],
            "address_changes": [],
            "manage_links": [],
            "soft_bounces": [],
            "held_refusals": [],
            "queued_events": [],
            "rate_limits": rate_limits,
        }
        if subscriber is not None:
            sid = subscriber["id"]
            export["subscriber"] = {k: _jsonable(v) for k, v in subscriber.items() if k != "id"}
            export["consent_events"] = _rows(await q.export_consent_events.fetch(con, id=sid))
            export["topics"] = _rows(await q.export_topics.fetch(con, id=sid))
            export["opens"] = _rows(await q.export_opens.fetch(con, id=sid))
            export["deliveries"] = _rows(await q.export_deliveries.fetch(con, id=sid))
            export["queued_emails"] = _rows(await q.export_outbox.fetch(con, id=sid))
            export["address_changes"] = _rows(await q.export_address_changes.fetch(con, id=sid))
            export["manage_links"] = _rows(await q.export_manage_links.fetch(con, id=sid))
            export["soft_bounces"] = _rows(await q.export_soft_bounces.fetch(con, id=sid))
            export["held_refusals"] = _rows(await q.export_held_refusals.fetch(con, id=sid))
            export["queued_events"] = _rows(await events.export(con, sid))
        return export


async def reapply_erasures(
    journal: asyncpg.Connection, target: asyncpg.Connection
) -> dict[str, int]:
    """After a backup restore: erases from `target` every subscriber named in the
    erasure journal read from `journal` (the database as it was before the restore, or
    `target` itself), copies the journal into `target`'s, and moves the id sequence past
    every journalled id. Only rows whose id and creation time both match are erased, so
    someone who got a reused id in the restored database is never touched. Idempotent."""
    rows = await q.journal_since.fetch(journal)
    erased = 0
    for row in rows:
        subscriber_id = await q.find_journalled.fetchval(
            target, id=row["subscriber_id"], created_at=row["created_at"]
        )
        if subscriber_id is not None and await erase_subscriber(target, subscriber_id):
            erased += 1
    if rows:
        await q.copy_journal.execute(
            target,
            ids=[row["subscriber_id"] for row in rows],
            created=[row["created_at"] for row in rows],
            erased=[row["erased_at"] for row in rows],
        )
        await q.advance_ids.execute(target, highest=max(row["subscriber_id"] for row in rows))
    return {"journal": len(rows), "erased": erased}
