"""Bounces, complaints and auto-replies through the real SMTP receiver, acted on in a
real database: erasure leaves only anonymous counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiosmtplib
import asyncpg
import pytest

from service.bounces import actions, intake
from service.bounces.receiver import BounceServer
from service.db import connections as service_db
from service.privacy import erasure
from service.settings import Settings
from tests import people
from tests.bounce_support import (
    DOMAIN,
    dsn,
    mailed,
    return_path,
    sample,
    service_logs,
    tokens,
    with_return_path,
)
from tests.signup_helpers import subscribe, wait_until


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
    _sid, campaign = await mailed(db, "kijitora@example.org")
    _report, outcomes = await intake.process(pool, settings, tokens(), dsn("kijitora@example.org"))
    assert outcomes == ["erased"]
    assert await counts(db) == [(campaign, "hard", "dsn", "5.1.1", 1)]


async def test_without_bounce_domain_a_report_acts_on_one_address_within_its_window(
    pool, db, settings
) -> None:
    """An address-only report reaches one person at most, and only an email sent to that
    address in the 7 days before the report's Date."""
    now = datetime.now(UTC)
    await mailed(db, "old@example.org", now - timedelta(days=8))
    await mailed(db, "one@example.org")
    await mailed(db, "two@example.org")
    for raw in (
        dsn("old@example.org"),  # the email was sent before the report's window
        dsn("old@example.org", date=now - timedelta(days=9)),  # and this one after the email
        dsn("one@example.org", "two@example.org"),  # several people: nobody
        dsn("one@example.org", date=now + timedelta(days=1)),  # dated in the future
        dsn("one@example.org").replace(b"\r\nDate: ", b"\r\nX-Date: "),  # no Date at all
    ):
        report, outcomes = await intake.process(pool, settings, tokens(), raw)
        assert (report.event, outcomes) == ("hard", [])
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 3
    assert await counts(db) == []
    _report, outcomes = await intake.process(pool, settings, tokens(), dsn("one@example.org"))
    assert outcomes == ["erased"]
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 2


async def test_with_bounce_domain_only_a_token_in_the_envelope_headers_counts(
    pool, db, bounce_settings
) -> None:
    """Anyone can mail the bounce address: the addresses a report names, or a return path
    quoted in its text, are no evidence; the envelope recipient's token is."""
    sid, campaign = await mailed(db, "target@example.org")
    path = return_path(bounce_settings, sid, campaign)
    forged = (
        dsn("target@example.org", to=f"bounces@{DOMAIN}"),
        with_return_path(dsn("target@example.org"), f"bounces@{DOMAIN}"),
        dsn("target@example.org").replace(
            b"Your message could not", f"Return-Path: <{path}>\r\nYour message could not".encode()
        ),
    )
    for raw in forged:
        report, outcomes = await intake.process(pool, bounce_settings, tokens(), raw)
        assert (report.event, outcomes) == ("hard", [])
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    _report, outcomes = await intake.process(
        pool, bounce_settings, tokens(), dsn("anyone@example.org", to=path)
    )
    assert outcomes == ["erased"]
    assert await counts(db) == [(campaign, "hard", "dsn", "5.1.1", 1)]


async def test_a_late_report_by_token_for_the_old_address_erases_nobody(
    receiver, pool, db, bounce_settings
) -> None:
    """Return-path tokens bind the address the email went to: after an address change,
    a report about an email sent before it reaches nobody, by token or by address."""
    sid, campaign = await mailed(db, "before@example.org", datetime.now(UTC) - timedelta(hours=2))
    await db.execute("UPDATE subscribers SET confirm_sent_at = now() - interval '3 hours'")
    old_token = tokens().bounce(sid, campaign, at=time.time() - 2 * 3600)
    old_path = f"bounces+{old_token}@{DOMAIN}"
    await db.execute("UPDATE subscribers SET email = 'after@example.org' WHERE id = $1", sid)
    await deliver(receiver, old_path, dsn("before@example.org", to=old_path))
    assert await db.fetchval("SELECT email FROM subscribers WHERE id = $1", sid) == (
        "after@example.org"
    )
    async with pool.acquire() as con:  # an address-only report naming the new address
        assert await actions.target_by_address(con, "after@example.org") is None
    assert await counts(db) == []
    # The change happened an hour ago: what was sent since goes to the new address.
    await db.execute("UPDATE subscribers SET email_since = now() - interval '1 hour'")
    await deliver(receiver, return_path(bounce_settings, sid, campaign), dsn("after@example.org"))
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


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


