"""Retention with the clock moved: rows are given timestamps in the past, nobody sleeps."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import timedelta

import asyncpg
import pytest

from service.privacy import retention
from tests import people, support

DAY = 86400


async def backdate_signup(db, subscriber_id: int, seconds: float) -> None:
    await db.execute(
        "UPDATE subscribers SET signup_at = now() - make_interval(secs => $2),"
        " created_at = now() - make_interval(secs => $2) WHERE id = $1",
        subscriber_id,
        float(seconds),
    )


async def add_open(db, subscriber_id: int, campaign_id: int, age: float) -> None:
    await db.execute(
        "INSERT INTO opens (subscriber_id, campaign_id, at, ip, user_agent)"
        " VALUES ($1, $2, now() - make_interval(secs => $3), '192.0.2.0', 'Agent/1')",
        subscriber_id,
        campaign_id,
        float(age),
    )


async def add_delivery(db, subscriber_id: int, campaign_id: int, age: float) -> None:
    await db.execute(
        "INSERT INTO deliveries (campaign_id, subscriber_id, queued_at, sent_at)"
        " VALUES ($1, $2, now() - make_interval(secs => $3), now() - make_interval(secs => $3))",
        campaign_id,
        subscriber_id,
        float(age),
    )


async def add_rate_limit(db, key: bytes, age: float) -> None:
    await db.execute(
        "INSERT INTO rate_limits (scope, key, window_start, hits)"
        " VALUES ('ip', $1, now() - make_interval(secs => $2), 1)",
        key,
        float(age),
    )


async def test_expired_pending_signups_are_deleted_with_their_queued_mail(db, settings) -> None:
    old = await people.add_subscriber(db, "old@example.org", status="pending")
    fresh = await people.add_subscriber(db, "fresh@example.org", status="pending")
    long_active = await people.add_subscriber(db, "loyal@example.org")
    await backdate_signup(db, old, settings.confirm_max_age + 60)
    await backdate_signup(db, fresh, settings.confirm_max_age - 60)
    await backdate_signup(db, long_active, 10 * 365 * DAY)
    await db.execute(
        "INSERT INTO consent_events (subscriber_id, kind, ip) VALUES ($1, 'signup', '192.0.2.0')",
        old,
    )
    await db.execute("INSERT INTO outbox (kind, subscriber_id) VALUES ('confirm', $1)", old)

    counts = await retention.purge(db, settings)

    assert counts["pending_signups"] == 1
    remaining = {r["email"] for r in await db.fetch("SELECT email FROM subscribers")}
    assert remaining == {"fresh@example.org", "loyal@example.org"}
    assert await db.fetchval("SELECT count(*) FROM consent_events") == 0
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0
    assert await people.find_anywhere(db, ("old@example.org",)) == {}


async def test_opens_and_deliveries_older_than_the_retention_are_deleted(db, settings) -> None:
    s = settings.replace(open_retention=395 * DAY)
    campaign = await people.add_campaign(db)
    reader = await people.add_subscriber(db, "reader@example.org")
    await add_open(db, reader, campaign, 396 * DAY)
    await add_open(db, reader, campaign, 394 * DAY)
    other_campaign = await people.add_campaign(db, "recent")
    await add_delivery(db, reader, campaign, 400 * DAY)
    await add_delivery(db, reader, other_campaign, 30 * DAY)
    await db.execute(
        "UPDATE campaigns SET sent = 7 WHERE id = $1", campaign
    )  # anonymous counters stay

    counts = await retention.purge(db, s)

    assert (counts["opens"], counts["deliveries"]) == (1, 1)
    assert await db.fetchval("SELECT count(*) FROM opens") == 1
    assert [r["campaign_id"] for r in await db.fetch("SELECT campaign_id FROM deliveries")] == [
        other_campaign
    ]
    assert await db.fetchval("SELECT sent FROM campaigns WHERE id = $1", campaign) == 7
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1


async def test_soft_bounces_older_than_the_window_are_deleted_and_recent_ones_kept(
    db, settings
) -> None:
    """A soft bounce counts towards an erasure only within BOUNCE_SOFT_WINDOW; after it,
    the row (personal: who bounced, when) is needed no more, even if no new bounce of
    the person ever arrives."""
    s = settings.replace(bounce_soft_window=15 * DAY)
    reader = await people.add_subscriber(db, "reader@example.org")
    other = await people.add_subscriber(db, "other@example.org")
    campaign = await people.add_campaign(db)
    for subscriber_id, campaign_id, age in (
        (reader, 0, 16 * DAY),
        (reader, campaign, 14 * DAY),
        (other, campaign, 15 * DAY + 60),
    ):
        await db.execute(
            "INSERT INTO soft_bounces (subscriber_id, campaign_id, at)"
            " VALUES ($1, $2, now() - make_interval(secs => $3))",
            subscriber_id,
            campaign_id,
            float(age),
        )

    counts = await retention.purge(db, s)

    assert counts["soft_bounces"] == 2
    rows = await db.fetch("SELECT subscriber_id, campaign_id FROM soft_bounces")
    assert [(r["subscriber_id"], r["campaign_id"]) for r in rows] == [(reader, campaign)]
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 2


async def test_a_delivery_whose_email_is_still_queued_is_kept(db, settings) -> None:
    campaign = await people.add_campaign(db)
    reader = await people.add_subscriber(db, "slow@example.org")
    await add_delivery(db, reader, campaign, 500 * DAY)
    await db.execute(
        "INSERT INTO outbox (kind, subscriber_id, campaign_id, run_at)"
        " VALUES ('campaign', $1, $2, now() + interval '1 day')",
        reader,
        campaign,
    )
    assert (await retention.purge(db, settings))["deliveries"] == 0
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 1


async def test_stale_rate_limit_rows_are_deleted_and_current_ones_kept(db, settings) -> None:
    await add_rate_limit(db, b"old-window", 3 * DAY)
    await add_rate_limit(db, b"this-window", 600)
    assert (await retention.purge(db, settings))["rate_limits"] == 1
    assert [bytes(r["key"]) for r in await db.fetch("SELECT key FROM rate_limits")] == [
        b"this-window"
    ]


async def test_large_backlogs_are_deleted_in_batches_within_one_pass(db, settings) -> None:
    campaign = await people.add_campaign(db)
    reader = await people.add_subscriber(db, "busy@example.org")
    total = retention.BATCH * 2 + 17
    await db.execute(
        "INSERT INTO opens (subscriber_id, campaign_id, at)"
        " SELECT $1, $2, now() - interval '500 days' FROM generate_series(1, $3)",
        reader,
        campaign,
        total,
    )
    assert (await retention.purge(db, settings))["opens"] == total
    assert await db.fetchval("SELECT count(*) FROM opens") == 0


async def test_a_second_pass_while_one_runs_skips_and_deletes_nothing(
    db, database_url, settings
) -> None:
    old = await people.add_subscriber(db, "expired@example.org", status="pending")
    await backdate_signup(db, old, settings.confirm_max_age + 60)
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", retention.ADVISORY_LOCK_ID)
            assert await retention.purge(db, settings) == {"skipped": 1}
            assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    finally:
        await holder.close()
    assert (await retention.purge(db, settings))["pending_signups"] == 1


async def test_concurrent_passes_from_many_replicas_delete_each_row_once(
    db, database_url, settings
) -> None:
    campaign = await people.add_campaign(db)
    reader = await people.add_subscriber(db, "many@example.org")
    await db.execute(
        "INSERT INTO opens (subscriber_id, campaign_id, at)"
        " SELECT $1, $2, now() - interval '500 days' FROM generate_series(1, 3000)",
        reader,
        campaign,
    )
    connections = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(retention.purge(c, settings) for c in connections))
    finally:
        for con in connections:
            await con.close()
    assert sum(r.get("opens", 0) for r in results) == 3000
    assert sum(1 for r in results if "skipped" not in r) >= 1
    assert await db.fetchval("SELECT count(*) FROM opens") == 0


async def test_the_periodic_task_purges_and_counts_in_metrics(app_factory, db) -> None:
    old = await people.add_subscriber(db, "periodic@example.org", status="pending")
    await backdate_signup(db, old, 30 * DAY)
    async with app_factory(purge_interval=0.2) as (app, _client):
        deadline = time.monotonic() + 10
        while await db.fetchval("SELECT count(*) FROM subscribers"):
            assert time.monotonic() < deadline, "the periodic purge did not run"
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 5
        while not app.state.metrics.purged.labels("pending_signups")._value.get():
            assert time.monotonic() < deadline, "the purge was not counted"
            await asyncio.sleep(0.05)


async def test_the_periodic_task_survives_a_failing_pass(
    app_factory, db, database_url, caplog
) -> None:
    """A pass that fails (here it times out on a locked table) is logged, and the next
    pass runs as usual."""
    caplog.set_level(logging.WARNING, logger="newsletter.retention")
    old = await people.add_subscriber(db, "later@example.org", status="pending")
    await backdate_signup(db, old, 30 * DAY)
    blocker = await asyncpg.connect(database_url)
    try:
        async with app_factory(purge_interval=0.2, db_command_timeout=0.3) as (_app, _client):
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE subscribers IN ACCESS EXCLUSIVE MODE")
                deadline = time.monotonic() + 10
                while not any(r.getMessage() == "purge failed" for r in caplog.records):
                    assert time.monotonic() < deadline, "no pass failed on the locked table"
                    await asyncio.sleep(0.05)
            task = next(t for t in asyncio.all_tasks() if t.get_name() == "retention")
            assert not task.done()
            deadline = time.monotonic() + 10
            while await db.fetchval("SELECT count(*) FROM subscribers"):
                assert time.monotonic() < deadline, "no pass succeeded after the failures"
                await asyncio.sleep(0.05)
    finally:
        await blocker.close()


@pytest.mark.slow
def test_newsletter_purge_command_runs_one_pass_and_prints_the_counts(database_url) -> None:
    env = support.base_env(database_url, "smtp://127.0.0.1:25")
    result = support.run_cli(env, "purge")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(counts) == {
        "pending_signups",
        "opens",
        "deliveries",
        "rate_limits",
        "erasure_journal",
        "manage_links",
        "address_changes",
        "soft_bounces",
        "altcha_spent",
    }


async def add_expired_signups(db, settings, count: int) -> list[int]:
    ids = []
    for n in range(count):
        sid = await people.add_subscriber(db, f"expired{n}@example.org", status="pending")
        await backdate_signup(db, sid, settings.confirm_max_age + 3600 - n)  # oldest first
        ids.append(sid)
    return ids


async def test_a_pass_that_fails_half_way_keeps_the_batches_it_committed(
    db, settings, monkeypatch
) -> None:
    """Per-batch commits: a killed or failing pass keeps its progress, and the next pass
    does only what is left (one transaction per pass lost all of it, every time)."""
    monkeypatch.setattr(retention, "BATCH", 10)
    ids = await add_expired_signups(db, settings, 25)
    await db.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
    )
    await db.execute(
        "CREATE TRIGGER refuse BEFORE DELETE ON subscribers FOR EACH ROW"
        f" WHEN (OLD.id = {ids[-1]}) EXECUTE FUNCTION refuse()"
    )
    with pytest.raises(asyncpg.RaiseError, match="refused"):
        await retention.purge(db, settings)
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 5  # 2 batches of 10 gone

    await db.execute("DROP TRIGGER refuse ON subscribers")
    assert (await retention.purge(db, settings))["pending_signups"] == 5


async def test_a_failing_pass_keeps_the_slices_of_opens_it_deleted(db, settings) -> None:
    campaign = await people.add_campaign(db)
    reader = await people.add_subscriber(db, "sliced@example.org")
    for days in (420, 410, 400):
        await db.execute(
            "INSERT INTO opens (subscriber_id, campaign_id, at, os)"
            " SELECT $1, $2, now() - make_interval(days => $3), $4 FROM generate_series(1, 3)",
            reader,
            campaign,
            days,
            str(days),
        )
    await db.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
    )
    await db.execute(
        "CREATE TRIGGER refuse BEFORE DELETE ON opens_default FOR EACH ROW"
        " WHEN (OLD.os = '400') EXECUTE FUNCTION refuse()"
    )
    with pytest.raises(asyncpg.RaiseError, match="refused"):
        await retention.purge(db, settings)
    assert sorted(r["os"] for r in await db.fetch("SELECT os FROM opens")) == ["400"] * 3
    progress = await db.fetchval("SELECT done_before FROM retention_progress WHERE what = 'opens'")
    assert await db.fetchval("SELECT now() - $1::timestamptz", progress) > timedelta(days=400)

    await db.execute("DROP TRIGGER refuse ON opens_default")
    assert (await retention.purge(db, settings))["opens"] == 3


async def test_a_second_pass_skips_while_the_first_is_between_its_commits(
    db, database_url, settings, monkeypatch
) -> None:
    """The pass commits batch by batch, and the lock that keeps a second replica out must
    outlast each of those transactions: a session lock."""
    monkeypatch.setattr(retention, "BATCH", 10)
    ids = await add_expired_signups(db, settings, 25)
    first, second, blocker = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("SELECT 1 FROM subscribers WHERE id = $1 FOR UPDATE", ids[15])
        running = asyncio.ensure_future(retention.purge(first, settings))
        await support.lock_waited_on(db, first.get_server_pid())
        assert await db.fetchval("SELECT count(*) FROM subscribers") == 15  # batch 1 committed

        assert await retention.purge(second, settings) == {"skipped": 1}

        await blocking.commit()
        counts = await running
        assert counts["pending_signups"] == 25
        assert await db.fetchval("SELECT count(*) FROM subscribers") == 0
        assert (await retention.purge(second, settings))["pending_signups"] == 0
    finally:
        for con in (first, second, blocker):
            await con.close()
