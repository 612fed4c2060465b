"""Bounces, complaints and auto-replies through the real SMTP receiver, acted on in a
real database: erasure leaves only anonymous counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiosmtplib
import asyncpg
import pytest

from service import db as service_db
from service import erasure
from service.bounces import actions, intake
from service.bounces.receiver import BounceServer
from service.settings import Settings
from tests import people
from tests.bounce_support import (
    DOMAIN,
    mailed,
    return_path,
    sample,
    tokens,
    with_return_path,
)
from tests.signup_helpers import subscribe


@pytest.fixture
def bounce_settings(make_settings) -> Settings:
    return make_settings(bounce_domain=DOMAIN, bounce_smtp_max_bytes=256 * 1024)


@pytest.fixture
async def pool(bounce_settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await service_db.create_pool(bounce_settings)
    yield pool
    await pool.close()


@pytest.fixture
async def receiver(pool, bounce_settings) -> AsyncIterator[int]:
    server = BounceServer(pool, bounce_settings, tokens())
    port = await server.start("127.0.0.1", 0)
    yield port
    await server.stop()


async def deliver(port: int, recipient: str, raw: bytes, sender: str = "") -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as smtp:
        await smtp.sendmail(sender, [recipient], raw)


async def counts(db: asyncpg.Connection) -> list[tuple]:
    rows = await db.fetch(
        "SELECT campaign_id, event, source, reason, count FROM bounce_counts"
        " ORDER BY event, source, reason"
    )
    return [tuple(row) for row in rows]


async def test_a_hard_bounce_erases_the_subscriber_leaving_no_trace_but_a_count(
    receiver, db, settings, bounce_settings
) -> None:
    campaign = await people.add_campaign(db)
    person = await people.add_person(db, settings, "Dead.Box@Example.org", "hard-scan", campaign)
    other = await people.add_person(db, settings, "alive@example.org", "hard-keep", campaign)

    await deliver(
        receiver, return_path(bounce_settings, person.id, campaign), sample("lhost-postfix-01.eml")
    )

    assert await people.find_anywhere(db, person.traces) == {}
    assert await people.address_rate_limit_rows(db, settings, person.email) == 0
    assert await counts(db) == [(campaign, "hard", "dsn", "5.1.1", 1)]
    assert {"subscribers", "consent_events", "opens"} <= set(
        await people.find_anywhere(db, other.traces)
    )


async def test_a_complaint_erases_at_once_and_is_counted_per_campaign(
    receiver, db, bounce_settings
) -> None:
    campaign = await people.add_campaign(db)
    sid = await people.add_subscriber(db, "annoyed@example.org")
    await deliver(receiver, return_path(bounce_settings, sid, campaign), sample("arf-01.eml"))
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0
    assert await counts(db) == [(campaign, "complaint", "arf", "abuse", 1)]


@pytest.mark.parametrize(
    "name", ["rfc3834-01.eml", "rfc3834-05.eml", "lhost-gmail-06.eml", "arf-18.eml"]
)
async def test_vacation_replies_delay_warnings_and_other_reports_change_nothing(
    receiver, db, bounce_settings, name
) -> None:
    campaign = await people.add_campaign(db)
    sid = await people.add_subscriber(db, "away@example.org")
    await deliver(receiver, return_path(bounce_settings, sid, campaign), sample(name))
    assert await db.fetchval("SELECT count(*) FROM subscribers WHERE id = $1", sid) == 1
    assert await counts(db) == []


async def test_a_hard_bounce_of_the_confirmation_deletes_the_pending_sign_up(
    receiver, db, bounce_settings
) -> None:
    sid = await people.add_subscriber(db, "typo@exmaple.org", status="pending")
    await deliver(receiver, return_path(bounce_settings, sid, None), sample("lhost-gmail-01.eml"))
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0
    assert await counts(db) == [(None, "hard", "heuristic", "5.1.1", 1)]


async def test_soft_bounces_erase_at_the_limit_within_the_window_and_count_once_per_email(
    receiver, db, bounce_settings
) -> None:
    campaigns = [await people.add_campaign(db, f"Issue {n}") for n in range(3)]
    sid = await people.add_subscriber(db, "full@example.org")
    soft = sample("lhost-postfix-05.eml")
    await deliver(receiver, return_path(bounce_settings, sid, campaigns[0]), soft)
    await deliver(receiver, return_path(bounce_settings, sid, campaigns[0]), soft)  # again
    await deliver(receiver, return_path(bounce_settings, sid, campaigns[1]), soft)
    assert await db.fetchval("SELECT count(*) FROM soft_bounces WHERE subscriber_id = $1", sid) == 2
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    # one older than the window does not count towards the limit, and is forgotten
    await db.execute("UPDATE soft_bounces SET at = now() - interval '16 days'")
    await deliver(receiver, return_path(bounce_settings, sid, campaigns[2]), soft)
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    assert await db.fetchval("SELECT count(*) FROM soft_bounces") == 1
    # the limit's third within the window erases
    more = [await people.add_campaign(db, f"Later {n}") for n in range(2)]
    for campaign in more:
        await deliver(receiver, return_path(bounce_settings, sid, campaign), soft)
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0
    assert await db.fetchval("SELECT count(*) FROM soft_bounces") == 0
    assert sum(row[4] for row in await counts(db)) == 5  # the repeated report counted once


async def test_the_receiver_takes_mail_only_for_valid_return_paths(
    receiver, db, bounce_settings
) -> None:
    campaign = await people.add_campaign(db)
    sid = await people.add_subscriber(db, "someone@example.org")
    good = return_path(bounce_settings, sid, campaign)
    token = good.partition("+")[2].partition("@")[0]
    forged = ("a" if token[0] != "a" else "b") + token[1:]
    for recipient in (
        "someone@example.org",  # not a relay
        f"postmaster@{DOMAIN}",
        f"bounces@{DOMAIN}",
        f"bounces+{forged}@{DOMAIN}",
        f"bounces+{token}@other.example",
    ):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await deliver(receiver, recipient, sample("lhost-postfix-01.eml"))
        assert refused.value.recipients[0].code == 550
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    assert await counts(db) == []


async def test_the_receiver_refuses_oversized_messages_and_keeps_the_subscriber(
    receiver, db, bounce_settings
) -> None:
    sid = await people.add_subscriber(db, "big@example.org")
    huge = sample("lhost-postfix-01.eml") + b"x" * (300 * 1024)
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await deliver(receiver, return_path(bounce_settings, sid, None), huge)
    assert refused.value.code == 552
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1


async def test_a_bounce_found_in_a_mailbox_by_its_quoted_return_path(
    pool, db, bounce_settings
) -> None:
    campaign = await people.add_campaign(db)
    sid = await people.add_subscriber(db, "quoted@example.org")
    raw = with_return_path(sample("lhost-exim-02.eml"), return_path(bounce_settings, sid, campaign))
    report, outcomes = await intake.process(pool, bounce_settings, tokens(), raw)
    assert (report.event, outcomes) == ("hard", ["erased"])
    assert await counts(db) == [(campaign, "hard", "heuristic", "5.1.1", 1)]


async def test_a_bounce_naming_only_an_address_reaches_the_latest_email_sent_before_it(
    pool, db, settings
) -> None:
    """Without VERP (no BOUNCE_DOMAIN) the failed recipient is the only clue."""
    _sid, campaign = await mailed(db, "kijitora@example.org", datetime(2009, 1, 1, tzinfo=UTC))
    _report, outcomes = await intake.process(
        pool, settings, tokens(), sample("lhost-postfix-01.eml")
    )
    assert outcomes == ["erased"]
    assert await counts(db) == [(campaign, "hard", "dsn", "5.1.1", 1)]


async def test_a_late_bounce_never_reaches_the_re_sign_up_that_followed_the_erasure(
    pool, client, db, bounce_settings
) -> None:
    """The race: a bounce erases, the person signs up again at the same moment, and the
    same report arrives again (a retry) or names only the address."""
    address = "again@example.org"
    for _round in range(5):
        sid, campaign = await mailed(db, address, datetime.now(UTC))
        target = actions.Target(sid, campaign)
        bounce = actions.apply(pool, bounce_settings, target, "hard", "dsn", "5.1.1")
        outcome, response = await asyncio.gather(bounce, subscribe(client, address))
        assert outcome == "erased" and response.status_code == 200
        assert await db.fetchval("SELECT count(*) FROM subscribers WHERE id = $1", sid) == 0
        # the retried report, by token or by address, leaves any new sign-up alone
        assert await actions.apply(pool, bounce_settings, target, "hard", "dsn", "5.1.1") == (
            "unknown"
        )
        async with pool.acquire() as con:
            before = await con.fetchval("SELECT now() - interval '1 minute'")
            assert await actions.target_by_address(con, address, before) is None
        await erasure.erase(pool, email=address)  # the next round starts afresh
    assert await db.fetchval("SELECT sum(count) FROM bounce_counts") == 5
