"""Issue 31: nothing on the dashboard grows with the table. The overview's subscriber
counts come from counters kept with the writes (sql/153); the subscriber list's prefix
search is bounded on both sides, so a search reads only what it shows."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import asyncpg
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.admin.dashboard.subscriber_list import fetch_page, prefix_successor
from service.bounces import actions
from service.db.queries import queries
from service.tokens import Tokens
from tests import people, support
from tests.admin.test_dashboard import browser, sign_in

LAST = chr(0x10FFFF)


async def counted(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT status, sum(n)::bigint AS n FROM subscriber_counts GROUP BY status"
    )
    return {r["status"]: r["n"] for r in rows if r["n"]}


async def actual(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT status, count(*) AS n FROM subscribers GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


# -- the counters ---------------------------------------------------------------------
async def test_counts_stay_exact_under_concurrent_signups_confirmations_erasures_bounces_imports(
    app_factory: Any, db: asyncpg.Connection, admin_headers: dict[str, str]
) -> None:
    await people.add_many(db, 40, prefix="old")
    pending = [
        await people.add_subscriber(db, f"pending{i}@example.org", status="pending")
        for i in range(20)
    ]
    await db.execute("UPDATE subscribers SET confirm_sent_at = now() - interval '1 hour'")
    bouncing = await db.fetch("SELECT id FROM subscribers WHERE email LIKE 'old1_@%'")
    tokens = Tokens((support.TEST_KEY,), 3600)
    async with app_factory(rate_signup_per_ip_hour=1_000_000, db_pool_max=10) as (app, client):
        settings = app.state.settings

        async def sign_up(i: int) -> None:
            answer = await client.post("/subscribe", json={"email": f"new{i}@example.net"})
            assert answer.status_code == 202

        async def confirm(subscriber_id: int) -> None:
            answer = await client.post(f"/confirm/{tokens.confirm(subscriber_id)}")
            assert answer.status_code == 200

        async def erase(i: int) -> None:
            answer = await client.delete(
                f"/admin/api/subscribers/old2{i}@example.org", headers=admin_headers
            )
            assert answer.status_code == 204

        async def bounce(subscriber_id: int) -> None:
            target = actions.Target(subscriber_id, None)
            assert await actions.apply(app.state.pool, settings, target, "hard", "dsn", "5.1.1")

        async def import_lines(part: int) -> None:
            lines = [
                {"email": f"imported{part}-{i}@example.com"}
                | (
                    {"consented_at": "2024-03-01T10:00:00Z", "consent_source": "fair"}
                    if i % 2
                    else {}
                )
                for i in range(15)
            ]
            body = "\n".join(json.dumps(line) for line in lines).encode()
            answer = await client.post(
                "/admin/api/subscribers/import", content=body, headers=admin_headers
            )
            assert answer.status_code == 200, answer.text

        await asyncio.gather(
            *(sign_up(i) for i in range(25)),
            *(confirm(i) for i in pending),
            *(erase(i) for i in range(10)),
            *(bounce(r["id"]) for r in bouncing),
            *(import_lines(part) for part in range(4)),
        )
    now = await actual(db)
    assert now["active"] == 40 - 10 - 10 + 20 + 4 * 7, now
    assert now["pending"] == 25 + 4 * 8, now
    assert await counted(db) == now


async def test_counts_follow_single_writes_and_truncate(db: asyncpg.Connection) -> None:
    sid = await people.add_subscriber(db, "one@example.org", status="pending")
    assert await counted(db) == {"pending": 1}
    await db.execute("UPDATE subscribers SET name = 'x' WHERE id = $1", sid)
    # A sign-up again (the sign-up's upsert): one row inserted, one updated, none counted twice.
    await db.execute(
        "INSERT INTO subscribers (email) VALUES ('ONE@example.org'), ('three@example.org')"
        " ON CONFLICT (lower(email)) DO UPDATE SET name = 'again'"
    )
    assert await counted(db) == {"pending": 2} == await actual(db)
    await db.execute("DELETE FROM subscribers WHERE email = 'three@example.org'")
    await db.execute("UPDATE subscribers SET status = 'active' WHERE id = $1", sid)
    assert await counted(db) == {"active": 1}
    async with db.transaction():
        await people.add_subscriber(db, "two@example.org")
        await db.execute("DELETE FROM subscribers WHERE id = $1", sid)
        await db.execute("UPDATE subscribers SET status = 'pending'")
    assert await counted(db) == {"pending": 1} == await actual(db)
    try:
        async with db.transaction():
            await people.add_many(db, 5)
            raise RuntimeError
    except RuntimeError:
        pass  # rolled back with the rows
    assert await counted(db) == {"pending": 1}
    await db.execute("TRUNCATE subscribers CASCADE")
    assert await counted(db) == {}


async def test_the_deltas_are_folded_and_keep_their_sums(db: asyncpg.Connection) -> None:
    for i in range(200):
        await people.add_subscriber(
            db, f"p{i}@example.org", status="pending" if i % 2 else "active"
        )
    await db.execute("UPDATE subscribers SET status = 'active' WHERE email LIKE 'p1%'")
    assert await counted(db) == await actual(db) == {"active": 156, "pending": 44}
    assert await db.fetchval("SELECT count(*) FROM subscriber_counts") <= 64 + 2


async def test_overview_and_send_step_read_the_counters_not_the_table(
    app: Any, db: asyncpg.Connection
) -> None:
    await people.add_subscriber(db, "real@example.org")
    # Counters that disagree with the table show which one the pages read.
    await db.execute("INSERT INTO subscriber_counts VALUES ('active', 1233), ('pending', 7)")
    async with browser(app) as web:
        await sign_in(web)
        overview = (await web.get("/admin")).text
    assert re.search(r'id="active-count">1,?234<', overview), overview
    assert re.search(r'id="pending-count">7<', overview)
    assert await queries("campaigns").count_active.fetchval(db) == 1234


# -- the prefix search ----------------------------------------------------------------
KEYS = st.text(
    alphabet=st.sampled_from(
        ["a", "b", "z", "%", "_", "\\", "@", ".", "é", "ß", "ж", "中", "\ud7ff", "\ue000", LAST]
    )
    | st.characters(blacklist_categories=("Cs", "Cc")),
    max_size=6,
)


@given(prefix=KEYS, key=KEYS)
@example(prefix="a" + LAST, key="a" + LAST + "z")
@example(prefix="a" + LAST, key="b")
@example(prefix=LAST, key=LAST * 3)
@example(prefix="\ud7ff", key="\ue000")
@example(prefix="a%", key="ab")
@example(prefix="a_", key="ab")
def test_a_key_starts_with_the_prefix_exactly_when_it_lies_between_prefix_and_successor(
    prefix: str, key: str
) -> None:
    below = prefix_successor(prefix)
    inside = prefix <= key and (below is None or key < below)
    assert inside == key.startswith(prefix)
    if below is not None:
        assert below > prefix and not below.startswith(prefix)


ADDRESSES = [
    "ada@example.org",
    "ada.lovelace@example.org",
    "adam@example.org",
    "a%b@example.org",
    "axb@example.org",
    "a_b@example.org",
    "a\\b@example.org",
    "b@example.org",
    "zoë@example.org",
    "zoe@example.org",
    "jürgen@example.de",
    "ßtraße@example.de",
    "жанна@example.ru",
    "中文@example.cn",
    f"x{LAST}@example.org",
    f"x{LAST}{LAST}@example.org",
    "y@example.org",
    "\ud7ff@example.org",
    "\ue000@example.org",
]


def brute_force(rows: list[Any], prefix: str, status: str) -> list[int]:
    matching = [r for r in rows if r["key"].startswith(prefix) and status in ("", r["status"])]
    return [r["id"] for r in sorted(matching, key=lambda r: (r["key"], r["id"]))]


async def walk(db: asyncpg.Connection, prefix: str, status: str, start: str = "") -> list[int]:
    """Every page of a search, two rows a page, as the dashboard's cursor walks them."""
    seen: list[int] = []
    cursor: dict[str, Any] = {"after_key": start, "after_id": 0}
    while True:
        rows = await fetch_page(db, {"status": status, "prefix": prefix, **cursor}, 2)
        seen += [r["id"] for r in rows]
        if len(rows) < 2:
            return seen
        cursor = {"after_key": rows[-1]["sort_key"], "after_id": rows[-1]["id"]}


