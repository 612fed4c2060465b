"""The bounce mailbox against a real IMAP server (Dovecot, tests/dovecot.py): what is
recognised as a bounce of ours is acted on and deleted; everything else stays, unread."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import aioimaplib
import asyncpg
import pytest

from service.bounces.imap import MailboxPoller
from service.db import connections as service_db
from tests import dovecot, people
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
from tests.signup_helpers import wait_until

USER = "bounces"
pytestmark = pytest.mark.slow  # a Dovecot process for the module


@pytest.fixture(scope="module")
def imap_port() -> Iterator[int]:
    if not dovecot.installed():
        pytest.skip(dovecot.NOT_INSTALLED)
    with dovecot.running() as port:
        yield port


@pytest.fixture
def mailbox_url(imap_port, request) -> str:
    # A user (and so a mailbox) of its own per test.
    name = re.sub(r"[^a-z0-9]", "", request.node.name.lower())[-40:]
    return f"imap://{USER}{name}:{dovecot.PASSWORD}@127.0.0.1:{imap_port}/INBOX"


@pytest.fixture
def imap_settings(make_settings, mailbox_url):
    return make_settings(bounce_domain=DOMAIN, bounce_imap_url=mailbox_url)


@pytest.fixture
async def pool(imap_settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await service_db.create_pool(imap_settings)
    yield pool
    await pool.close()


async def client_for(poller: MailboxPoller) -> aioimaplib.IMAP4:
    return await poller._connect()


def close(client: aioimaplib.IMAP4) -> None:
    client.protocol.transport.close()


async def append(poller: MailboxPoller, *messages: bytes) -> None:
    client = await client_for(poller)
    for raw in messages:
        assert (await client.append(raw, mailbox="INBOX")).result == "OK"
    await client.logout()
    close(client)


async def mailbox_state(poller: MailboxPoller) -> list[tuple[bytes, bool]]:
    """(Message-ID header line, seen) of every message left in the mailbox."""
    client = await client_for(poller)
    await client.select("INBOX")
    response = await client.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    await client.logout()
    close(client)
    state, flags = [], b""
    for line in response.lines:
        if isinstance(line, bytes) and b"FETCH" in line:
            flags = line
        elif isinstance(line, bytearray):
            state.append((bytes(line).strip(), b"\\Seen" in flags))
    return state


async def test_bounces_of_ours_are_processed_and_deleted_everything_else_stays_unread(
    pool, db, imap_settings
) -> None:
    campaign = await people.add_campaign(db)
    dead = await people.add_subscriber(db, "dead@example.org")
    away = await people.add_subscriber(db, "away@example.org")
    poller = MailboxPoller(pool, imap_settings, tokens())
    await append(
        poller,
        with_return_path(
            sample("lhost-postfix-01.eml"), return_path(imap_settings, dead, campaign)
        ),
        with_return_path(sample("rfc3834-01.eml"), return_path(imap_settings, away, campaign)),
        sample("is-not-bounce-01.eml"),  # mail for a person
        sample("lhost-gmail-01.eml"),  # a bounce of some other mail (no subscriber)
    )
    before = await mailbox_state(poller)
    assert len(before) == 4

    counts = await poller.poll_once()

    assert counts == {"read": 4, "processed": 1, "left": 3}
    assert await db.fetchval("SELECT count(*) FROM subscribers WHERE id = $1", dead) == 0
    assert await db.fetchval("SELECT count(*) FROM subscribers WHERE id = $1", away) == 1
    rows = await db.fetch("SELECT campaign_id, event, source, reason, count FROM bounce_counts")
    assert [tuple(r) for r in rows] == [(campaign, "hard", "dsn", "5.1.1", 1)]
    after = await mailbox_state(poller)
    assert after == before[1:]  # the three others, untouched: still unread
    assert not any(seen for _id, seen in after)
    # The next poll reads only what arrived since.
    assert await poller.poll_once() == {"read": 0, "processed": 0, "left": 0}


async def test_the_worker_polls_the_mailbox_while_the_app_runs(
    app_factory, db, mailbox_url
) -> None:
    sid = await people.add_subscriber(db, "pending@example.org", status="pending")
    async with app_factory(
        bounce_domain=DOMAIN, bounce_imap_url=mailbox_url, bounce_imap_interval=0.2
    ) as (app, _client):
        poller = MailboxPoller(app.state.pool, app.state.settings, tokens())
        path = return_path(app.state.settings, sid, None)
        await append(poller, with_return_path(sample("lhost-exim-02.eml"), path))
        await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM subscribers"))
        await wait_until(lambda: _empty(poller))


async def _empty(poller: MailboxPoller) -> bool:
    return await mailbox_state(poller) == []


async def test_a_wrong_password_fails_the_poll_and_changes_nothing(pool, db, imap_settings) -> None:
    sid = await people.add_subscriber(db, "stays@example.org")
    wrong = imap_settings.replace(
        bounce_imap_url=imap_settings.bounce_imap_url.replace(":secret@", ":wrong@")
    )
    with pytest.raises(Exception) as failed:
        await MailboxPoller(pool, wrong, tokens()).poll_once()
    assert failed.type.__name__ in ("MailboxError", "Abort")
    assert await db.fetchval("SELECT count(*) FROM subscribers WHERE id = $1", sid) == 1


async def test_reports_without_a_token_are_left_unread_and_erase_nobody(
    pool, db, imap_settings
) -> None:
    """Anyone can mail the bounce address: a DSN naming a subscriber, or several, without
    a return-path token in its envelope headers is no evidence. A genuine one (the
    token in To:, as a mail system addresses a DSN to the return path) is acted on."""
    target, campaign = await mailed(db, "target@example.org")
    await mailed(db, "second@example.org")
    poller = MailboxPoller(pool, imap_settings, tokens())
    await append(
        poller,
        with_return_path(dsn("target@example.org", message_id="<forged@x>"), f"bounces@{DOMAIN}"),
        dsn(
            "target@example.org",
            "second@example.org",
            to=f"bounces@{DOMAIN}",
            message_id="<several@x>",
        ),
        dsn("target@example.org", to=return_path(imap_settings, target, campaign)),
    )
    before = await mailbox_state(poller)

    counts = await poller.poll_once()

    assert counts == {"read": 3, "processed": 1, "left": 2}
    emails = await db.fetch("SELECT email FROM subscribers")
    assert [r["email"] for r in emails] == ["second@example.org"]
    after = await mailbox_state(poller)
    assert after == before[:2]  # the forged two, untouched: still there, unread
    assert not any(seen for _id, seen in after)


async def test_without_bounce_domain_a_report_naming_several_people_erases_nobody(
    pool, db, imap_settings
) -> None:
    settings = imap_settings.replace(bounce_domain="")
    await mailed(db, "one@example.org")
    await mailed(db, "two@example.org")
    poller = MailboxPoller(pool, settings, tokens())
    await append(
        poller,
        dsn("one@example.org", "two@example.org", message_id="<several@x>"),
        dsn("two@example.org", message_id="<one@x>"),
    )
    assert await poller.poll_once() == {"read": 2, "processed": 1, "left": 1}
    emails = await db.fetch("SELECT email FROM subscribers")
    assert [r["email"] for r in emails] == ["one@example.org"]
    assert [m for m, _seen in await mailbox_state(poller)] == [b"Message-ID: <several@x>"]


async def test_the_imap_client_logs_no_credentials_addresses_or_message_content(
    pool, db, imap_settings
) -> None:
    """aioimaplib writes every line it exchanges at debug level (the LOGIN command, the
    messages fetched) and some at info: with LOG_LEVEL=debug, none of it gets out."""
    sid, campaign = await mailed(db, "secret-person@example.org")
    poller = MailboxPoller(pool, imap_settings, tokens())
    raw = dsn("secret-person@example.org", to=return_path(imap_settings, sid, campaign))
    await append(poller, raw.replace(b"could not be delivered", b"Mysterious-Marker-Text"))
    with service_logs("debug") as output:
        assert (await poller.poll_once())["processed"] == 1
    text = output.getvalue()
    user = poller.mailbox.user
    for secret in (user, dovecot.PASSWORD, "secret-person", "Mysterious-Marker", "127.0.0.1"):
        assert secret not in text, secret
    assert '"bounce report"' in text  # the service's own line is there
