"""Queueing a campaign for a million subscribers, and the claim's cost as its outbox drains.

Runs on its own embedded PostgreSQL (pgserver, in a temporary directory) with durable
settings left at PostgreSQL's defaults (fsync on), so the figures are those of a plain
server. Rows:
- `queue one campaign`: `campaigns.queue_send` for BENCH_CAMPAIGN_QUEUE (1,000,000)
  active subscribers (one INSERT … SELECT for deliveries and outbox jobs); target < 20 s;
- `claim ... at the start`: the worker's campaign claim (`claim_campaign`, OUTBOX_BATCH
  jobs, in a transaction that is rolled back) on the full queue, median of 50;
- `claim ... near the end, before a vacuum`: the same after all but 1 % of the jobs were
  claimed and deleted in batches as the worker does (their dead index entries still in
  the way: the worst case between two autovacuum passes), twice: from the head of the
  queue (what a lane does after a restart, at most every RESUME_FOR_S) and after the
  lane's bound (every other claim: service/outbox/sender.py, Resume); target: no slowdown;
- `claim ... near the end, after a vacuum`: from the head once (auto)vacuum removed them;
  migration 110 starts autovacuum on the outbox after 10,000 dead rows.

- `queue one topic campaign`: the same for a campaign naming two topics (issue 28), on a
  list of 1.2 times BENCH_CAMPAIGN_QUEUE subscribers of whom BENCH_CAMPAIGN_QUEUE are in one
  or both topics (half of them in both: each queued once) and the rest in a third topic
  only; target < 20 s.

The send itself (to a real SMTP server) is measured by bench_send.py.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time

import asyncpg

from service.campaigns import store
from service.db import migrations
from service.db.queries import queries

QUEUE = int(os.environ.get("BENCH_CAMPAIGN_QUEUE", "1000000"))
BATCH = 50
DRAIN_STATEMENT = 5000  # jobs the drain deletes per transaction (the worker: OUTBOX_BATCH)
q = queries("outbox")


async def add_subscribers(con: asyncpg.Connection, count: int) -> None:
    await con.execute("TRUNCATE subscribers, campaigns CASCADE")
    await con.execute(
        "INSERT INTO subscribers (email, name, status, confirmed_at)"
        " SELECT 'reader' || n || '@example.org', 'Reader ' || n, 'active', now()"
        " FROM generate_series(1, $1) AS n",
        count,
    )
    await con.execute("VACUUM ANALYZE subscribers")


async def measure_queueing(con: asyncpg.Connection, count: int) -> dict:
    await add_subscribers(con, count)
    campaign_id = await store.create_campaign(
        con, name="bench", subject="Hello {{ name }}", html="<p>Hi {{ name }}</p>", text="Hi"
    )
    started = time.perf_counter()
    queued = await store.queue_send(con, campaign_id)
    elapsed = time.perf_counter() - started
    return {
        "bench": "campaign_send",
        "name": "queue one campaign (INSERT … SELECT)",
        "subscribers": queued,
        "seconds": round(elapsed, 2),
        "per_second": round(queued / elapsed),
        "target": "< 20 s " + ("met" if elapsed < 20 else "NOT met"),
    }


async def measure_topic_queueing(con: asyncpg.Connection, count: int) -> dict:
    """A campaign for the topics `weekly` (every one of the first `count` subscribers) and
    `offers` (every second of them: in both topics, queued once); `events` holds the other
    fifth of the list, who must not be queued."""
    await con.execute("TRUNCATE outbox, deliveries")  # the triggers' cascade is per row
    await add_subscribers(con, count + count // 5)
    await con.execute("TRUNCATE topics CASCADE")
    ids = {
        slug: await con.fetchval(
            "INSERT INTO topics (slug, name) VALUES ($1, $1) RETURNING id", slug
        )
        for slug in ("weekly", "offers", "events")
    }
    first = await con.fetchval("SELECT min(id) FROM subscribers")
    await con.execute(
        "INSERT INTO subscriber_topics (topic_id, subscriber_id)"
        " SELECT CASE WHEN s.id < $4::bigint + $5::bigint THEN $1::bigint ELSE $3::bigint END,"
        " s.id FROM subscribers s"
        " UNION ALL"
        " SELECT $2::bigint, s.id FROM subscribers s"
        " WHERE s.id < $4::bigint + $5::bigint AND s.id % 2 = 0",
        ids["weekly"],
        ids["offers"],
        ids["events"],
        first,
        count,
    )
    await con.execute("VACUUM ANALYZE subscriber_topics")
    campaign_id = await store.create_campaign(
        con,
        name="bench topics",
        subject="Hello {{ name }}",
        html="<p>Hi {{ name }}</p>",
        text="Hi",
        topic_ids=[ids["weekly"], ids["offers"]],
    )
    started = time.perf_counter()
    queued = await store.queue_send(con, campaign_id)
    elapsed = time.perf_counter() - started
    assert queued == count, (queued, count)
    return {
        "bench": "campaign_send",
        "name": "queue one topic campaign (two topics, each recipient once)",
        "subscribers": await con.fetchval("SELECT count(*) FROM subscribers"),
        "recipients": queued,
        "seconds": round(elapsed, 2),
        "per_second": round(queued / elapsed),
        "target": "< 20 s " + ("met" if elapsed < 20 else "NOT met"),
    }


async def claim(con: asyncpg.Connection, limit: int, after: tuple | None) -> list:
    """The worker's campaign claim: from the head of the queue, or after a lane's bound."""
    run_at, job_id = after or (None, 0)
    return await q.claim_campaign.fetch(
        con, limit=limit, after_run_at=run_at, after_id=job_id, claimed=[]
    )


async def claim_ms(con: asyncpg.Connection, after: tuple | None = None, rounds: int = 50) -> float:
    """Median milliseconds of one claim of BATCH jobs (rolled back: the queue stays)."""
    times = []
    for _ in range(rounds):
        tx = con.transaction()
        await tx.start()
        started = time.perf_counter()
        jobs = await claim(con, BATCH, after)
        times.append((time.perf_counter() - started) * 1000)
        await tx.rollback()
        assert len(jobs) == BATCH
    return statistics.median(times)


async def drain(con: asyncpg.Connection, keep: int) -> tuple:
    """Claim and delete jobs in queue order, as a lane does, until `keep` are left; the
    lane's bound after the last claim."""
    left = await con.fetchval("SELECT count(*) FROM outbox")
    after = None
    while left > keep:
        n = min(DRAIN_STATEMENT, left - keep)
        async with con.transaction():
            jobs = await claim(con, n, after)
            await q.delete_jobs.execute(con, ids=[j["id"] for j in jobs])
        after = (jobs[-1]["run_at"], jobs[-1]["id"])
        left -= n
    return after


