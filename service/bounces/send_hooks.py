"""What the sender calls: the return path of each email, and what a relay's refusal at
send time says, sorted for the outbox (service/outbox/sender.py) and its circuit breaker
(service/outbox/breaker.py).

A refusal erases someone only when it is about that person's mailbox: a class-5 mailbox
status (service/bounces/parse.py) in answer to RCPT, whose text quotes no address but
the recipient's. Even then it is held, not applied, until the worker's recent sends show
it is no burst (a relay refusing everyone with 5.1.1 is misconfigured, not the list
dead). Everything else never erases: a throttle slows the lane down and keeps the job's
attempts; any other refusal retries the job with its attempts, and the operator sees the
category (logs, `/metrics`, the campaign's stats, the breaker's pause).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

import aiosmtplib
import asyncpg

from service.bounces import actions, parse, verp
from service.settings import Settings
from service.tokens import Tokens

_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
_QUOTED = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w.-]+", re.ASCII)
# Throttling: 421 (service closing), 450-454 (temporary refusals relays use for rate
# limits), and providers' words for it: Amazon SES answers over its rate
# "454 Throttling failure: Maximum sending rate exceeded" and over its daily quota
# "554 Throttling failure: Daily message quota exceeded"
# (docs.aws.amazon.com/ses/latest/dg/manage-sending-quotas-errors.html).
THROTTLE_CODES = frozenset({421, 450, 451, 452, 453, 454})
_THROTTLE_TEXT = re.compile(
    r"throttl|rate limit|sending rate|quota exceeded|too many (messages|emails|connections)",
    re.IGNORECASE,
)
THROTTLE = "throttle"
CONNECTION = "connection"
# Mailbox statuses that are about one recipient, not the relay's rate: retried per job.
_PER_RECIPIENT = frozenset({parse.MAILBOX, parse.MAILBOX_FULL, parse.ADDRESS})


@dataclass(frozen=True, slots=True)
class Refusal:
    """What one refusal says: its category (parse.status_category's, `throttle`, or
    `connection` for no answer), the code to count it by, and what to do."""

    category: str
    code: str  # "550 5.1.8", "421", or "" when the relay gave no answer
    hard: bool = False  # the recipient's mailbox is gone: held, then erased
    throttle: bool = False  # slow the lane down; the job keeps its attempts


def envelope_sender(
    settings: Settings, tokens: Tokens, job: Mapping[str, Any], to_address_on_file: bool
) -> str:
    """MAIL FROM for an outbox job: the VERP return path that names its subscriber (and
    campaign), or MAIL_FROM's address without BOUNCE_DOMAIN. A job whose email goes
    elsewhere than the address on file (an address change's confirmation goes to the NEW
    address, service/outbox/kinds.py) carries no token: its bounce says nothing about the
    subscriber's address, so it can erase nobody."""
    if to_address_on_file:
        path = verp.return_path(settings, tokens, job["subscriber_id"], job["campaign_id"])
        if path is not None:
            return path
    return _address(settings.mail_from)


@functools.lru_cache(maxsize=8)
def _address(mail_from: str) -> str:
    return parseaddr(mail_from)[1]


def _reply(failure: BaseException) -> tuple[int | None, str, str, str]:
    """(code, reply text, stage, refused recipient) of aiosmtplib's exception, which the
    outbox's own failure carries as its context."""
    exc = failure if isinstance(failure, aiosmtplib.SMTPException) else failure.__context__
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        refused = exc.recipients[0]
        return refused.code, refused.message or "", "rcpt", refused.recipient or ""
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return exc.code, exc.message or "", "rcpt", exc.recipient or ""
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return exc.code, exc.message or "", "mail", ""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code, exc.message or "", "data", ""
    return getattr(failure, "code", None), "", "", ""


def _about(text: str, recipient: str) -> bool:
    """Whether a reply's text is about the recipient: it quotes no other address."""
    wanted = recipient.strip("<>").lower()
    return all(found.lower().strip(".") == wanted for found in _QUOTED.findall(text))


def classify(failure: BaseException) -> Refusal:
    """What a failed send's answer says (never raises; text never leaves this function)."""
    code, text, stage, recipient = _reply(failure)
    if code is None:
        return Refusal(CONNECTION, "")
    match = _ENHANCED.match(text)
    status = match.group(1) if match else ""
    category = parse.status_category(status) if status else parse.OTHER
    label = f"{code} {status}".strip()
    if (
        category == parse.QUOTA
        or _THROTTLE_TEXT.search(text)
        or (code in THROTTLE_CODES and category not in _PER_RECIPIENT)
    ):
        return Refusal(THROTTLE, label, throttle=True)
    if category == parse.MAILBOX:
        decided = parse.status_event(status)
        if decided is not None and decided[0] == parse.HARD and 500 <= code < 600:
            if stage == "rcpt" and _about(text, recipient):
                return Refusal(parse.MAILBOX, label, hard=True)
            # A mailbox status at MAIL FROM, or one quoting another address (ours), is
            # about the sender.
            return Refusal(parse.ADDRESS if stage == "data" else parse.SENDER, label)
    return Refusal(category, label)


async def apply_held(
    pool: asyncpg.Pool, settings: Settings, subscriber_id: int, campaign_id: int, reason: str
) -> str:
    """Erases the person a held mailbox refusal was about, once it is known not to be
    part of a burst (service/outbox/breaker.py): a hard bounce with the intake `smtp`."""
    target = actions.Target(subscriber_id, campaign_id or None)
    return await actions.apply(pool, settings, target, parse.HARD, "smtp", reason)
