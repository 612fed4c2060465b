"""Unique opens and the open rate count people (issue 27): through the real pixel, a
machine open neither makes nor spends a subscriber's unique open."""

from pathlib import Path

from tests.pixel_support import CHROME, pixel_path, seed

HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.0.0 Safari/537.36"
)


async def _stats(client, campaign_id: int, headers: dict[str, str]) -> dict:
    response = await client.get(f"/admin/api/campaigns/{campaign_id}/stats", headers=headers)
    assert response.status_code == 200
    return response.json()


async def test_a_machine_open_alone_is_no_unique_open_and_no_open_rate(
    app_factory, db, admin_headers
) -> None:
    campaign_id, (subscriber_id,) = await seed(db, 1)
    async with app_factory(stats_min_bucket=1) as (_app, client):
        await client.get(pixel_path(subscriber_id, campaign_id), headers={"User-Agent": HEADLESS})
        stats = await _stats(client, campaign_id, admin_headers)
    assert (stats["opens"], stats["machine_opens"], stats["human_opens"]) == (1, 1, 0)
    assert stats["unique_opens"] == 0
    assert stats["unique_open_rate"] == 0
    assert await db.fetchval("SELECT first_open_at FROM deliveries") is None
    reason = await db.fetchrow("SELECT * FROM campaign_counts WHERE dimension = 'reason'")
    assert (reason["key"], reason["unique_opens"]) == ("headless_browser", 0)


async def test_the_persons_own_open_after_a_machine_open_is_their_unique_open(
    app_factory, db, admin_headers
) -> None:
    campaign_id, (subscriber_id,) = await seed(db, 1)
    async with app_factory(stats_min_bucket=1) as (_app, client):
        await client.get(pixel_path(subscriber_id, campaign_id), headers={"User-Agent": HEADLESS})
        await client.get(pixel_path(subscriber_id, campaign_id), headers={"User-Agent": CHROME})
        await client.get(pixel_path(subscriber_id, campaign_id), headers={"User-Agent": CHROME})
        stats = await _stats(client, campaign_id, admin_headers)
    assert (stats["opens"], stats["machine_opens"], stats["unique_opens"]) == (3, 1, 1)
    assert stats["unique_open_rate"] == 1.0
    assert {c["client"]: c["unique_opens"] for c in stats["by_client"]}["Chrome"] == 1
    human_at = await db.fetchval("SELECT min(at) FROM opens_readable WHERE machine_reason IS NULL")
    assert await db.fetchval("SELECT first_open_at FROM deliveries") == human_at


async def test_machine_and_person_in_one_batch_count_the_person_once(
    app_factory, db, admin_headers
) -> None:
    """Both opens in the same group commit (answer-first mode batches them): the
    machine's open comes first in the batch and still does not take the unique."""
    campaign_id, subscribers = await seed(db, 2)
    async with app_factory(pixel_mode="answer-first", stats_min_bucket=1) as (_app, client):
        for subscriber_id in subscribers:
            for agent in (HEADLESS, CHROME, HEADLESS):
                await client.get(
                    pixel_path(subscriber_id, campaign_id), headers={"User-Agent": agent}
                )
    # The app's shutdown flushed the recorder.
    total = await db.fetchrow("SELECT * FROM campaign_counts WHERE dimension = 'total'")
    assert (total["opens"], total["machine_opens"], total["unique_opens"]) == (6, 4, 2)
    reasons = await db.fetchval(
        "SELECT sum(unique_opens) FROM campaign_counts WHERE dimension = 'reason'"
    )
    assert reasons == 0


MIGRATION = Path(__file__).resolve().parents[2] / "sql" / "140_unique_opens_count_people.sql"


async def test_migration_140_gives_back_the_unique_opens_machines_spent(db) -> None:
    """The counters as the old recorder left them: subscriber A's first fetch was Apple's
    prefetch (it took the unique open), then A opened it; B's only fetch was a scanner's;
    C opened it themselves. The migration moves A's unique open to A's own open, takes
    B's away, and leaves C's."""
    campaign_id, (a, b, c) = await seed(db, 3)
    # The schema 140 ran on: opens had an id then (sql/151 dropped it).
    await db.execute("ALTER TABLE opens ADD COLUMN id bigserial")
    sent = await db.fetchval("SELECT first_sent_at FROM campaigns WHERE id = $1", campaign_id)
    events = [  # (subscriber, seconds after the send, client, country, machine_reason)
        (a, 60, None, None, "apple_mpp"),
        (a, 7300, "Apple Mail", "GB", None),
        (b, 30, None, None, "link_scanner"),
        (c, 120, "Chrome", "GB", None),
    ]
    await db.executemany(
        """INSERT INTO opens (subscriber_id, campaign_id, at, client, country, machine_reason)
           VALUES ($1, $2, $3::timestamptz + make_interval(secs => $4), $5, $6, $7)""",
        [(s, campaign_id, sent, secs, cl, co, r) for s, secs, cl, co, r in events],
    )
    await db.execute(  # the old rule: the first fetch of each was the unique open
        """UPDATE deliveries d SET first_open_at = o.first FROM (
               SELECT subscriber_id, min(at) AS first FROM opens GROUP BY subscriber_id) o
           WHERE o.subscriber_id = d.subscriber_id"""
    )
    counts = [  # (dimension, key, opens, machine_opens, unique_opens) as counted then
        ("total", "", 4, 2, 3),
        ("hour", "0", 3, 2, 3),
        ("hour", "2", 1, 0, 0),
        ("country", "unknown", 2, 2, 2),
        ("country", "GB", 2, 0, 1),
        ("client", "unknown", 2, 2, 2),
        ("client", "Apple Mail", 1, 0, 0),
        ("client", "Chrome", 1, 0, 1),
        ("reason", "apple_mpp", 1, 1, 1),
        ("reason", "link_scanner", 1, 1, 1),
        ("tracking", "personal", 4, 2, 3),
    ]
    await db.executemany(
        """INSERT INTO campaign_counts (campaign_id, dimension, key, opens, machine_opens,
                                        unique_opens) VALUES ($1, $2, $3, $4, $5, $6)""",
        [(campaign_id, *row) for row in counts],
    )
    async with db.transaction():
        await db.execute(MIGRATION.read_text(encoding="utf-8"))
    rows = await db.fetch(
        "SELECT dimension, key, unique_opens FROM campaign_counts WHERE campaign_id = $1",
        campaign_id,
    )
    assert {(r["dimension"], r["key"]): r["unique_opens"] for r in rows} == {
        ("total", ""): 2,
        ("hour", "0"): 1,
        ("hour", "2"): 1,
        ("country", "unknown"): 0,
        ("country", "GB"): 2,
        ("client", "unknown"): 0,
        ("client", "Apple Mail"): 1,
        ("client", "Chrome"): 1,
        ("reason", "apple_mpp"): 0,
        ("reason", "link_scanner"): 0,
        ("tracking", "personal"): 2,
    }
    firsts = dict(await db.fetch("SELECT subscriber_id, first_open_at FROM deliveries"))
    own = dict(
        await db.fetch("SELECT subscriber_id, at FROM opens_readable WHERE machine_reason IS NULL")
    )
    assert firsts == {a: own[a], b: None, c: own[c]}
