"""What a bounce or complaint does. The privacy policy decides it: a dead address or a
"this is spam" ends the subscription, and ending it is the erasure of an unsubscribe
(service/privacy/erasure.py); only an anonymous count per campaign, event, intake and reason
stays (`bounce_counts`).

- hard bounce: erased at once (for a confirmation email, the pending sign-up);
- complaint: erased at once;
- soft bounce: counted, and erased at the BOUNCE_SOFT_LIMIT-th within BOUNCE_SOFT_WINDOW
  (one per email, so a report delivered twice counts once).

A report for someone already erased changes and counts nothing, so every intake may
deliver the same report again (webhooks retry, a mailbox is read twice). A report found
by a return-path token acts only while the subscriber's address is the one the email
went to: `subscribers.email_since` (sql/136) no later than the token's time of sending.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from service.bounces.parse import COMPLAINT, HARD, IGNORE, SOFT
from service.db import retry
from service.db.queries import queries
from service.privacy import erasure
from service.settings import Settings
from service.tokens import BounceClaim

log = logging.getLogger("newsletter.bounces")
q = queries("bounces")

MAX_REASON = 40


@dataclass(frozen=True, slots=True)
class Target:
    """The email a report is about: its subscriber, and its campaign (None: the
    confirmation email, or no campaign known). `by_token`: named by a return-path token
    sent in `sent_after`'s time step (None: a token of an earlier release), so acted on
    only if the address has not changed since; otherwise the address is known current
    (found by it, or refused at send)."""

    subscriber_id: int
    campaign_id: int | None
    by_token: bool = False
    sent_after: datetime | None = None

    @classmethod
    def of(cls, claim: BounceClaim) -> Target:
        return cls(claim.subscriber_id, claim.campaign_id, True, claim.sent_after)


def _usable(address: object) -> bool:
    return (
        isinstance(address, str)
        and 0 < len(address) <= erasure.MAX_EMAIL_LENGTH
        and "@" in address
        and address.isprintable()
    )


async def target_by_address(
    con: asyncpg.Connection,
    address: str,
    at: datetime | None = None,
    since: datetime | None = None,
) -> Target | None:
    """The subscriber a report naming only an address is about, if an email was sent to
    that address no later than `at` (the report's time; now when unknown) and, when
    given, no earlier than `since`."""
    if not _usable(address):
        return None
    row = await q.recipient_by_address.fetchrow(
        con, email=address, at=at or datetime.now(UTC), since=since
    )
    if row is None:
        return None
    if row["campaign_id"] is not None:
        return Target(row["id"], row["campaign_id"])
    if row["confirmation_before"]:
        return Target(row["id"], None)
    return None  # nothing had been sent to this sign-up yet: the report is older


async def apply_on(
    con: asyncpg.Connection,
    settings: Settings,
    target: Target,
    event: str,
    source: str,
    reason: str,
) -> str:
    """Acts on one report in the caller's transaction: 'erased', 'counted', 'repeated',
    'unknown' (nobody to act on) or 'ignored'."""
    if event == IGNORE:
        return "ignored"
    reason = reason[:MAX_REASON]
    async with con.transaction():
        if target.by_token and not await q.address_unchanged_since.fetchval(
            con, id=target.subscriber_id, sent_after=target.sent_after
        ):
            return "unknown"  # gone, or the email went to an address it no longer has
        if event in (HARD, COMPLAINT):
            cause = "complaint" if event == COMPLAINT else "bounce"
            if not await erasure.erase_subscriber(con, target.subscriber_id, cause):
                return "unknown"
            await q.count_event.execute(
                con, campaign_id=target.campaign_id, event=event, source=source, reason=reason
            )
            return "erased"
        if event != SOFT:
            raise ValueError(f"unknown event {event!r}")
        window = settings.bounce_soft_window
        await q.forget_old_soft_bounces.execute(con, window=window)
        added = await q.add_soft_bounce.fetchval(
            con, id=target.subscriber_id, campaign_id=target.campaign_id or 0
        )
        if added is None:
            exists = await q.subscriber_exists.fetchval(con, id=target.subscriber_id)
            return "repeated" if exists else "unknown"
        await q.count_event.execute(
            con, campaign_id=target.campaign_id, event=SOFT, source=source, reason=reason
        )
        recent = await q.recent_soft_bounces.fetchval(con, id=target.subscriber_id, window=window)
        if recent >= settings.bounce_soft_limit:
            await erasure.erase_subscriber(con, target.subscriber_id, "bounce")
            return "erased"
        return "counted"


async def apply(
    pool: asyncpg.Pool,
    settings: Settings,
    target: Target,
    event: str,
    source: str,
    reason: str,
) -> str:
    """`apply_on` on a pooled connection, run again (`retry.run`) when PostgreSQL broke a
    deadlock (an erasure racing a send or a sign-up of the same person)."""
    outcome = await retry.run(
        pool, lambda con: apply_on(con, settings, target, event, source, reason)
    )
    log.info(
        "bounce report",
        extra={
            "kind": event,
            "source": source,
            "reason": reason[:MAX_REASON],
            "campaign_id": target.campaign_id,
            "outcome": outcome,
        },
    )
    return outcome
