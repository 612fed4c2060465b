"""The outbox's two bounce hooks, against a real SMTP server: every email's envelope
sender is its VERP return path, and a 5xx refusal of the address at RCPT is a hard
bounce (a refusal about anything else is not)."""

from __future__ import annotations

import contextlib

import pytest

from service.bounces import verp
from tests import support
from tests.bounce_support import DOMAIN, tokens
from tests.conftest import running
from tests.signup_helpers import outbox_empty, subscribe, wait_until
from tests.test_campaign_send import send


class RefusingSink(support.SmtpSink):
    """Answers RCPT for addresses starting with `refuse` with the given reply."""

    def __init__(self, reply: str) -> None:
        super().__init__()
        self.reply = reply

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:
        if address.startswith("refuse"):
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
async def refusing(make_settings, reply: str):
    sink = RefusingSink(reply)
    await sink.start()
    try:
        async with running(make_settings(smtp_url=sink.url, bounce_domain=DOMAIN)) as pair:
            yield pair
    finally:
        await sink.stop()


async def test_a_refused_address_at_send_time_deletes_the_pending_sign_up(
    make_settings, db
) -> None:
    async with refusing(make_settings, "550 5.1.1 <refuse@example.org>: user unknown") as (
        _app,
        client,
    ):
        await subscribe(client, "refuse@example.org")
        await wait_until(lambda: outbox_empty(db))
        await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM subscribers"))
    rows = await db.fetch("SELECT campaign_id, event, source, reason, count FROM bounce_counts")
    assert [tuple(r) for r in rows] == [(None, "hard", "smtp", "5.1.1", 1)]


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.7.1 Relaying denied",  # the relay's policy, not the address
        "550 Mailbox unavailable",  # no enhanced status code: not certain
        "452 4.2.2 Mailbox full",  # transient: retried
    ],
)
async def test_other_refusals_leave_the_subscriber(make_settings, db, reply) -> None:
    async with refusing(make_settings, reply) as (_app, client):
        await subscribe(client, "refuse@example.org")
        await wait_until(
            lambda: db.fetchval("SELECT count(*) = 0 OR bool_and(attempts > 0) FROM outbox")
        )
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    assert await db.fetchval("SELECT count(*) FROM bounce_counts") == 0


async def test_an_address_change_confirmation_names_nobody_and_its_refusal_erases_nobody(
    settings, db
) -> None:
    """It goes to the person's NEW address: a dead new address must not erase the
    subscription of the working address on file."""
    import aiosmtplib

    from service.bounces import send_hooks

    sid = await db.fetchval(
        "INSERT INTO subscribers (email, status) VALUES ('kept@example.org', 'active') RETURNING id"
    )
    job = {"kind": "address_confirm", "subscriber_id": sid, "campaign_id": None}
    with_domain = settings.replace(bounce_domain=DOMAIN)
    assert send_hooks.envelope_sender(with_domain, tokens(), job, "news@x.test") == "news@x.test"
    refusal = aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(550, "5.1.1 user unknown", "new@example.org")]
    )
    assert await send_hooks.refused_at_send(db, with_domain, job, refusal) is None
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    # The same refusal of an email to the address on file is a hard bounce.
    confirm = {**job, "kind": "confirm"}
    assert await send_hooks.refused_at_send(db, with_domain, confirm, refusal) == "erased"
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0
