import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import replace

import asyncpg
import dkim as dkimpy
import pytest

from service.campaigns import mail, store
from service.mail import messages
from service.outbox import kinds, sender, wakeup
from tests import people, support
from tests.conftest import running
from tests.signup_helpers import outbox_empty, subscribe, wait_until


class SlowSink(support.SmtpSink):
    """Holds every DATA command until `release` is set, to look inside an in-flight send."""

    def __init__(self) -> None:
        super().__init__()
        self.in_data = asyncio.Event()
        self.release = asyncio.Event()

    async def handle_DATA(self, server, session, envelope) -> str:
        self.in_data.set()
        await self.release.wait()
        return await super().handle_DATA(server, session, envelope)


async def _add_pending(db: asyncpg.Connection, count: int) -> None:
    await db.execute(
        "WITH s AS (INSERT INTO subscribers (email) SELECT 'p' || i || '@example.com'"
        " FROM generate_series(1, $1) i RETURNING id)"
        " INSERT INTO outbox (kind, subscriber_id) SELECT 'confirm', id FROM s",
        count,
    )


async def _async(value: object) -> object:
    """A plain value as the awaitable wait_until expects."""
    return value


def _metric(app, name: str, **labels: str) -> float:
    return app.state.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_mail_queued_while_the_relay_is_down_goes_out_once_it_is_back(
    app_factory, db, smtp, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="newsletter.outbox")
    await smtp.stop()
    async with app_factory() as (_app, client):
        assert (await subscribe(client, "down@example.com")).status_code == 200
        await wait_until(  # the worker tried the relay and found it down
            lambda: _async(any(r.getMessage() == "smtp relay unavailable" for r in caplog.records))
        )
        assert smtp.messages == []
        job = await db.fetchrow("SELECT attempts FROM outbox")
        assert job["attempts"] == 0  # an unreachable relay uses up no attempts
        await smtp.start()
        [message] = await smtp.wait_for(1)
        await wait_until(lambda: outbox_empty(db))
    assert message.to == "down@example.com"


async def test_transient_4xx_is_retried_with_backoff_and_then_delivered(
    app, client, db, smtp
) -> None:
    smtp.fail_next("452 4.2.2 mailbox full", times=2)  # the mailbox's, not a throttle
    await subscribe(client, "retry@example.com")
    [message] = await smtp.wait_for(1)
    assert message.to == "retry@example.com"
    await wait_until(lambda: outbox_empty(db))
    assert _metric(app, "emails_failed_total", kind="confirm", outcome="retried") == 2
    assert _metric(app, "emails_sent_total", kind="confirm") == 1


async def test_retry_records_attempts_error_and_a_later_run_at(app_factory, db, smtp) -> None:
    smtp.fail_next("452 4.2.2 mailbox full")
    async with app_factory(outbox_backoff_base=60, outbox_backoff_max=120) as (_app, client):
        await subscribe(client, "later@example.com")
        job = await wait_until(
            lambda: db.fetchrow(
                "SELECT attempts, last_error, run_at - now() AS wait FROM outbox WHERE attempts > 0"
            )
        )
    assert job["attempts"] == 1
    assert job["last_error"].startswith("452")
    assert 25 < job["wait"].total_seconds() <= 60  # jittered into the upper half of 60 s
    assert "later@example.com" not in job["last_error"]


