"""One returned message, from the SMTP receiver or the mailbox: parsed, matched to the
email it is about, acted on.

What a message may act on (never more than its evidence):

- with BOUNCE_DOMAIN: only the emails named by return-path tokens it was delivered to:
  the SMTP receiver's envelope recipients, or in a mailbox the envelope-recipient
  headers and `To:` (`verp.envelope_deliveries`). A message without one changes
  nothing, whatever addresses its text names (anyone can mail the bounce address);
- without BOUNCE_DOMAIN (no tokens exist): the one address the report names, and only
  for an email sent to that address within ADDRESS_WINDOW before the report's `Date:`
  (a report without a Date, dated in the future or naming several addresses acts on
  nobody: one message never reaches several people).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import asyncpg

from service.bounces import actions, verp
from service.bounces.parse import IGNORE, Report, parse
from service.settings import Settings
from service.tokens import Tokens

# A DSN is written when the delivery fails, at most a few days after the email was sent
# (queue lifetimes: Postfix 5 days, Exim and Sendmail 4-5 days, RFC 5321 4.5.4.1 "at
# least 4-5 days"): an email sent earlier than this before the report is not its subject.
ADDRESS_WINDOW = timedelta(days=7)
CLOCK_SKEW = timedelta(minutes=5)  # a report may seem to come this far from the future


def _date(raw: bytes) -> datetime | None:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("latin-1")
    for line in head.splitlines():
        if line.lower().startswith("date:"):
            try:
                when = parsedate_to_datetime(line[5:].strip())
                return when if when.tzinfo else when.replace(tzinfo=UTC)
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
    return None


async def _by_address(pool: asyncpg.Pool, raw: bytes, report: Report) -> list[actions.Target]:
    addresses = set(report.recipients)
    at = _date(raw)
    if len(addresses) != 1 or at is None or at > datetime.now(UTC) + CLOCK_SKEW:
        return []
    try:
        since = at - ADDRESS_WINDOW
    except OverflowError:  # a Date in year 1
        return []
    async with pool.acquire() as con:
        target = await actions.target_by_address(con, addresses.pop(), at, since)
    return [target] if target is not None else []


async def targets(
    pool: asyncpg.Pool,
    settings: Settings,
    tokens: Tokens,
    raw: bytes,
    report: Report,
    deliveries: list[verp.Delivery] | None = None,
) -> list[actions.Target]:
    """The emails a message is about (see the module's docstring); `deliveries` are the
    SMTP receiver's envelope recipients."""
    if settings.bounce_domain:
        found = deliveries or verp.envelope_deliveries(settings, tokens, raw)
        return [actions.Target.of(claim) for claim in found]
    return await _by_address(pool, raw, report)


async def process(
    pool: asyncpg.Pool,
    settings: Settings,
    tokens: Tokens,
    raw: bytes,
    deliveries: list[verp.Delivery] | None = None,
) -> tuple[Report, list[str]]:
    """The report and one outcome per email it is about ([] when it is not a bounce or
    names nobody we sent to)."""
    # Up to ~10 ms of CPU for a message every detector reads (bench/bench_bounces.py):
    # off the event loop, so the receiver keeps answering other sessions meanwhile.
    report = await asyncio.to_thread(parse, raw)
    if report.event == IGNORE:
        return report, []
    outcomes = []
    for target in await targets(pool, settings, tokens, raw, report, deliveries):
        outcomes.append(
            await actions.apply(pool, settings, target, report.event, report.source, report.reason)
        )
    return report, outcomes
