"""Narrow rows of `opens` (sql/161): the recorder writes numbers into lookup tables and an
`inet`, `opens_readable` shows them as text, the migration keeps the values of the rows
written before it, and the retention pass forgets user-agent strings no open uses."""

from __future__ import annotations

import time

import asyncpg

from service.db import connections as service_db
from service.db import migrations
from service.observability import Metrics
from service.privacy import erasure, retention
from service.tracking.recorder import Open, Recorder
from tests import people
from tests.pixel_support import CHROME, seed

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
READABLE = (
    "SELECT subscriber_id, campaign_id, at, ip, user_agent, client, os, country, machine_reason"
    " FROM opens_readable ORDER BY subscriber_id, campaign_id, at"
)


async def record(settings, opens: list[Open]) -> None:
    pool = await service_db.create_pool(settings)
    try:
        rec = Recorder(pool, settings, Metrics())
        futures = [rec.submit(event) for event in opens]
        rec.start()
        await rec.stop()
        assert all(f is not None and f.result() is True for f in futures)
    finally:
        await pool.close()


async def test_the_recorder_writes_narrow_rows_that_read_back_as_text(make_settings, db) -> None:
    campaign_id, (a, b, c) = await seed(db, 3)
    settings = make_settings(ip_mode="full")
    now = time.time()
    await record(
        settings,
        [
            Open(a, campaign_id, now, "81.2.69.160", CHROME),
            Open(b, campaign_id, now, "81.2.69.161", CHROME),
            Open(c, campaign_id, now, "2001:db8::1", FIREFOX),
        ],
    )
    raw = await db.fetch("SELECT * FROM opens ORDER BY subscriber_id")
    assert len(raw) == 3
    for row in raw:  # nothing in the wide text columns
        assert [row[k] for k in ("ip", "user_agent", "client", "os", "country")] == [None] * 5
        assert row["user_agent_id"] is not None and row["client_id"] is not None
    assert raw[0]["user_agent_id"] == raw[1]["user_agent_id"] != raw[2]["user_agent_id"]
    assert str(raw[2]["addr"]) == "2001:db8::1"
    assert sorted(r["agent"] for r in await db.fetch("SELECT agent FROM user_agents")) == sorted(
        [CHROME, FIREFOX]
    )
    shown = {r["subscriber_id"]: r for r in await db.fetch("SELECT * FROM opens_readable")}
    assert (shown[a]["ip"], shown[a]["user_agent"]) == ("81.2.69.160", CHROME)
    assert (shown[c]["ip"], shown[c]["user_agent"]) == ("2001:db8::1", FIREFOX)
    assert (shown[a]["client"], shown[a]["os"]) == ("Chrome", "Windows")

    # A second batch with a known and a new string: one row per string, still.
    await record(settings, [Open(a, campaign_id, now + 1, None, FIREFOX)])
    assert await db.fetchval("SELECT count(*) FROM user_agents") == 2
    again = await db.fetchval(
        "SELECT user_agent FROM opens_readable WHERE subscriber_id = $1 AND ip IS NULL", a
    )
    assert again == FIREFOX


async def test_the_export_shows_a_recorded_open_as_text_and_the_erasure_leaves_no_link(
    make_settings, db
) -> None:
    campaign_id, (a, b) = await seed(db, 2)
    await record(
        make_settings(ip_mode="full"),
        [
            Open(a, campaign_id, time.time(), "81.2.69.160", CHROME),
            Open(b, campaign_id, time.time(), "81.2.69.170", CHROME),
        ],
    )
    email = await db.fetchval("SELECT email FROM subscribers WHERE id = $1", a)
    export = await erasure.export_subscriber(db, email)
    assert export is not None
    [shown] = export["opens"]
    assert (shown["ip"], shown["user_agent"], shown["client"], shown["os"]) == (
        "81.2.69.160",
        CHROME,
        "Chrome",
        "Windows",
    )

    assert await erasure.erase_by_email(db, email)
    assert await people.find_anywhere(db, (a, email, "81.2.69.160")) == {}
    # The string stays for the other reader's open, the only row that uses it.
    agent_id = await db.fetchval("SELECT id FROM user_agents WHERE agent = $1", CHROME)
    users = await db.fetch("SELECT subscriber_id FROM opens WHERE user_agent_id = $1", agent_id)
    assert [r["subscriber_id"] for r in users] == [b]