async def test_permanent_5xx_is_retried_then_dropped_with_a_metric_and_a_log_line_without_the_address(
    app_factory, db, smtp, caplog
) -> None:
    """A 5xx at DATA is not a refusal of the recipient's mailbox (issue 24): the job is
    retried like any failure, and dropped when its attempts are used up."""
    caplog.set_level(logging.DEBUG)
    smtp.fail_next("550 5.1.1 no such user", times=2)
    async with app_factory(outbox_max_attempts=2) as (app, client):
        await subscribe(client, "nobody@example.com")
        await wait_until(lambda: outbox_empty(db))  # deleted after the second answer
        assert _metric(app, "emails_failed_total", kind="confirm", outcome="gave_up") == 1
    assert smtp.messages == []
    dropped = [r for r in caplog.records if r.getMessage().startswith("email dropped")]
    assert dropped and dropped[0].smtp_code == 550
    for record in caplog.records:
        if not record.name.startswith("newsletter"):
            continue  # the SMTP sink's own debug log
        assert "nobody@example.com" not in record.getMessage()
        assert "nobody@example.com" not in str(record.__dict__)
    assert await db.fetchval("SELECT status FROM subscribers") == "pending"


async def test_transient_failures_give_up_after_the_maximum_attempts(app_factory, db, smtp) -> None:
    smtp.fail_next("452 4.2.2 mailbox full", times=3)  # 421 is a throttle: no attempt used
    async with app_factory(outbox_max_attempts=3) as (app, client):
        await subscribe(client, "busy@example.com")
        await wait_until(lambda: outbox_empty(db))
        assert _metric(app, "emails_failed_total", kind="confirm", outcome="gave_up") == 1
    assert smtp.messages == []


async def test_two_app_instances_on_one_database_never_send_a_job_twice(
    make_settings, db, smtp
) -> None:
    await _add_pending(db, 60)
    settings = make_settings(outbox_poll_interval=0.05)
    async with running(settings) as (first, _c1), running(settings) as (second, _c2):
        await smtp.wait_for(60, timeout=20)
        await wait_until(lambda: outbox_empty(db))  # no job left that could send again
        sent = [_metric(app, "emails_sent_total", kind="confirm") for app in (first, second)]
    counts = Counter(m.to for m in smtp.messages)
    assert len(counts) == 60 and set(counts.values()) == {1}
    assert sum(sent) == 60


async def test_one_smtp_connection_is_kept_open_between_jobs(app_factory, db, smtp) -> None:
    async with app_factory(outbox_concurrency=1) as (_app, client):
        for i in range(5):
            await subscribe(client, f"c{i}@example.com")
        await smtp.wait_for(5)
    assert smtp.connections == 1


async def test_parallel_lanes_each_keep_one_connection_and_send_each_job_once(
    app_factory, db, smtp
) -> None:
    await _add_pending(db, 40)
    async with app_factory(outbox_concurrency=4, outbox_poll_interval=0.05) as (_app, _client):
        await smtp.wait_for(40, timeout=20)
        await wait_until(lambda: outbox_empty(db))
    counts = Counter(m.to for m in smtp.messages)
    assert len(counts) == 40 and set(counts.values()) == {1}
    assert 1 <= smtp.connections <= 4


async def test_confirmation_mail_is_sent_before_queued_campaign_mail(app_factory, db, smtp) -> None:
    campaign = await db.fetchval(
        "INSERT INTO campaigns (name, subject, html, text) VALUES ('c', 's', 'h', 't') RETURNING id"
    )
    active = await db.fetch(
        "INSERT INTO subscribers (email, status) SELECT 'a' || g || '@example.com', 'active'"
        " FROM generate_series(1, 30) g RETURNING id"
    )
    await db.execute(
        "INSERT INTO deliveries (campaign_id, subscriber_id) SELECT $1, unnest($2::bigint[])",
        campaign,
        [r["id"] for r in active],
    )
    await db.execute(
        "INSERT INTO outbox (kind, subscriber_id, campaign_id, run_at)"
        " SELECT 'campaign', unnest($2::bigint[]), $1, now() - interval '1 minute'",
        campaign,
        [r["id"] for r in active],
    )
    pending = await db.fetchval(
        "INSERT INTO subscribers (email) VALUES ('waiting@example.com') RETURNING id"
    )
    await db.execute("INSERT INTO outbox (kind, subscriber_id) VALUES ('confirm', $1)", pending)
    async with app_factory(outbox_concurrency=1) as (_app, _client):
        await smtp.wait_for(31, timeout=20)
    assert smtp.messages[0].to == "waiting@example.com"