class Session:
    """A raw SMTP connection from `source` (any 127/8 address is this machine)."""

    async def open(self, port: int, source: str = "127.0.0.1") -> bytes:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0)
        )
        return await self.line()

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 10)


async def _session(port: int, source: str = "127.0.0.1") -> tuple[bytes, asyncio.StreamWriter]:
    session = Session()
    return await session.open(port, source), session.writer


async def test_the_receiver_limits_sessions_in_all_and_per_peer(pool, make_settings, db) -> None:
    """Each session may hold a message of BOUNCE_SMTP_MAX_BYTES: one sender cannot open
    more than BOUNCE_SMTP_MAX_PER_PEER, nor all of them more than
    BOUNCE_SMTP_MAX_CONNECTIONS; the others get 421 (try again later)."""
    settings = make_settings(
        bounce_domain=DOMAIN, bounce_smtp_max_per_peer=2, bounce_smtp_max_connections=3
    )
    server = BounceServer(pool, settings, tokens())
    port = await server.start("127.0.0.1", 0)
    writers = []
    try:
        first = [await _session(port) for _ in range(2)]
        writers += [w for _line, w in first]
        assert all(line.startswith(b"220 ") for line, _w in first)
        line, writer = await _session(port)  # a third from the same peer
        writers.append(writer)
        assert line.startswith(b"421 4.7.0")
        line, writer = await _session(port, "127.0.0.2")  # another peer: the third in all
        writers.append(writer)
        assert line.startswith(b"220 ")
        line, writer = await _session(port, "127.0.0.3")  # a fourth in all
        writers.append(writer)
        assert line.startswith(b"421 4.7.0")
        first[0][1].close()  # one ends: its place is free again
        await wait_until(lambda: _admitted(server, 2))
        line, writer = await _session(port, "127.0.0.3")
        writers.append(writer)
        assert line.startswith(b"220 ")
        # a sender within the limits still delivers
        sid, campaign = await mailed(db, "limited@example.org")
        writers[1].close()
        await wait_until(lambda: _admitted(server, 2))
        await deliver(port, return_path(settings, sid, campaign), dsn("limited@example.org"))
        assert await db.fetchval("SELECT count(*) FROM subscribers") == 0
    finally:
        for writer in writers:
            writer.close()
        await server.stop()


async def _admitted(server: BounceServer, count: int) -> bool:
    return server.sessions.total == count


async def test_the_smtp_server_logs_no_peer_address_command_or_message_content(
    receiver, db, bounce_settings
) -> None:
    """aiosmtpd logs the peer's address with every line, and what it sent; warnings (an
    unknown command) are above the default level. With LOG_LEVEL=debug none of it
    gets out."""
    sid, campaign = await mailed(db, "secret-person@example.org")
    path = return_path(bounce_settings, sid, campaign)
    raw = dsn("secret-person@example.org").replace(b"could not be delivered", b"Marker-Text")
    with service_logs("debug") as output:
        session = Session()
        assert (await session.open(receiver)).startswith(b"220 ")
        session.writer.write(b"EHLO client.example\r\nXSECRETVERB hello\r\nQUIT\r\n")
        while not (await session.line()).startswith(b"221"):  # every reply, to the end
            pass
        session.writer.close()
        await deliver(receiver, path, raw, sender="someone@sender.example")
        assert await db.fetchval("SELECT count(*) FROM subscribers") == 0
    text = output.getvalue()
    for secret in ("127.0.0.1", "XSECRETVERB", "secret-person", "Marker-Text", "sender.example"):
        assert secret not in text, secret
    assert '"bounce received"' in text