async def test_search_returns_the_rows_a_brute_force_filter_returns(
    db: asyncpg.Connection,
) -> None:
    for i, address in enumerate(ADDRESSES):
        status = "pending" if i % 3 == 0 else "active"
        await people.add_subscriber(db, address, status=status)
        await people.add_subscriber(db, address.upper().replace("@", f"{i}@"), status=status)
    rows = await db.fetch('SELECT id, status, lower(email) COLLATE "C" AS key FROM subscribers')
    keys = [r["key"] for r in rows]
    prefixes = {"", "%", "_", "\\", LAST, "x" + LAST, "a%", "a_", "zz", "\ud7ff", "\ue000"}
    prefixes |= {key[:n] for key in keys for n in range(1, 5)}
    prefixes |= {key[:n] + LAST for key in keys for n in range(0, 3)}
    for prefix in sorted(prefixes):
        for status in ("", "active", "pending"):
            assert await walk(db, prefix, status) == brute_force(rows, prefix, status), (
                prefix,
                status,
            )
    # A cursor before the prefix (a page of an earlier search) starts at the prefix; one
    # past it continues from there.
    assert await walk(db, "ad", "", start="a") == brute_force(rows, "ad", "")
    assert await walk(db, "ad", "", start="adam") == brute_force(
        [r for r in rows if r["key"] > "adam"], "ad", ""
    )


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in _nodes(child))]


