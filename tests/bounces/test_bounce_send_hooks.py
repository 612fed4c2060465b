"""The outbox's two bounce hooks, against a real SMTP server: every email's envelope
sender is its VERP return path, and a 5xx refusal of the recipient's mailbox at RCPT is
a hard bounce once the worker's recent sends show it is no burst (a refusal about
anything else never is)."""

from __future__ import annotations

import contextlib
from email.utils import parseaddr

import pytest

from service.bounces import verp
from service.outbox.kinds import KINDS
from tests import support
from tests.bounce_support import DOMAIN, tokens
from tests.campaigns.test_campaign_send import send
from tests.conftest import running
from tests.signup_helpers import subscribe, wait_until


class RefusingSink(support.SmtpSink):
    """Answers RCPT for addresses starting with `refuse` with the given reply."""

    def __init__(self, reply: str) -> None:
        super().__init__()
        self.reply = reply
        self.refused = 0

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:
        if address.startswith("refuse"):
            self.refused += 1
            return self.reply
        envelope.rcpt_tos.append(address)
        return "250 OK"


async def test_every_email_goes_out_with_its_own_return_path(
    app_factory, smtp, db, admin_headers
) -> None:
    async with app_factory(bounce_domain=DOMAIN) as (app, client):
        assert (await subscribe(client, "verp@example.org")).status_code == 200
        [confirmation] = await smtp.wait_for(1)
        sid = await db.fetchval("SELECT id FROM subscribers")
        assert verp.delivery_of(app.state.settings, tokens(), confirmation.sender)[:2] == (
            sid,
            None,
        )
        await db.execute("UPDATE subscribers SET status = 'active'")
        campaign_id, _ = await send(client, admin_headers)
        messages = await smtp.wait_for(2)
        settings = app.state.settings
        assert verp.delivery_of(settings, tokens(), messages[1].sender)[:2] == (sid, campaign_id)
        # the header From is unchanged
        assert messages[1].message["From"] == settings.mail_from


async def test_without_bounce_domain_the_envelope_sender_is_mail_from(app_factory, smtp) -> None:
    async with app_factory() as (_app, client):
        await subscribe(client, "plain@example.org")
        [message] = await smtp.wait_for(1)
        assert message.sender == "news@newsletter.test"


@contextlib.asynccontextmanager
async def refusing(make_settings, reply: str, **overrides):
    sink = RefusingSink(reply)
    await sink.start()
    try:
        settings = make_settings(smtp_url=sink.url, bounce_domain=DOMAIN, **overrides)
        async with running(settings) as (app, client):
            app.state.sink = sink
            yield app, client
    finally:
        await sink.stop()


async def test_a_refused_address_at_send_time_deletes_the_pending_sign_up(
    make_settings, db
) -> None:
    """Held until the worker has judged SEND_BREAKER_MIN_SENDS sends (here 4: with the
    three sign-ups that went out, a share of 25 %, under the 50 % set here), then applied."""
    async with refusing(
        make_settings,
        "550 5.1.1 <refuse@example.org>: user unknown",
        send_breaker_min_sends=4,
        send_breaker_share=0.5,
    ) as (_app, client):
        await subscribe(client, "refuse@example.org")
        await wait_until(lambda: db.fetchval("SELECT count(*) = 1 FROM held_refusals"))
        assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
        for n in range(3):
            await subscribe(client, f"fine{n}@example.org")
        await wait_until(lambda: db.fetchval("SELECT count(*) = 3 FROM subscribers"))
    rows = await db.fetch("SELECT campaign_id, event, source, reason, count FROM bounce_counts")
    assert [tuple(r) for r in rows] == [(None, "hard", "smtp", "5.1.1", 1)]
    assert await db.fetchval("SELECT count(*) FROM held_refusals") == 0


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.7.1 Relaying denied",  # the relay's policy, not the address
        "550 Mailbox unavailable",  # no enhanced status code: not certain
        "452 4.2.2 Mailbox full",  # transient: retried
        "550 5.1.8 <bounces@x.test>: Sender address rejected: Domain not found",
        "550 5.4.5 Daily user sending quota exceeded",
        "550 5.1.1 <news@newsletter.test>: sender unknown",  # quotes another address
    ],
)
async def test_other_refusals_leave_the_subscriber(make_settings, db, reply) -> None:
    async with refusing(make_settings, reply) as (app, client):
        await subscribe(client, "refuse@example.org")

        async def refused_twice() -> bool:
            return app.state.sink.refused >= 2

        await wait_until(refused_twice)
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    assert await db.fetchval("SELECT count(*) FROM held_refusals") == 0
    assert await db.fetchval("SELECT count(*) FROM bounce_counts") == 0


