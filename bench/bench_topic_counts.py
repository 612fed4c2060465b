"""The topics page and GET /admin/api/topics at 1 M memberships (issue 31): each topic's
count of active members as the queries read it before sql/162 (every membership of the
topic joined with its subscriber) and now (the counts kept with the writes), timed in the
database alone: prepared, median of 30 executions (RUNS). Also what the counting costs and
takes: one statement joining every membership with and without the triggers (the faster of
two runs each, alternated), one person joining one topic (median of 300 statements in a
transaction, as a person's page joins), and the online backfill (sql/163) of the
memberships that exist.

On its own PostgreSQL (pgserver, in a temporary directory): SUBSCRIBERS subscribers (one
in ten pending), in three topics: `weekly`, the default one, has every subscriber;
`offers` every second, `deals` every sixth (1 M memberships with the default sizes).

Run: `python -m bench bench_topic_counts`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from typing import Any

import asyncpg

from service.db import migrations
from service.db.queries import queries

SUBSCRIBERS = int(os.environ.get("BENCH_TOPIC_SUBSCRIBERS", "600000"))
RUNS = 30
JOINS = 300
JOIN_ONE = (
    "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
    " SELECT id, $1 FROM topics WHERE slug = 'deals'"
)
MEMBERSHIPS = (
    "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
    " SELECT t.id, s.id FROM topics t JOIN subscribers s"
    " ON t.slug = 'weekly' OR (t.slug = 'offers' AND s.id % 2 = 0)"
    " OR (t.slug = 'deals' AND s.id % 6 = 0)"
)
TRIGGER = "topic_member_counts_insert"
# The queries as they were before sql/162 (sql/queries/topics.sql at that time).
BEFORE_COUNT = (
    "(SELECT count(*) FROM subscriber_topics st JOIN subscribers s ON s.id = st.subscriber_id"
    " WHERE st.topic_id = t.id AND s.status = 'active') AS subscribers"
)
BEFORE_LIST = (
    "SELECT t.id, t.slug, t.name, t.description, t.is_default, t.welcome_campaign_id,"
    " c.subject AS welcome_subject, c.html AS welcome_html, c.text AS welcome_text, "
    + BEFORE_COUNT
    + " FROM topics t LEFT JOIN campaigns c ON c.id = t.welcome_campaign_id ORDER BY t.slug"
)
BEFORE_GET = (
    "SELECT t.id, t.slug, t.name, t.description, t.is_default, t.welcome_campaign_id,"
    " c.subject AS welcome_subject, c.html AS welcome_html, c.text AS welcome_text, "
    + BEFORE_COUNT
    + " FROM topics t LEFT JOIN campaigns c ON c.id = t.welcome_campaign_id WHERE t.slug = $1"
)


async def statement_ms(con: asyncpg.Connection, sql: str, *args: Any) -> tuple[float, Any]:
    """Median milliseconds of a prepared statement over RUNS executions, and its rows."""
    statement = await con.prepare(sql)
    timings, rows = [], None
    for _ in range(RUNS):
        started = time.perf_counter()
        rows = await statement.fetch(*args)
        timings.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(timings), 3), rows


async def seconds(con: asyncpg.Connection, sql: str) -> float:
    started = time.perf_counter()
    await con.execute(sql)
    return round(time.perf_counter() - started, 2)


async def join_ms(con: asyncpg.Connection, counting: bool) -> float:
    """Median milliseconds of one person joining one topic, rolled back afterwards."""
    await con.execute(
        f"ALTER TABLE subscriber_topics {'ENABLE' if counting else 'DISABLE'} TRIGGER {TRIGGER}"
    )
    statement = await con.prepare(JOIN_ONE)
    timings = []
    tx = con.transaction()
    await tx.start()
    try:
        for subscriber_id in range(1, 6 * JOINS, 6):  # not in `deals` (every sixth is)
            started = time.perf_counter()
            await statement.fetch(subscriber_id)
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        await tx.rollback()
    return round(statistics.median(timings), 3)


async def measure(con: asyncpg.Connection) -> list[dict]:
    await con.execute(
        "INSERT INTO topics (slug, name, is_default)"
        " VALUES ('weekly', 'Weekly', true), ('offers', 'Offers', false), ('deals', 'Deals', false)"
    )
    await con.execute(
        "INSERT INTO subscribers (email, status, confirmed_at)"
        " SELECT 'reader' || n || '@example.org', CASE WHEN n % 10 = 0 THEN 'pending'"
        " ELSE 'active' END, now() FROM generate_series(1, $1) AS n",
        SUBSCRIBERS,
    )
    await con.execute("VACUUM ANALYZE subscribers")
    timings: dict[bool, list[float]] = {False: [], True: []}
    for counting in (False, True, False, True):  # alternated: the machine's noise evens out
        await con.execute("TRUNCATE subscriber_topics")
        await con.execute(
            f"ALTER TABLE subscriber_topics {'ENABLE' if counting else 'DISABLE'} TRIGGER {TRIGGER}"
        )
        await con.execute("CHECKPOINT")
        timings[counting].append(await seconds(con, MEMBERSHIPS))
    plain, counted = min(timings[False]), min(timings[True])
    memberships = await con.fetchval("SELECT count(*) FROM subscriber_topics")
    await con.execute("VACUUM ANALYZE subscriber_topics")
    await con.execute("VACUUM ANALYZE subscribers")
    backfill = await seconds(con, "SELECT topic_member_counts_rebuild()")
    join_plain, join_counted = await join_ms(con, False), await join_ms(con, True)

    topics = queries("topics")
    rows = [
        {
            "name": "join every membership in one statement",
            "memberships": memberships,
            "s_without_counting": plain,
            "s_with_counting": counted,
        },
        {
            "name": "one person joins one topic",
            "ms_without_counting": join_plain,
            "ms_with_counting": join_counted,
        },
        {"name": "backfill (sql/163, online)", "memberships": memberships, "seconds": backfill},
    ]
    for name, before, now, args in (
        ("topics page / GET /admin/api/topics", BEFORE_LIST, topics.list_topics.sql, ()),
        (
            "GET /admin/api/topics/weekly (the default topic)",
            BEFORE_GET,
            topics.get_topic.sql,
            ("weekly",),
        ),
    ):
        before_ms, old = await statement_ms(con, before, *args)
        now_ms, new = await statement_ms(con, now, *args)
        assert [r["subscribers"] for r in old] == [r["subscribers"] for r in new], (old, new)
        rows.append(
            {
                "name": name,
                "memberships": memberships,
                "db_p50_ms_before": before_ms,
                "db_p50_ms": now_ms,
            }
        )
    return [{"bench": "topic_counts", **row} for row in rows]


async def run() -> list[dict]:
    import pgserver

    with tempfile.TemporaryDirectory(prefix="bench-topics-") as directory:
        server = pgserver.get_server(directory, cleanup_mode="delete")
        try:
            con = await asyncpg.connect(server.get_uri())
            try:
                await migrations.migrate(con)
                return await measure(con)
            finally:
                await con.close()
        finally:
            server.cleanup()


def main() -> list[dict]:
    return asyncio.run(run())


if __name__ == "__main__":
    for row in main():
        print(row)