async def generic_plan(db: asyncpg.Connection, name: str, **values: Any) -> dict[str, Any]:
    """The executed generic plan of a named query of the list (as a pooled connection
    ends up running it), as JSON."""
    query = getattr(queries("subscriber_list"), name)
    await db.execute("SET plan_cache_mode = force_generic_plan")
    await db.execute(f"PREPARE {name} AS {query.sql}")
    literals = [
        str(v) if isinstance(v, int) else "'" + v.replace("'", "''") + "'"
        for v in query.args(values)
    ]
    [plan] = json.loads(
        await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}({', '.join(literals)})")
    )
    return plan["Plan"]


@pytest.mark.parametrize(
    ("name", "values", "index"),
    [
        (
            "search_subscribers",
            {"after_key": "nobody", "after_id": 0, "below": "nobodz"},
            "subscribers_email_order",
        ),
        (
            "search_subscribers_in_status",
            {"status": "active", "after_key": "nobody", "after_id": 0, "below": "nobodz"},
            "subscribers_status_email_order",
        ),
        (
            "list_subscribers_in_status",
            {"status": "pending", "after_key": "", "after_id": 0},
            "subscribers_status_email_order",
        ),
    ],
)
async def test_a_page_without_a_match_reads_no_rows_with_a_generic_plan(
    db: asyncpg.Connection, name: str, values: dict[str, Any], index: str
) -> None:
    await people.add_many(db, 3000)  # all active: no pending row, no "nobody…" address
    await db.execute("ANALYZE subscribers")
    plan = await generic_plan(db, name, **values, limit=51)
    scans = [n for n in _nodes(plan) if "Index" in n["Node Type"]]
    assert [n["Index Name"] for n in scans] == [index], plan
    assert sum(n.get("Rows Removed by Filter", 0) for n in _nodes(plan)) == 0, plan
    assert plan["Actual Rows"] == 0, plan


async def test_the_list_pages_a_prefix_search_through_the_dashboard(
    app: Any, db: asyncpg.Connection
) -> None:
    for address in ("a_b@example.org", "axb@example.org", "a%c@example.org", "abc@example.org"):
        await people.add_subscriber(db, address)
    async with browser(app) as web:
        csrf = await sign_in(web)
        answer = await web.post("/admin/subscribers/list", data={"csrf": csrf, "prefix": "A_"})
    assert answer.status_code == 200
    assert re.findall(r'<th scope="row">([^<]+)</th>', answer.text) == ["a_b@example.org"]