async def test_notify_wakes_the_worker_without_waiting_for_the_poll(app_factory, db, smtp) -> None:
    """With an hour's poll interval, only the NOTIFY can bring the email in time."""
    async with app_factory(outbox_poll_interval=3600) as (_app, client):
        await wait_until(  # the listener's LISTEN is in, and the worker is idle
            lambda: db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"
                " AND datname = current_database()"
            )
        )
        await subscribe(client, "fast@example.com")
        await smtp.wait_for(1, timeout=60)


async def test_polling_finds_jobs_queued_without_notify(app_factory, db, smtp) -> None:
    async with app_factory(outbox_poll_interval=0.1) as (_app, _client):
        await _add_pending(db, 1)  # no NOTIFY
        await smtp.wait_for(1, timeout=5)


async def test_an_idle_worker_sleeps_for_the_poll_interval_not_in_a_tight_loop(
    app_factory, db, smtp, monkeypatch
) -> None:
    """An empty outbox once read as "a job is due now" (greatest(0, NULL) is 0), so every
    lane of every replica polled the database without pause."""
    naps: list[float] = []
    sleep = wakeup.Wakeup.sleep

    async def recorded(self, seconds: float) -> None:
        naps.append(seconds)
        await sleep(self, seconds)

    monkeypatch.setattr(wakeup.Wakeup, "sleep", recorded)  # no event receivers here
    async with app_factory(outbox_poll_interval=30, outbox_concurrency=2) as (app, _client):
        worker = app.state.outbox
        assert await worker._idle_delay() == 30
        await wait_until(lambda: _async(len(naps) >= 2))  # each lane found nothing and slept
    assert naps and set(naps) == {30}  # the bug asked for 0 s, every time


async def test_the_idle_delay_is_the_time_until_the_next_job_is_due(app_factory, db, smtp) -> None:
    async with app_factory(outbox_poll_interval=30) as (app, _client):
        sub = await db.fetchval(
            "INSERT INTO subscribers (email) VALUES ('d@example.com') RETURNING id"
        )
        await db.execute(
            "INSERT INTO outbox (kind, subscriber_id, run_at) VALUES ('confirm', $1, now() + interval '10 s')",
            sub,
        )
        assert 8 < await app.state.outbox._idle_delay() <= 10
        await db.execute("UPDATE outbox SET run_at = now() - interval '1 minute'")
        assert await app.state.outbox._idle_delay() == 0


@pytest.fixture
async def slow_sink():
    sink = SlowSink()
    await sink.start()
    yield sink
    sink.release.set()
    await sink.stop()


async def test_claimed_job_stays_locked_during_the_send_and_no_subscriber_row_is_locked(
    make_settings, db, slow_sink
) -> None:
    sink = slow_sink
    async with running(make_settings(smtp_url=sink.url)) as (_app, client):
        await subscribe(client, "slow@example.com")
        await asyncio.wait_for(sink.in_data.wait(), 10)
        async with db.transaction():
            with pytest.raises(asyncpg.LockNotAvailableError):
                await db.execute("SELECT 1 FROM outbox FOR UPDATE NOWAIT")
        async with db.transaction():
            await db.execute("SELECT 1 FROM subscribers FOR UPDATE NOWAIT")
        sink.release.set()
        await sink.wait_for(1)
        await wait_until(lambda: outbox_empty(db))


async def test_erasure_that_deletes_outbox_rows_first_waits_for_the_send_in_flight(
    make_settings, db, slow_sink, database_url
) -> None:
    sink = slow_sink
    async with running(make_settings(smtp_url=sink.url)) as (_app, client):
        await subscribe(client, "erase@example.com")
        await asyncio.wait_for(sink.in_data.wait(), 10)

        async def erase() -> None:
            async with db.transaction():
                await db.execute("DELETE FROM outbox")
                await db.execute("DELETE FROM subscribers")

        erasure = asyncio.create_task(erase())
        probe = await asyncpg.connect(database_url)
        try:
            await support.lock_waited_on(probe, db.get_server_pid())
        finally:
            await probe.close()
        assert not erasure.done()  # blocked behind the claimed job
        sink.release.set()
        await asyncio.wait_for(erasure, 10)  # commits after the send's 250
    assert len(sink.messages) == 1
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


