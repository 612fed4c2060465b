"""Issue 31: each topic's count of active members is kept with the writes (sql/162), so
the topics page and GET /admin/api/topics read a few counter rows, not every membership
of a topic. The counts must equal a recount after any mix of concurrent writes, after
TRUNCATE, and after the online backfill of the memberships that existed before."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import asyncpg
import pytest

from service.bounces import actions
from service.db import migrations
from service.db.queries import queries
from service.tokens import Tokens
from tests import people, support
from tests.admin.test_dashboard import browser, sign_in
from tests.manage_support import fresh_link, manage_path, open_data

TOKENS = Tokens((support.TEST_KEY,), 3600)
RECOUNT = (
    "SELECT t.slug, count(*) AS n FROM subscriber_topics st"
    " JOIN subscribers s ON s.id = st.subscriber_id JOIN topics t ON t.id = st.topic_id"
    " WHERE s.status = 'active' GROUP BY t.slug"
)
COUNTED = (
    "SELECT t.slug, sum(m.n)::bigint AS n FROM topic_member_counts m"
    " JOIN topics t ON t.id = m.topic_id GROUP BY t.slug"
)


async def counted(db: asyncpg.Connection) -> dict[str, int]:
    return {r["slug"]: r["n"] for r in await db.fetch(COUNTED) if r["n"]}


async def actual(db: asyncpg.Connection) -> dict[str, int]:
    return {r["slug"]: r["n"] for r in await db.fetch(RECOUNT)}


async def topic(db: asyncpg.Connection, slug: str, default: bool = False) -> int:
    return await db.fetchval(
        "INSERT INTO topics (slug, name, is_default) VALUES ($1, $1, $2) RETURNING id",
        slug,
        default,
    )


async def join(db: asyncpg.Connection, sid: int, *slugs: str) -> None:
    await db.execute(
        "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
        " SELECT id, $1 FROM topics WHERE slug = ANY($2::text[])",
        sid,
        list(slugs),
    )


# -- the counts through the service ---------------------------------------------------
async def test_counts_equal_a_recount_after_a_concurrent_burst_of_every_kind_of_write(
    app_factory: Any, db: asyncpg.Connection, smtp: Any, admin_headers: dict[str, str]
) -> None:
    await topic(db, "weekly", default=True)
    await topic(db, "offers")
    await topic(db, "gone")
    old = []
    for i in range(30):
        sid = await people.add_subscriber(db, f"old{i}@example.org")
        await join(db, sid, "weekly", *(["offers"] if i % 2 else []), *(["gone"] if i % 3 else []))
        old.append(sid)
    pending = []
    for i in range(12):
        sid = await people.add_subscriber(db, f"pending{i}@example.org", status="pending")
        if i % 2:
            await db.execute(
                "UPDATE subscribers SET topics_requested = ARRAY(SELECT id FROM topics"
                " WHERE slug IN ('offers', 'gone')) WHERE id = $1",
                sid,
            )
        pending.append(sid)
    await db.execute("UPDATE subscribers SET confirm_sent_at = now() - interval '1 hour'")
    async with app_factory(rate_signup_per_ip_hour=1_000_000, db_pool_max=10) as (app, client):
        settings = app.state.settings
        # The data page (the fresh emailed link) is where a person joins topics.
        sessions = {}
        for i, sid in enumerate(old[:6]):
            link = await fresh_link(client, smtp, sid, f"old{i}@example.org", db)
            sessions[sid] = (await open_data(client, link))[1]
        assert await counted(db) == await actual(db)

        async def sign_up(i: int) -> None:
            body = {"email": f"new{i}@example.net"} | ({"topics": ["offers"]} if i % 2 else {})
            answer = await client.post("/subscribe", json=body)
            assert answer.status_code == 202, answer.text

        async def confirm(sid: int) -> None:
            answer = await client.post(f"/confirm/{TOKENS.confirm(sid)}")
            assert answer.status_code == 200, answer.text

        async def choose(sid: int, slugs: list[str]) -> None:  # joins and leaves at once
            answer = await client.post(
                "/manage/me", data={"session": sessions[sid], "action": "topics", "topics": slugs}
            )
            assert answer.status_code == 200, answer.text

        async def leave(sid: int, slug: str) -> None:  # the footer link's page
            answer = await client.post(
                manage_path(sid), data={"action": "leave_topics", "topics": slug}
            )
            assert answer.status_code == 200, answer.text

        async def unsubscribe(sid: int) -> None:
            answer = await client.post(f"/unsubscribe/{TOKENS.unsubscribe(sid)}")
            assert answer.status_code == 200, answer.text

        async def erase(i: int) -> None:
            answer = await client.delete(
                f"/admin/api/subscribers/old{i}@example.org", headers=admin_headers
            )
            assert answer.status_code == 204, answer.text

        async def bounce(sid: int) -> None:
            target = actions.Target(sid, None)
            assert await actions.apply(app.state.pool, settings, target, "hard", "dsn", "5.1.1")

        async def import_lines(part: int) -> None:
            lines = [
                {"email": f"imported{part}-{i}@example.com"}
                | ({"topics": ["offers", "weekly"][: i % 3]} if i % 3 else {})
                | ({"consented_at": "2024-03-01T10:00:00Z"} if i % 4 else {})
                for i in range(20)
            ]
            body = "\n".join(json.dumps(line) for line in lines).encode()
            answer = await client.post(
                "/admin/api/subscribers/import", content=body, headers=admin_headers
            )
            assert answer.status_code == 200, answer.text

        async def delete_topic(slug: str) -> None:
            answer = await client.delete(f"/admin/api/topics/{slug}", headers=admin_headers)
            assert answer.status_code == 204

        await asyncio.gather(
            *(sign_up(i) for i in range(16)),
            *(confirm(sid) for sid in pending),
            choose(old[0], ["offers"]),
            choose(old[1], ["weekly"]),
            choose(old[2], ["weekly", "offers"]),
            choose(old[3], ["offers"]),
            choose(old[4], ["weekly"]),
            choose(old[5], ["offers", "weekly"]),
            *(leave(sid, "weekly") for sid in old[6:10]),
            *(leave(sid, "offers") for sid in old[10:14] if old.index(sid) % 2),
            *(unsubscribe(sid) for sid in old[14:18]),
            *(erase(i) for i in range(18, 22)),
            *(bounce(sid) for sid in old[22:26]),
            *(import_lines(part) for part in range(4)),
            delete_topic("gone"),
        )
        listed = (await client.get("/admin/api/topics", headers=admin_headers)).json()["topics"]
    now = await actual(db)
    assert now["weekly"] > 0 and now["offers"] > 0, now
    assert not await db.fetchval("SELECT count(*) FROM topics WHERE slug = 'gone'")
    assert await counted(db) == now
    assert {t["slug"]: t["subscribers"] for t in listed} == now


async def test_counts_follow_single_writes_rollbacks_moves_and_truncate(
    db: asyncpg.Connection,
) -> None:
    weekly, offers = await topic(db, "weekly"), await topic(db, "offers")
    ada = await people.add_subscriber(db, "ada@example.org", status="pending")
    await join(db, ada, "weekly", "offers")
    assert await counted(db) == {} == await actual(db)  # pending: not counted
    await db.execute("UPDATE subscribers SET status = 'active' WHERE id = $1", ada)
    assert await counted(db) == {"weekly": 1, "offers": 1}
    await db.execute("UPDATE subscribers SET name = 'Ada', status = 'active' WHERE id = $1", ada)
    bob = await people.add_subscriber(db, "bob@example.org")
    await join(db, bob, "weekly")
    assert await counted(db) == {"weekly": 2, "offers": 1} == await actual(db)
    # A membership moved to another topic (no caller does it; the trigger still counts it).
    await db.execute(
        "UPDATE subscriber_topics SET topic_id = $1 WHERE subscriber_id = $2 AND topic_id = $3",
        offers,
        bob,
        weekly,
    )
    assert await counted(db) == {"weekly": 1, "offers": 2} == await actual(db)
    # An erasure (the cascade deletes the memberships after the subscriber row) and a
    # join, in a transaction that rolls back, then one that commits.
    try:
        async with db.transaction():
            await db.execute("DELETE FROM subscribers WHERE id = $1", ada)
            await join(db, bob, "weekly")
            assert await counted(db) == {"weekly": 1, "offers": 1} == await actual(db)
            raise RuntimeError
    except RuntimeError:
        pass
    assert await counted(db) == {"weekly": 1, "offers": 2}
    async with db.transaction():
        await db.execute("DELETE FROM subscribers WHERE id = $1", ada)
        await db.execute("DELETE FROM subscriber_topics WHERE subscriber_id = $1", bob)
    assert await counted(db) == {} == await actual(db)
    # Many rows in one statement each way; a topic deleted with its members.
    await people.add_many(db, 50)
    await db.execute(
        "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
        " SELECT t.id, s.id FROM topics t, subscribers s WHERE s.email LIKE 'reader%'"
    )
    await db.execute("UPDATE subscribers SET status = 'pending' WHERE email LIKE 'reader1%'")
    assert await counted(db) == {"weekly": 39, "offers": 39} == await actual(db)
    await db.execute("DELETE FROM topics WHERE id = $1", offers)
    await db.execute("DELETE FROM subscribers WHERE email LIKE 'reader2%'")  # 11 active
    assert await counted(db) == {"weekly": 28} == await actual(db)
    await db.execute("TRUNCATE subscribers CASCADE")
    assert not await db.fetchval("SELECT count(*) FROM topic_member_counts")
    sid = await people.add_subscriber(db, "again@example.org")
    await join(db, sid, "weekly")
    assert await counted(db) == {"weekly": 1}
    await db.execute("TRUNCATE topics CASCADE")
    assert not await db.fetchval("SELECT count(*) FROM topic_member_counts")


async def test_the_deltas_are_folded_and_keep_their_sums(db: asyncpg.Connection) -> None:
    await topic(db, "weekly")
    await topic(db, "offers")
    for i in range(150):
        sid = await people.add_subscriber(db, f"p{i}@example.org")
        await join(db, sid, "weekly", *(["offers"] if i % 3 else []))
    await db.execute("UPDATE subscribers SET status = 'pending' WHERE email LIKE 'p1%'")
    assert await counted(db) == await actual(db) == {"weekly": 89, "offers": 58}
    assert await db.fetchval("SELECT count(*) FROM topic_member_counts") <= 64 + 2
    # A deleted topic's deltas stay unread until a fold (64 writes at most) drops them.
    await db.execute("DELETE FROM topics WHERE slug = 'offers'")
    for status in ("active", "pending") * 35:  # 70 writes
        await db.execute(
            "UPDATE subscribers SET status = $1 WHERE email = 'p1@example.org'", status
        )
    assert await counted(db) == await actual(db) == {"weekly": 89}
    orphans = (
        "SELECT count(*) FROM topic_member_counts WHERE topic_id NOT IN (SELECT id FROM topics)"
    )
    assert not await db.fetchval(orphans)


async def test_a_confirmation_and_a_join_racing_for_one_person_are_counted_once(
    database_url: str, db: asyncpg.Connection
) -> None:
    """The join's trigger locks the subscriber row FOR SHARE: it waits for the
    confirmation's update and reads the new status; without the lock each side would
    miss the other's uncommitted write and the member would not be counted."""
    await topic(db, "weekly")
    sid = await people.add_subscriber(db, "ada@example.org", status="pending")
    other = await asyncpg.connect(database_url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("UPDATE subscribers SET status = 'active' WHERE id = $1", sid)
        joining = asyncio.create_task(join(db, sid, "weekly"))
        while not await other.fetchval(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
        ):
            assert not joining.done(), joining.result()
            await asyncio.sleep(0.01)
        await tx.commit()
        await joining
    finally:
        await other.close()
    assert await counted(db) == {"weekly": 1} == await actual(db)


# -- the readers ------------------------------------------------------------------------
async def test_the_topics_page_and_api_read_the_counters_not_the_memberships(
    app: Any, client: Any, db: asyncpg.Connection, admin_headers: dict[str, str]
) -> None:
    weekly = await topic(db, "weekly")
    await topic(db, "offers")
    sid = await people.add_subscriber(db, "real@example.org")
    await join(db, sid, "weekly")
    # Counters that disagree with the memberships show which one the answers come from.
    await db.execute("INSERT INTO topic_member_counts VALUES ($1, 1233)", weekly)
    listed = (await client.get("/admin/api/topics", headers=admin_headers)).json()["topics"]
    assert [(t["slug"], t["subscribers"]) for t in listed] == [("offers", 0), ("weekly", 1234)]
    one = (await client.get("/admin/api/topics/weekly", headers=admin_headers)).json()
    assert one["subscribers"] == 1234
    async with browser(app) as web:
        await sign_in(web)
        page = (await web.get("/admin/topics")).text
    row = re.search(r"<code>weekly</code></td>(.*?)</tr>", page, re.S)
    assert row and re.search(r">1,?234<", row.group(1)), page
    # Neither query reads a membership or a subscriber, however many there are.
    topics = queries("topics")
    for name, args in (("list_topics", ""), ("get_topic", "('weekly')")):
        await db.execute(f"PREPARE {name} AS {getattr(topics, name).sql}")
        [plan] = json.loads(await db.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}{args}"))
        scanned = re.findall(r'"Relation Name": "(\w+)"', json.dumps(plan))
        assert set(scanned) == {"topics", "campaigns", "topic_member_counts"}, scanned


# -- the backfill -----------------------------------------------------------------------
async def test_the_migration_backfills_the_counts_of_existing_memberships(
    empty_db: str,
    tmp_path: Any,
) -> None:
    before = tmp_path / "sql"
    before.mkdir()
    for migration in migrations.discover():
        if int(migration.name[:3]) < 162:
            (before / migration.name).write_text(migration.sql)
    con = await asyncpg.connect(empty_db)
    try:
        await migrations.migrate(con, before)
        await con.execute(
            "INSERT INTO topics (slug, name) SELECT 't' || n, 'T' || n FROM generate_series(1, 4) n"
        )
        await con.execute(
            "INSERT INTO subscribers (email, status)"
            " SELECT 'r' || n || '@example.org', CASE WHEN n % 5 = 0 THEN 'pending'"
            " ELSE 'active' END FROM generate_series(1, 3000) n"
        )
        await con.execute(
            "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
            " SELECT t.id, s.id FROM topics t JOIN subscribers s ON s.id % t.id = 0"
        )
        applied = await migrations.migrate(con)
        assert applied[:2] == [
            "162_topic_member_counts.sql",
            "163_topic_member_counts_backfill.sql",
        ]
        now = await actual(con)
        assert now == {"t1": 2400, "t2": 1200, "t3": 800, "t4": 600}
        assert await counted(con) == now
    finally:
        await con.close()


async def test_the_rebuild_waits_for_no_writer_and_misses_none(
    database_url: str, db: asyncpg.Connection
) -> None:
    """The backfill (sql/163) runs while sign-ups go on: it takes no lock a writer holds,
    and the writes of transactions still open when it counts are added by their own
    deltas when they commit; those committed before are in its count once."""
    await topic(db, "weekly")
    await topic(db, "offers")
    await people.add_many(db, 40)
    await db.execute(
        "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
        " SELECT t.id, s.id FROM topics t, subscribers s"
        " WHERE t.slug = 'weekly' OR s.email ~ '[02468]@'"
    )
    await db.execute("DELETE FROM topic_member_counts")  # as before sql/163
    writer = await asyncpg.connect(database_url)
    try:
        tx = writer.transaction()
        await tx.start()
        ada = await people.add_subscriber(writer, "ada@example.org")
        await join(writer, ada, "weekly", "offers")
        await writer.execute("DELETE FROM subscribers WHERE email = 'reader1@example.org'")
        await writer.execute(
            "DELETE FROM subscriber_topics WHERE subscriber_id IN"
            " (SELECT id FROM subscribers WHERE email = 'reader2@example.org')"
        )
        await db.execute("SET lock_timeout = '60s'")  # a guard: it must not wait at all
        await db.execute("SELECT topic_member_counts_rebuild()")
        assert await counted(db) == await actual(db) == {"weekly": 40, "offers": 20}
        await tx.commit()
    finally:
        await writer.close()
    assert await counted(db) == await actual(db) == {"weekly": 39, "offers": 20}
    await db.execute("SELECT topic_member_counts_rebuild()")
    assert await counted(db) == {"weekly": 39, "offers": 20}
    await db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    with pytest.raises(asyncpg.RaiseError, match="READ COMMITTED"):
        await db.execute("SELECT topic_member_counts_rebuild()")
    await db.execute("ROLLBACK")
