"""The per-address email allowance: one SQL definition (`email_allowance_refusal` and
`claim_email_allowance`, sql/139) that sign-up, fresh links, address changes and the
dev mail viewer all use."""

import re
from datetime import UTC, datetime

import pytest

from tests.support import ROOT

DAY = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("hits", "last_seconds_ago", "expected"),
    [
        (1, 3600, None),  # granted
        (2, 600, None),  # exactly RATE_CONFIRM_MIN_INTERVAL after the previous: granted
        (2, 599, "min_interval"),
        (3, 3600, "per_day"),
        (4, 10, "per_day"),  # the day's limit is the first reason given
    ],
)
async def test_the_refusal_rule(db, hits: int, last_seconds_ago: float, expected) -> None:
    refusal = await db.fetchval(
        "SELECT email_allowance_refusal($1, $2::timestamptz - make_interval(secs => $3),"
        " 3, 600, $2::timestamptz)",
        hits,
        datetime(2026, 1, 1, 12, tzinfo=UTC),
        last_seconds_ago,
    )
    assert refusal == expected


async def test_a_claim_counts_until_refused_and_a_refusal_changes_nothing(db) -> None:
    async def claim(per_day: int, min_interval: float):
        return await db.fetchval(
            "SELECT claim_email_allowance('k'::bytea, $1::timestamptz, $2, $3)",
            DAY,
            per_day,
            min_interval,
        )

    assert [await claim(2, 0) for _ in range(3)] == [1, 2, None]
    assert await claim(5, 3600) is None  # the previous claim was just now
    assert await claim(5, 0) == 3
    row = await db.fetchrow("SELECT scope, hits FROM rate_limits")
    assert dict(row) == {"scope": "address", "hits": 3}


def test_no_query_restates_the_rule() -> None:
    """Only migration 139 writes an address's claim or compares its counter to a limit."""
    restating = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "sql" / "queries").glob("*.sql")
        if re.search(r"(VALUES\s*\(|SELECT)\s*'address'|hits\s*<|last_at\s*<=", path.read_text())
    }
    assert restating == set()