@pytest.mark.parametrize(
    ("code", "message", "stage", "category", "hard"),
    [
        (550, "5.1.1 <new@example.org>: user unknown", "rcpt", "mailbox", True),
        (550, "5.1.10 Recipient address has null MX", "rcpt", "mailbox", True),
        (550, "5.2.1 mailbox disabled", "rcpt", "mailbox", True),
        (550, "5.1.1 <bounces@example.com>: unknown", "rcpt", "sender", False),
        (550, "5.1.1 user unknown", "mail", "sender", False),
        (550, "5.1.1 user unknown", "data", "address", False),
        (550, "5.1.8 Sender address rejected", "rcpt", "sender", False),
        (552, "5.2.2 Mailbox full", "rcpt", "mailbox_full", False),
        (550, "5.4.5 Daily user sending quota exceeded", "rcpt", "throttle", False),
        (421, "4.7.0 Try again later", "rcpt", "throttle", False),
        (454, "Throttling failure: Maximum sending rate exceeded.", "data", "throttle", False),
        (554, "5.7.1 spam", "data", "policy", False),
        (550, "Mailbox unavailable", "rcpt", "other", False),
    ],
)
def test_what_a_refusal_at_send_time_says(code, message, stage, category, hard) -> None:
    import aiosmtplib

    from service.bounces import send_hooks

    if stage == "rcpt":
        exc = aiosmtplib.SMTPRecipientsRefused(
            [aiosmtplib.SMTPRecipientRefused(code, message, "new@example.org")]
        )
    elif stage == "mail":
        exc = aiosmtplib.SMTPSenderRefused(code, message, "bounces@example.com")
    else:
        exc = aiosmtplib.SMTPDataError(code, message)
    refusal = send_hooks.classify(exc)
    assert (refusal.category, refusal.hard) == (category, hard)
    assert refusal.throttle == (category == "throttle")
    assert "@" not in refusal.code


async def test_an_address_change_confirmation_names_nobody_and_its_refusal_erases_nobody(
    make_settings, db
) -> None:
    """It goes to the person's NEW address: a dead new address must not erase the
    subscription of the working address on file."""
    from service.bounces import send_hooks

    sid = await db.fetchval(
        "INSERT INTO subscribers (email, status) VALUES ('kept@example.org', 'active') RETURNING id"
    )
    job = {"kind": "address_confirm", "subscriber_id": sid, "campaign_id": None}
    with_domain = make_settings(bounce_domain=DOMAIN)
    on_file = KINDS["address_confirm"].to_address_on_file
    sender = send_hooks.envelope_sender(with_domain, tokens(), job, on_file)
    assert sender == parseaddr(with_domain.mail_from)[1]
    new_address = "550 5.1.1 <refuse-new@example.org>: user unknown"
    async with refusing(make_settings, new_address) as (_app, _client):
        await db.execute(
            "INSERT INTO address_changes (subscriber_id, new_email, requested_at)"
            " VALUES ($1, 'refuse-new@example.org', now())",
            sid,
        )
        await db.execute(
            "INSERT INTO outbox (kind, subscriber_id) VALUES ('address_confirm', $1)", sid
        )
        await wait_until(
            lambda: db.fetchval("SELECT count(*) = 0 OR bool_and(attempts > 0) FROM outbox")
        )
    assert await db.fetchval("SELECT count(*) FROM held_refusals") == 0
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
