"""What the sender calls: the return path of each email, and a relay's permanent refusal
of the recipient at send time, which is a hard bounce that never reaches a mailbox.

Both are called from service/outbox.py (marked "issue 19 hook"); a new sender calls
the same two functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import aiosmtplib
import asyncpg

from service.bounces import actions, verp
from service.bounces.parse import HARD, status_event
from service.settings import Settings
from service.tokens import Tokens

_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
# An address change's confirmation goes to the NEW address (service/manage_address.py):
# its bounce says nothing about the address on file, so it carries no VERP token and a
# refusal of it erases nobody (the change simply never gets confirmed).
NOT_TO_THE_ADDRESS_ON_FILE = frozenset({"address_confirm"})


def envelope_sender(
    settings: Settings, tokens: Tokens, job: Mapping[str, Any], default: str
) -> str:
    """MAIL FROM for an outbox job: its VERP return path, or `default` (MAIL_FROM's
    address) without BOUNCE_DOMAIN."""
    if job["kind"] in NOT_TO_THE_ADDRESS_ON_FILE:
        return default
    campaign_id = job["campaign_id"] if job["kind"] == "campaign" else None
    return verp.return_path(settings, tokens, job["subscriber_id"], campaign_id) or default


def refusal_reason(failure: BaseException) -> str | None:
    """The status code when `failure` is the relay refusing the recipient with 5xx at
    RCPT and an enhanced status code (RFC 3463) that is about the address; else None.

    The outbox raises its own `Permanent` from aiosmtplib's exception (the exception's
    context). A 5xx at MAIL or DATA, a 5.7.x (policy: "relaying denied", a spam block)
    or a reply without an enhanced code says nothing certain about the address, and a
    misconfigured relay must not erase the list, so none of them is a bounce here.
    """
    exc = failure if isinstance(failure, aiosmtplib.SMTPRecipientsRefused) else None
    exc = exc or failure.__context__  # type: ignore[assignment]
    if not isinstance(exc, aiosmtplib.SMTPRecipientsRefused) or not exc.recipients:
        return None
    refused = exc.recipients[0]
    if not 500 <= refused.code < 600:
        return None
    match = _ENHANCED.match(refused.message or "")
    if match is None:
        return None
    decided = status_event(match.group(1))
    if decided is None or decided[0] != HARD:
        return None
    return decided[1]


async def refused_at_send(
    con: asyncpg.Connection, settings: Settings, job: Mapping[str, Any], failure: BaseException
) -> str | None:
    """In the outbox's transaction, after the job was given up: erase the recipient if
    the relay refused the address for good. The outcome, or None if it was not that."""
    if job["kind"] in NOT_TO_THE_ADDRESS_ON_FILE:
        return None
    reason = refusal_reason(failure)
    if reason is None:
        return None
    campaign_id = job["campaign_id"] if job["kind"] == "campaign" else None
    target = actions.Target(job["subscriber_id"], campaign_id)
    return await actions.apply_on(con, settings, target, HARD, "smtp", reason)
