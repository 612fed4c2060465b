"""Monthly partitions of `opens`: the migration of a table with rows in it, the default
partition that keeps an open whose month has no partition, and whole months dropped."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from service.db import migrations
from service.privacy import retention
from tests import people

DAY = 86400


def month_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date().replace(day=1)


def month_table(month: date) -> str:
    return f"opens_y{month:%Y}m{month:%m}"


async def partition_of(db: asyncpg.Connection, marker: str) -> str:
    return await db.fetchval("SELECT tableoid::regclass::text FROM opens WHERE os = $1", marker)


OPENS = (
    "SELECT subscriber_id, campaign_id, at, ip, user_agent, client, os, country, machine_reason"
    " FROM opens ORDER BY subscriber_id, campaign_id, at"
)


async def test_migrating_a_table_with_rows_keeps_every_row_and_partitions_it(
    empty_db: str, tmp_path, settings
) -> None:
    # The schema just before the partitions, then up to them: later migrations (which
    # may change the rows' shape) are not this test's.
    before, upto = tmp_path / "before", tmp_path / "upto"
    before.mkdir()
    upto.mkdir()
    for migration in migrations.discover():
        number = int(migration.name[:3])
        if number < 148:
            (before / migration.name).write_text(migration.sql)
        if number <= 151:
            (upto / migration.name).write_text(migration.sql)
    con = await asyncpg.connect(empty_db)
    try:
        await con.execute("SET TIME ZONE 'UTC'")
        await migrations.migrate(con, before)
        await con.execute(
            "INSERT INTO opens (subscriber_id, campaign_id, at, ip, user_agent, client, os,"
            " country, machine_reason)"
            " SELECT n % 97, n % 5, now() - make_interval(days => n % 800, secs => n),"
            " '192.0.2.' || n % 250, 'Agent/' || n, 'client', 'os' || n, 'DE',"
            " CASE WHEN n % 3 = 0 THEN 'soon_after_send' END"
            " FROM generate_series(1, 3000) AS n"
        )
        rows = [tuple(r) for r in await con.fetch(OPENS)]

        applied = await migrations.migrate(con, upto)

        assert [name[:3] for name in applied][:4] == ["148", "149", "150", "151"]
        assert [tuple(r) for r in await con.fetch(OPENS)] == rows
        assert await con.fetchval("SELECT relkind FROM pg_class WHERE relname = 'opens'") == b"p"
        assert (
            await con.fetchval("SELECT count(*) FROM opens_legacy") == 3000
        )  # attached, not copied
        indexes = {
            r["indexdef"].split(" USING ")[1]
            for r in await con.fetch(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'opens_legacy'"
            )
        }
        assert indexes == {"btree (subscriber_id)", "brin (at)"}
        assert (
            await con.fetchval(
                "SELECT count(*) FROM information_schema.columns"
                " WHERE table_name = 'opens' AND column_name = 'id'"
            )
            == 0
        )
        # The pixel's insert goes on, now and after the old table's range.
        await con.execute(
            "INSERT INTO opens (subscriber_id, campaign_id, at, ip, user_agent, client, os,"
            " country, machine_reason) VALUES (1, 1, now(), NULL, NULL, NULL, 'now', NULL, NULL),"
            " (1, 1, now() + interval '70 days', NULL, NULL, NULL, 'later', NULL, NULL)"
        )
        assert await partition_of(con, "now") == "opens_legacy"
        later = month_of(await con.fetchval("SELECT now() + interval '70 days'"))
        assert await partition_of(con, "later") == month_table(later)
        # Retention deletes the old rows from the old table, by slices of time.
        old = await con.fetchval(
            "SELECT count(*) FROM opens WHERE at < now() - make_interval(secs => $1)",
            float(settings.open_retention),
        )
        assert old > 0
        await migrations.migrate(con)  # the rest, as the deploy runs them before the pass
        counts = await retention.purge(con, settings)
        assert counts["opens"] == old
        assert await con.fetchval("SELECT count(*) FROM opens") == 3000 + 2 - old
    finally:
        await con.close()


async def test_an_open_in_a_month_without_partition_is_kept_and_moved_to_its_month(
    db, settings, monkeypatch
) -> None:
    """The default partition takes it; the pass makes the month and moves it there."""
    campaign = await people.add_campaign(db)
    reader = await people.add_subscriber(db, "ahead@example.org")
    far = await db.fetchval("SELECT now() + interval '5 months'")
    assert await db.fetchval("SELECT to_regclass($1)", month_table(month_of(far))) is None
    await db.execute(
        "INSERT INTO opens (subscriber_id, campaign_id, at, os) VALUES ($1, $2, $3, 'far')",
        reader,
        campaign,
        far,
    )
    assert await partition_of(db, "far") == "opens_default"

    monkeypatch.setattr(retention, "MONTHS_AHEAD", 6)
    assert (await retention.purge(db, settings))["opens"] == 0

    assert await partition_of(db, "far") == month_table(month_of(far))
    assert await db.fetchval("SELECT count(*) FROM opens_default") == 0


async def test_whole_months_past_the_retention_are_dropped_and_the_boundary_month_deleted_from(
    db, settings
) -> None:
    s = settings.replace(open_retention=395 * DAY)
    campaign = await people.add_campaign(db)
    reader = await people.add_subscriber(db, "old@example.org")
    now = await db.fetchval("SELECT now()")
    boundary = month_of(now - timedelta(seconds=s.open_retention))
    for month in (date(2020, 1, 1), boundary):
        assert await db.fetchval("SELECT opens_ensure_month($1)", month)
    ages = [900 * DAY, 900 * DAY + 5, 396 * DAY, 394 * DAY]
    for age in ages:
        await db.execute(
            "INSERT INTO opens (subscriber_id, campaign_id, at)"
            " VALUES ($1, $2, $3::timestamptz - make_interval(secs => $4))",
            reader,
            campaign,
            now,
            float(age),
        )
    # 900 days ago lies before every partition made here: those two are in the default.
    await db.execute(
        "INSERT INTO opens (subscriber_id, campaign_id, at) VALUES ($1, $2, '2020-01-15')",
        reader,
        campaign,
    )

    counts = await retention.purge(db, s)

    assert counts["opens"] == 4
    assert await db.fetchval("SELECT to_regclass('opens_y2020m01')") is None
    left = await db.fetchval("SELECT $1::timestamptz - at FROM opens", now)
    assert left == timedelta(days=394)


async def test_a_second_migration_run_finds_nothing_to_do_and_the_function_refuses_nonsense(
    db,
) -> None:
    assert await migrations.migrate(db) == []
    with pytest.raises(asyncpg.RaiseError, match="not the first day"):
        await db.fetchval("SELECT opens_ensure_month('2030-01-02')")
    with pytest.raises(asyncpg.RaiseError, match="not a month partition"):
        await db.fetchval("SELECT opens_drop_month('opens_default')")
    with pytest.raises(asyncpg.RaiseError, match="not a month partition"):
        await db.fetchval("SELECT opens_drop_month('subscribers')")


async def test_a_month_whose_lock_is_busy_is_left_for_the_next_pass(
    db, database_url, settings, caplog
) -> None:
    """DROP waits at most DDL_LOCK_TIMEOUT behind a long reader of `opens` (the pixel's
    inserts would queue behind the waiting DROP), then the pass goes on without it."""
    caplog.set_level(logging.WARNING, logger="newsletter.retention")
    assert await db.fetchval("SELECT opens_ensure_month('2020-01-01')")
    await db.execute(
        "INSERT INTO opens (subscriber_id, campaign_id, at) VALUES (1, 1, '2020-01-15')"
    )
    reader = await asyncpg.connect(database_url)
    try:
        async with reader.transaction():
            await reader.fetchval("SELECT count(*) FROM opens")  # holds ACCESS SHARE
            counts = await retention.purge(db, settings)
            assert await db.fetchval("SELECT to_regclass('opens_y2020m01')") is not None
            assert any("partition not dropped" in r.getMessage() for r in caplog.records)
            # Its rows went all the same, row by row (a lock the reader does not block).
            assert counts["opens"] == 1
            assert await db.fetchval("SELECT count(*) FROM opens") == 0
    finally:
        await reader.close()
    assert (await retention.purge(db, settings))["opens"] == 0
    assert await db.fetchval("SELECT to_regclass('opens_y2020m01')") is None


async def test_a_month_is_dropped_while_the_current_month_is_being_vacuumed(
    db, database_url, settings, caplog
) -> None:
    """Dropping a month locks that month and then the table alone, never the other
    months: with autovacuum on the month the pixel writes to, the drop used to wait for
    it (`LOCK TABLE opens` takes every partition), the pixel's inserts queued behind,
    and after the lock timeout the month was left."""
    caplog.set_level(logging.WARNING, logger="newsletter.retention")
    assert await db.fetchval("SELECT opens_ensure_month('2020-01-01')")
    await db.execute(
        "INSERT INTO opens (subscriber_id, campaign_id, at) VALUES (1, 1, '2020-01-15')"
    )
    current = month_table(month_of(await db.fetchval("SELECT now()")))
    vacuum = await asyncpg.connect(database_url)  # holds what autovacuum holds
    try:
        async with vacuum.transaction():
            await vacuum.execute(f"LOCK TABLE {current} IN SHARE UPDATE EXCLUSIVE MODE")
            counts = await retention.purge(db, settings)
            assert counts["opens"] == 1
            assert await db.fetchval("SELECT to_regclass('opens_y2020m01')") is None
            assert not any("not dropped" in r.getMessage() for r in caplog.records)
    finally:
        await vacuum.close()


async def test_a_drop_waiting_for_the_table_gives_way_to_an_erasure_that_holds_it(
    db, database_url, settings
) -> None:
    """The drop holds its month and waits for the table; an erasure holds the table and
    waits for every month: the drop gives up after TABLE_LOCK_TIMEOUT, before PostgreSQL's
    deadlock check could abort the erasure, and the erasure goes through."""
    assert await db.fetchval("SELECT opens_ensure_month('2020-01-01')")
    await db.execute(
        "INSERT INTO opens (subscriber_id, campaign_id, at) VALUES (1, 1, '2020-01-15')"
    )
    eraser = await asyncpg.connect(database_url)
    dropper = await asyncpg.connect(database_url)
    try:
        erasing = eraser.transaction()
        await erasing.start()
        await eraser.execute("LOCK TABLE ONLY opens IN ROW EXCLUSIVE MODE")  # as a DELETE does
        dropping = dropper.transaction()
        await dropping.start()
        await dropper.execute("SET LOCAL lock_timeout = '2s'")
        await dropper.execute("LOCK TABLE opens_y2020m01 IN ACCESS EXCLUSIVE MODE")
        # The erasure's DELETE now waits for the month the drop holds ...
        delete = asyncio.ensure_future(eraser.execute("DELETE FROM opens WHERE subscriber_id = 1"))
        await asyncio.sleep(0.2)
        # ... and the drop's next step waits for the table the erasure holds.
        with pytest.raises(asyncpg.LockNotAvailableError):
            await dropper.fetchval(
                "SELECT opens_drop_month('opens_y2020m01'::regclass, $1)",
                retention.TABLE_LOCK_TIMEOUT,
            )
        await dropping.rollback()
        assert await delete == "DELETE 1"
        await erasing.commit()
    finally:
        await eraser.close()
        await dropper.close()