async def _campaign_job(db: asyncpg.Connection, email: str) -> tuple[int, int]:
    campaign_id = await db.fetchval(
        "INSERT INTO campaigns (name, subject, html, text) VALUES"
        " ('c', 'Spring news', '<p>news</p>', 'news') RETURNING id"
    )
    subscriber_id = await db.fetchval(
        "INSERT INTO subscribers (email, status, confirmed_at) VALUES ($1, 'active', now())"
        " RETURNING id",
        email,
    )
    await db.execute(
        "INSERT INTO deliveries (campaign_id, subscriber_id) VALUES ($1, $2)",
        campaign_id,
        subscriber_id,
    )
    await db.execute("UPDATE campaigns SET recipients = recipients + 1 WHERE id = $1", campaign_id)
    await db.execute(
        "INSERT INTO outbox (kind, subscriber_id, campaign_id) VALUES ('campaign', $1, $2)",
        subscriber_id,
        campaign_id,
    )
    return campaign_id, subscriber_id


async def _tiny_campaign_composer(con, job, ctx):
    row = await con.fetchrow(
        "SELECT s.email, c.subject, c.text, c.html FROM subscribers s, campaigns c"
        " WHERE s.id = $1 AND c.id = $2",
        job["subscriber_id"],
        job["campaign_id"],
    )
    return messages.build_message(
        ctx.settings,
        to=row["email"],
        subject=row["subject"],
        text=row["text"],
        html=row["html"],
        headers={"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    )


def _campaign_composed_by(monkeypatch: pytest.MonkeyPatch, composer: kinds.Composer) -> None:
    """The campaign kind built one job at a time by `composer` instead of its batch."""
    campaign = kinds.KINDS["campaign"]
    monkeypatch.setitem(
        kinds.KINDS, "campaign", replace(campaign, compose=composer, compose_batch=None)
    )


async def test_sent_campaign_job_marks_the_delivery_and_counts_the_campaign(
    app_factory, db, smtp, monkeypatch
) -> None:
    _campaign_composed_by(monkeypatch, _tiny_campaign_composer)
    campaign_id, subscriber_id = await _campaign_job(db, "reader@example.com")
    async with app_factory() as (app, _client):
        [message] = await smtp.wait_for(1)
        await wait_until(lambda: outbox_empty(db))
        assert _metric(app, "emails_sent_total", kind="campaign") == 1
    assert message.message["Subject"] == "Spring news"
    assert message.to == "reader@example.com"
    row = await db.fetchrow("SELECT sent, failed FROM campaigns WHERE id = $1", campaign_id)
    assert (row["sent"], row["failed"]) == (1, 0)
    assert await db.fetchval(
        "SELECT sent_at IS NOT NULL FROM deliveries WHERE subscriber_id = $1", subscriber_id
    )


async def test_rejected_campaign_job_counts_as_failed_and_is_deleted(
    app_factory, db, smtp, monkeypatch
) -> None:
    _campaign_composed_by(monkeypatch, _tiny_campaign_composer)
    smtp.fail_next("554 5.7.1 rejected")  # policy: retried, here with a single attempt
    campaign_id, _ = await _campaign_job(db, "reader@example.com")
    async with app_factory(outbox_max_attempts=1) as (_app, _client):
        await wait_until(lambda: outbox_empty(db))
        await wait_until(
            lambda: db.fetchval("SELECT failed = 1 FROM campaigns WHERE id = $1", campaign_id)
        )
    row = await db.fetchrow("SELECT sent, failed FROM campaigns WHERE id = $1", campaign_id)
    assert (row["sent"], row["failed"]) == (0, 1)
    assert await db.fetchval("SELECT sent_at FROM deliveries") is None
    assert smtp.messages == []


async def test_composer_returning_none_drops_the_job_without_sending(app_factory, db, smtp) -> None:
    subscriber_id = await db.fetchval(
        "INSERT INTO subscribers (email, status) VALUES ('done@example.com', 'active') RETURNING id"
    )
    await db.execute(
        "INSERT INTO outbox (kind, subscriber_id) VALUES ('confirm', $1)", subscriber_id
    )
    async with app_factory() as (_app, _client):
        await wait_until(lambda: outbox_empty(db))  # dropped: deleted without a send
    assert smtp.messages == []


async def test_a_composer_that_fails_is_retried_while_other_jobs_are_sent(
    app_factory, db, smtp, monkeypatch
) -> None:
    async def broken(con, job, ctx):
        await con.execute("SELECT 1/0")

    _campaign_composed_by(monkeypatch, broken)
    await _campaign_job(db, "broken@example.com")
    await _add_pending(db, 2)
    async with app_factory() as (_app, _client):
        await smtp.wait_for(2)
        job = await wait_until(
            lambda: db.fetchrow("SELECT attempts, last_error FROM outbox WHERE attempts > 0")
        )
    assert job["last_error"].startswith("compose")


async def test_a_connection_lost_while_composing_is_no_broken_job(
    app_factory, db, smtp, monkeypatch, caplog
) -> None:
    """asyncpg's "connection is closed" (the server ended it just before the query) is the
    database going away, not a bug of the job: the batch is abandoned whole and the job
    keeps its attempts, as with a class-08 error."""
    caplog.set_level(logging.WARNING, logger="newsletter.outbox")

    async def lost(con, job, ctx):
        raise asyncpg.InterfaceError("connection is closed")

    _campaign_composed_by(monkeypatch, lost)
    await _campaign_job(db, "lost@example.com")
    async with app_factory() as (_app, _client):
        [record] = await wait_until(
            lambda: _async(
                [r for r in caplog.records if r.getMessage() == "outbox worker error"][:1]
            )
        )
    assert record.error == "InterfaceError"
    job = await db.fetchrow("SELECT attempts, last_error FROM outbox")
    assert (job["attempts"], job["last_error"]) == (0, None)


# -- the batch composer, as every campaign is sent -------------------------------------
# The four tests above swap in a per-job composer; these run campaigns/mail.compose_batch
# itself (the campaign kind's batch composer), with real rows and a real database failing.


async def _two_campaign_jobs(db: asyncpg.Connection, second: str) -> tuple[int, int]:
    """One campaign, two recipients in one batch: good@example.com and `second`."""
    assert kinds.KINDS["campaign"].compose_batch is mail.compose_batch
    campaign_id, _ = await _campaign_job(db, "good@example.com")
    other = await db.fetchval(
        "INSERT INTO subscribers (email, status, confirmed_at) VALUES ($1, 'active', now())"
        " RETURNING id",
        second,
    )
    await db.execute(
        "INSERT INTO deliveries (campaign_id, subscriber_id) VALUES ($1, $2)", campaign_id, other
    )
    await db.execute(
        "INSERT INTO outbox (kind, subscriber_id, campaign_id) VALUES ('campaign', $1, $2)",
        other,
        campaign_id,
    )
    return campaign_id, other


async def test_the_batch_composer_retries_the_job_it_cannot_build_and_sends_the_others(
    app_factory, db, smtp
) -> None:
    # An address no relay can take (stored before validation was strict): its email
    # cannot be built; the other recipient of the same batch is mailed all the same.
    campaign_id, broken = await _two_campaign_jobs(db, "bad@ex\u00e4mple..org")
    async with app_factory(outbox_backoff_base=30, outbox_backoff_max=30) as (_app, _client):
        [message] = await smtp.wait_for(1)
        job = await wait_until(
            lambda: db.fetchrow(
                "SELECT subscriber_id, attempts, last_error FROM outbox WHERE attempts > 0"
            )
        )
        await wait_until(
            lambda: db.fetchval("SELECT sent = 1 FROM campaigns WHERE id = $1", campaign_id)
        )
    assert message.to == "good@example.com"
    assert (job["subscriber_id"], job["attempts"], job["last_error"]) == (
        broken,
        1,
        "compose ValueError",
    )
    assert await db.fetchval("SELECT count(*) FROM outbox") == 1
    assert len(smtp.messages) == 1


async def test_a_failing_batch_query_retries_its_jobs_and_they_go_out_once_it_works(
    app_factory, db, smtp
) -> None:
    """A database error in the batch's queries (not the database going away) fails its
    jobs, which are retried; the savepoint keeps the claims and the batch's ledger."""
    await _two_campaign_jobs(db, "second@example.com")
    await db.execute("ALTER TABLE campaigns RENAME COLUMN html TO html_gone")
    async with app_factory() as (_app, _client):
        failed = await wait_until(
            lambda: db.fetch("SELECT attempts, last_error FROM outbox WHERE attempts > 0")
        )
        assert {r["last_error"] for r in failed} == {"compose UndefinedColumnError"}
        assert smtp.messages == []
        await db.execute("ALTER TABLE campaigns RENAME COLUMN html_gone TO html")
        messages = await smtp.wait_for(2, timeout=20)
        await wait_until(lambda: outbox_empty(db))
    assert sorted(m.to for m in messages) == ["good@example.com", "second@example.com"]
    assert await db.fetchval("SELECT sent FROM campaigns") == 2


async def test_the_database_going_away_while_a_batch_composes_fails_no_job(
    app_factory, db, database_url, smtp, caplog
) -> None:
    """The worker's connection ended in the middle of the batch composer's queries: the
    batch is abandoned whole (no job charged an attempt or reported as unbuildable), and
    sent once the database answers again."""
    caplog.set_level(logging.INFO, logger="newsletter.outbox")
    await _two_campaign_jobs(db, "second@example.com")
    blocker = await asyncpg.connect(database_url)
    try:
        held = blocker.transaction()
        await held.start()
        # The composer's template query waits behind this lock: its connection is then
        # ended by the server, as a failover or a restart ends it.
        await blocker.execute("LOCK TABLE campaigns IN ACCESS EXCLUSIVE MODE")
        async with app_factory() as (_app, _client):
            pid = await wait_until(
                lambda: db.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%FROM campaigns WHERE id = ANY%'"
                )
            )
            assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
            [record] = await wait_until(
                lambda: _async(
                    [r for r in caplog.records if r.getMessage() == "outbox worker error"][:1]
                )
            )
            assert record.error in (
                "AdminShutdownError",
                "ConnectionDoesNotExistError",
                "InterfaceError",
            )
            jobs = await db.fetch("SELECT attempts, last_error FROM outbox")
            assert [(j["attempts"], j["last_error"]) for j in jobs] == [(0, None)] * 2
            await held.rollback()
            messages = await smtp.wait_for(2, timeout=20)
            await wait_until(lambda: outbox_empty(db))
    finally:
        await blocker.close()
    assert sorted(m.to for m in messages) == ["good@example.com", "second@example.com"]
    assert not [r for r in caplog.records if r.getMessage() == "email could not be built"]
    assert await db.fetchval("SELECT (sent, failed) = (2, 0) FROM campaigns")


async def test_worker_signs_with_dkim_when_configured(app_factory, db, smtp, tmp_path) -> None:
    dkim = support.dkim_key(tmp_path)
    async with app_factory(
        dkim_private_key_file=dkim.path, dkim_selector="s1", dkim_domain="newsletter.test"
    ) as (_app, client):
        await subscribe(client, "signed@example.com")
        [message] = await smtp.wait_for(1)

    assert message.raw.startswith(b"DKIM-Signature:")
    assert dkimpy.verify(message.raw, dnsfunc=dkim.dnsfunc("s1", "newsletter.test"))


def test_backoff_grows_exponentially_with_jitter_and_is_capped(settings) -> None:
    s = settings.replace(outbox_backoff_base=10, outbox_backoff_max=100)
    for attempt, ceiling in ((1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (20, 100)):
        delays = [sender.backoff(s, attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


# -- a lane's claim starts after its previous one (outbox.Resume) ----------------------------


@contextlib.asynccontextmanager
async def _one_lane(app_factory, database_url: str, count: int):
    """`count` queued campaign jobs, 5 to a batch, a worker whose batches the test runs one
    by one, and a second connection standing for another lane."""
    async with app_factory(outbox_concurrency=0, outbox_batch=5) as (app, _client):
        async with app.state.pool.acquire() as con:
            await people.add_many(con, count)
            await store.queue_send(con, await people.add_campaign(con))
        settings = app.state.settings.replace(outbox_concurrency=1)
        context = messages.MailContext(settings, app.state.tokens, app.state.templates)
        worker = sender.Worker(app.state.pool, settings, app.state.metrics, context)
        other = await asyncpg.connect(database_url)
        try:
            yield worker, other
        finally:
            await worker.close()
            await other.close()


async def _hold_first_jobs(other: asyncpg.Connection, n: int) -> tuple[object, list[str]]:
    """Another lane's claim of the first n jobs, in a transaction left open."""
    tx = other.transaction()
    await tx.start()
    held = await other.fetch(
        "SELECT s.email FROM outbox o JOIN subscribers s ON s.id = o.subscriber_id"
        " ORDER BY o.id LIMIT $1 FOR UPDATE OF o",
        n,
    )
    return tx, [r["email"] for r in held]


async def test_jobs_released_behind_a_lanes_bound_are_sent_when_it_restarts_from_the_head(
    app_factory, database_url, smtp, monkeypatch
) -> None:
    """The lane's campaign claims start after its previous claim, past the index entries
    of sent jobs; jobs another lane released unsent lie behind that bound and are claimed
    when the lane starts from the head again, at the latest after RESUME_FOR_S."""
    async with _one_lane(app_factory, database_url, 30) as (worker, other):
        tx, held = await _hold_first_jobs(other, 5)
        assert await worker.process_batch() == "done"  # jobs 6-10: the bound is job 10
        await tx.rollback()  # jobs 1-5 are free again, behind the bound
        assert await worker.process_batch() == "done"  # jobs 11-15, after the bound
        monkeypatch.setattr(sender, "RESUME_FOR_S", 0.0)
        assert await worker.process_batch() == "done"  # from the head: jobs 1-5
        monkeypatch.setattr(sender, "RESUME_FOR_S", 30.0)
        while await worker.process_batch() != "idle":
            pass
    order = [m.to for m in smtp.messages]
    assert sorted(order[10:15]) == sorted(held)
    assert len(order) == len(set(order)) == 30


async def test_a_claim_that_comes_back_short_after_the_bound_looks_at_the_head(
    app_factory, database_url, smtp
) -> None:
    """When the queue runs out after the bound, the same claim looks at the head of the
    queue, where released jobs may wait, without claiming its own jobs twice."""
    async with _one_lane(app_factory, database_url, 12) as (worker, other):
        tx, held = await _hold_first_jobs(other, 5)
        assert await worker.process_batch() == "done"  # jobs 6-10
        await tx.rollback()
        assert await worker.process_batch() == "done"  # 11-12 after the bound, then 1-3
        assert await worker.process_batch() == "done"  # 4-5
        assert await worker.process_batch() == "idle"
    order = [m.to for m in smtp.messages]
    assert sorted(order[7:]) == sorted(held)
    assert len(order) == len(set(order)) == 12