async def measure_claims(con: asyncpg.Connection) -> list[dict]:
    rows = []
    total = await con.fetchval("SELECT count(*) FROM outbox")

    def row(name: str, ms: float, jobs: int) -> dict:
        return {
            "bench": "campaign_send",
            "name": f"claim {BATCH} jobs, {name}",
            "queued_jobs": jobs,
            "claim_ms": round(ms, 3),
        }

    start = await claim_ms(con)
    rows.append(row("at the start", start, total))
    keep = total // 100
    started = time.perf_counter()
    bound = await drain(con, keep)
    drained = time.perf_counter() - started
    rows.append(row("near the end, before a vacuum, from the head", await claim_ms(con), keep))
    rows[-1]["drain_s"] = round(drained, 1)
    bounded = await claim_ms(con, bound)
    rows.append(row("near the end, before a vacuum, after the lane's bound", bounded, keep))
    rows[-1]["target"] = "no slowdown " + ("met" if bounded < 2 * start else "NOT met")
    await con.execute("VACUUM outbox")
    rows.append(row("near the end, after a vacuum, from the head", await claim_ms(con), keep))
    return rows


async def run() -> list[dict]:
    import pgserver

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-campaign-") as directory:
        server = pgserver.get_server(directory, cleanup_mode="delete")
        try:
            con = await asyncpg.connect(server.get_uri())
            try:
                await migrations.migrate(con)
                # Autovacuum off for the measurement: the "before a vacuum" row is the
                # worst case between two passes, whenever they come.
                await con.execute("ALTER TABLE outbox SET (autovacuum_enabled = false)")
                rows = [await measure_queueing(con, QUEUE)]
                rows += await measure_claims(con)
                rows.append(await measure_topic_queueing(con, QUEUE))
            finally:
                await con.close()
        finally:
            server.cleanup()
    for row in rows:
        row["load_avg_1m"] = round(load[0], 2)
    return rows


def main() -> list[dict]:
    return asyncio.run(run())


if __name__ == "__main__":
    for row in main():
        print(row)
