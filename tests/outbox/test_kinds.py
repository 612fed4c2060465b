"""The job-kind table (service/outbox/kinds.py) and the database agree: the outbox takes
exactly the kinds in KINDS, PostgreSQL generates each kind's `priority` as its entry
says, and each entry has one way of composing its email."""

from __future__ import annotations

import re

import asyncpg
import pytest

from service.outbox.kinds import KINDS


async def _insert(db: asyncpg.Connection, kind: str, subscriber_id: int, campaign_id: int):
    """The job's row; a kind bound to a campaign (the table's other CHECKs) gets one, a
    test send (sql/160) its campaign and address instead of a subscriber."""
    if kind == "campaign_test":
        return await db.fetchval(
            "INSERT INTO outbox (kind, test_campaign_id, test_email) VALUES ($1, $2, 'a@b.example')"
            " RETURNING priority",
            kind,
            campaign_id,
        )
    insert = (
        "INSERT INTO outbox (kind, subscriber_id, campaign_id) VALUES ($1, $2, $3)"
        " RETURNING priority"
    )
    try:
        return await db.fetchval(insert, kind, subscriber_id, None)
    except asyncpg.CheckViolationError as exc:
        if exc.constraint_name == "outbox_kind_check":
            raise
    return await db.fetchval(insert, kind, subscriber_id, campaign_id)


@pytest.fixture
async def ids(db: asyncpg.Connection) -> tuple[int, int]:
    subscriber_id = await db.fetchval(
        "INSERT INTO subscribers (email) VALUES ('kinds@example.com') RETURNING id"
    )
    campaign_id = await db.fetchval(
        "INSERT INTO campaigns (name, subject, html, text) VALUES ('c', 's', 'h', 't') RETURNING id"
    )
    return subscriber_id, campaign_id


async def test_the_outbox_check_names_exactly_the_kinds_of_the_table(db) -> None:
    definition = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conname = 'outbox_kind_check' AND conrelid = 'outbox'::regclass"
    )
    assert set(re.findall(r"'([a-z_]+)'::text", definition)) == set(KINDS)


async def test_every_kind_is_accepted_with_its_priority_and_no_other_kind(db, ids) -> None:
    for name, kind in KINDS.items():
        assert await _insert(db, name, *ids) == kind.priority, name
    for unknown in ("unknown", "Confirm", "campaign "):
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await _insert(db, unknown, *ids)
        assert refused.value.constraint_name == "outbox_kind_check"
    assert await db.fetchval("SELECT count(*) FROM outbox") == len(KINDS)


def test_every_kind_has_exactly_one_composer() -> None:
    for name, kind in KINDS.items():
        assert (kind.compose is None) != (kind.compose_batch is None), name
        assert kind.name == name