async def test_migrating_keeps_every_row_readable_as_before(empty_db: str, tmp_path) -> None:
    before = tmp_path / "sql"
    before.mkdir()
    for migration in migrations.discover():
        if int(migration.name[:3]) < 161:
            (before / migration.name).write_text(migration.sql)
    con = await asyncpg.connect(empty_db)
    try:
        await con.execute("SET TIME ZONE 'UTC'")
        await migrations.migrate(con, before)
        await con.execute(
            "INSERT INTO opens (subscriber_id, campaign_id, at, ip, user_agent, client, os,"
            " country, machine_reason)"
            " SELECT n % 97, n % 5, now() - make_interval(days => n % 40, secs => n),"
            " CASE WHEN n % 7 > 0 THEN '192.0.2.' || n % 250 END, 'Agent/' || n % 50,"
            " 'client', 'os' || n % 3, 'DE', CASE WHEN n % 3 = 0 THEN 'soon_after_send' END"
            " FROM generate_series(1, 2000) AS n"
        )
        rows = [tuple(r) for r in await con.fetch(READABLE.replace("opens_readable", "opens"))]

        applied = await migrations.migrate(con)

        assert "161_narrow_opens.sql" in applied
        assert [tuple(r) for r in await con.fetch(READABLE)] == rows
        # The months to come get the new columns, with no statistics on the address.
        assert await con.fetchval("SELECT opens_ensure_month('2099-01-01')")
        assert (
            await con.fetchval(
                "SELECT attstattarget FROM pg_attribute"
                " WHERE attrelid = 'opens_y2099m01'::regclass AND attname = 'addr'"
            )
            == 0
        )
    finally:
        await con.close()


async def test_retention_forgets_user_agents_no_open_within_the_retention_used(
    make_settings, db
) -> None:
    campaign_id, (a,) = await seed(db, 1)
    settings = make_settings(open_retention=30 * 86400)
    await record(settings, [Open(a, campaign_id, time.time(), None, CHROME)])
    await db.execute(
        "INSERT INTO user_agents (agent, last_seen) VALUES ('Old/1.0', now() - interval '3 months')"
    )
    await retention.purge(db, settings)
    assert [r["agent"] for r in await db.fetch("SELECT agent FROM user_agents")] == [CHROME]
    shown = await db.fetchval("SELECT user_agent FROM opens_readable")
    assert shown == CHROME


async def test_the_recorder_reuses_the_ids_it_learnt_and_forgets_them_when_the_month_turns(
    make_settings, db
) -> None:
    campaign_id, (a,) = await seed(db, 1)
    settings = make_settings()
    pool = await service_db.create_pool(settings)
    try:
        rec = Recorder(pool, settings, Metrics())
        rec.start()
        for second in range(2):
            done = rec.submit(Open(a, campaign_id, time.time() + second, None, CHROME))
            assert done is not None and await done is True
        [learnt] = rec._agent_ids.values()
        assert {"Chrome", "Windows"} <= set(rec._label_ids)
        # A string last seen long ago: the cache keeps it until the month turns, then the
        # statement looks it up again and moves last_seen on.
        await db.execute("UPDATE user_agents SET last_seen = '2000-01-01'")
        rec._agent_month = "2000-01"
        done = rec.submit(Open(a, campaign_id, time.time() + 2, None, CHROME))
        assert done is not None and await done is True
        await rec.stop()
    finally:
        await pool.close()
    ids = [r["user_agent_id"] for r in await db.fetch("SELECT user_agent_id FROM opens")]
    assert ids == [learnt] * 3
    clients = await db.fetch("SELECT client FROM opens_readable")
    assert [r["client"] for r in clients] == ["Chrome"] * 3
    assert await db.fetchval("SELECT last_seen > '2000-01-01' FROM user_agents")
