"""The outbox's job kinds, each in one entry: who builds its email and what it means.

A kind is the one place that says how its job becomes an email (the composer, which
lives with the capability that owns the email), whether the email goes to the address
on file (only then does its envelope carry a VERP token, so that only then can its
bounce or a relay's refusal speak for the subscriber's address), and what its sending
records. Adding a kind: an entry here, its composer, and a migration that extends
`outbox_kind_check` (and, for a bulk kind, the generated `priority`: migration 100
gives `campaign` 1 and every other kind 0); tests/outbox/test_kinds.py holds the
database to this table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage

import asyncpg

from service.campaigns import check as campaign_check
from service.campaigns import mail as campaign_mail
from service.mail.messages import MailContext
from service.mail.wire import OutgoingEmail
from service.manage import address_change, links
from service.signup import mail as confirmation_mail

Composer = Callable[
    [asyncpg.Connection, asyncpg.Record, MailContext],
    Awaitable[EmailMessage | OutgoingEmail | None],
]
# Many jobs from one query: by job id, the email, None (not to be sent) or why it failed.
BatchComposer = Callable[
    [asyncpg.Connection, list[asyncpg.Record], MailContext],
    Awaitable[dict[int, OutgoingEmail | Exception | None]],
]


@dataclass(frozen=True)
class Kind:
    name: str
    # Exactly one of the two: one job at a time, or a batch of the kind's jobs at once.
    compose: Composer | None = None
    compose_batch: BatchComposer | None = None
    # False when the email goes elsewhere (an address change's confirmation goes to the
    # NEW address): no VERP token, and a refusal of it erases nobody.
    to_address_on_file: bool = True
    # The `outbox.priority` PostgreSQL generates from the kind: 0 is claimed first.
    priority: int = 0
    # What a sent email records: the confirmation's send time (the scanner window of
    # POST /confirm starts there) or the campaign's delivery.
    records: str | None = None


CONFIRM_SENT = "confirm_sent"
DELIVERY = "delivery"

KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("confirm", compose=confirmation_mail.compose, records=CONFIRM_SENT),
        Kind(
            "campaign",
            compose_batch=campaign_mail.compose_batch,
            priority=1,
            records=DELIVERY,
        ),
        # A topic's welcome message is a campaign of its own (sql/142): composed, recorded
        # and counted as one, but claimed with the emails a person waits for.
        Kind("welcome", compose_batch=campaign_mail.compose_batch, records=DELIVERY),
        Kind("manage_link", compose=links.compose_link),
        Kind("address_confirm", compose=address_change.compose, to_address_on_file=False),
        # An operator's test copy of a campaign (sql/160): to a typed address, counted nowhere.
        Kind("campaign_test", compose=campaign_check.compose_test, to_address_on_file=False),
    )
}
