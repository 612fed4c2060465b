"""What a message returned to the bounce address says: a hard or soft bounce, a
complaint, or nothing to act on.

In this order:

1. a complaint: an ARF feedback report (RFC 5965) of type `abuse`, `fraud` or `virus`;
2. a delivery status notification (RFC 3464): per recipient, `Action: failed` decides
   by its `Status:` as below (without one: soft); `delayed`, `delivered`, `relayed` and
   `expanded` are not bounces;
3. an auto-reply (RFC 3834 `Auto-Submitted`, and the older vacation markers), unless
   it comes from a mail system (`MAILER-DAEMON`, `postmaster`): not a bounce;
4. any other bounce format, through `flufl.bounce` (GNU Mailman's detectors): its
   permanent failures decide by the status code in the text as below (without one:
   soft), its warnings ("still trying") are not bounces.

Only a status about the recipient's mailbox (RFC 3463) is about the address:
class 5 with X.1.1 (no such mailbox), X.1.2 (no such system), X.1.3 (bad mailbox
syntax), X.1.6 (mailbox moved), X.1.10 (no answer for the recipient, RFC 7505's null MX)
or X.2.1 (mailbox disabled) is hard; the mailbox's temporary states (class 4 of those,
and X.2.x other than 5.2.1: full, message too long) are soft, and only repeated ones
end the subscription. Everything else says nothing about the address and is ignored
here, even repeated: the sender (X.1.7, X.1.8), the receiving system (X.3), routing and
the network (X.4, including 5.4.5 "sending quota exceeded"), the protocol (X.5), the
content (X.6) and policy (X.7: spam blocks, DMARC). `status_category` names which of
these a status is, for the operator (logs, metrics, campaign stats). `reason` is the
status code or a fixed word, never text from the message (which quotes addresses).
"""

from __future__ import annotations

import email
import email.message
import logging
import re
from dataclasses import dataclass, field
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures

log = logging.getLogger("newsletter.bounces")

HARD, SOFT, COMPLAINT, IGNORE = "hard", "soft", "complaint", "ignore"
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus"})
# The registered Feedback-Type values (RFC 5965 7.3, RFC 6430, RFC 6591): the only ones a
# reason (which is logged and counted) may name; any other text the sender chose is "other".
_FEEDBACK_TYPES = frozenset({*_COMPLAINT_TYPES, "other", "not-spam", "auth-failure"})
_NOT_BOUNCES = frozenset({"delayed", "delivered", "relayed", "expanded"})
_DAEMONS = frozenset({"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"})
_SEVERITY = {HARD: 3, COMPLAINT: 3, SOFT: 2, IGNORE: 0}


@dataclass(frozen=True)
class Report:
    event: str  # hard, soft, complaint or ignore
    reason: str  # a status code (5.1.1) or a fixed word; never message text
    source: str  # dsn, arf, heuristic
    recipients: tuple[str, ...] = field(default=())  # addresses the report names, lower case


# RFC 3463 section 3.2 and 3.3: X.1.1, X.1.2, X.1.3, X.1.6, X.1.10 and X.2.1 say that
# the recipient's mailbox does not exist or takes no mail (RFC 7505 added X.1.10).
MAILBOX_GONE = frozenset({(1, 1), (1, 2), (1, 3), (1, 6), (1, 10), (2, 1)})
# Which part of the path a status is about (RFC 3463 section 3, by subject and detail):
# the categories an operator sees when a relay refuses mail.
MAILBOX, MAILBOX_FULL, SENDER, ADDRESS = "mailbox", "mailbox_full", "sender", "address"
SYSTEM, ROUTING, QUOTA, PROTOCOL, CONTENT, POLICY, OTHER = (
    "system",
    "routing",
    "quota",
    "protocol",
    "content",
    "policy",
    "other",
)
_BY_SUBJECT = {"3": SYSTEM, "4": ROUTING, "5": PROTOCOL, "6": CONTENT, "7": POLICY}


def status_category(status: str) -> str:
    """The category of the first enhanced status code in `status`, or `other`."""
    match = _STATUS.search(status)
    if match is None:
        return OTHER
    subject, detail = int(match.group(2)), int(match.group(3))
    if (subject, detail) in MAILBOX_GONE:
        return MAILBOX
    if subject == 2:
        return MAILBOX_FULL
    if subject == 1:
        return SENDER if detail in (7, 8) else ADDRESS
    if (subject, detail) == (4, 5):  # "mail system congestion": quotas and throttles
        return QUOTA
    return _BY_SUBJECT.get(match.group(2), OTHER)


def status_event(status: str) -> tuple[str, str] | None:
    """(event, code) for an enhanced status code somewhere in `status` (RFC 3463): hard
    only for a class-5 status saying the recipient's mailbox is gone, soft for the
    mailbox's temporary states, ignore for everything else (see the module docstring)."""
    match = _STATUS.search(status)
    if match is None:
        return None
    code = match.group(0)
    klass, subject, detail = match.group(1), int(match.group(2)), int(match.group(3))
    about_the_mailbox = subject == 2 or (subject, detail) in MAILBOX_GONE
    if klass == "2" or not about_the_mailbox:
        return IGNORE, code
    if klass == "5" and (subject, detail) in MAILBOX_GONE:
        return HARD, code
    return SOFT, code


def _address(value: str | None) -> str | None:
    """`rfc822; user@example.org` -> `user@example.org`."""
    if not value:
        return None
    address = value.split(";", 1)[-1].strip().strip("<>").strip().lower()
    return address if "@" in address else None


def _blocks(part: email.message.Message) -> list[email.message.Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, email.message.Message)]
    if isinstance(payload, str):  # an unparsed block: parse its header fields
        return [email.message_from_string(b.strip() + "\n") for b in re.split(r"\n\s*\n", payload)]
    return []


def _report_part(message: email.message.Message, content_type: str) -> email.message.Message | None:
    for part in message.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def _feedback(message: email.message.Message) -> Report | None:
    part = _report_part(message, "message/feedback-report")
    if part is None:
        return None
    fields: dict[str, str] = {}
    recipients: list[str] = []
    for block in _blocks(part):
        for name, value in block.items():
            fields.setdefault(name.lower(), str(value).strip())
            if name.lower() == "original-rcpt-to" and (address := _address(str(value))):
                recipients.append(address)
    kind = fields.get("feedback-type", "").lower()
    if kind in _COMPLAINT_TYPES:
        return Report(COMPLAINT, kind, "arf", tuple(recipients))
    return Report(IGNORE, f"feedback-{kind if kind in _FEEDBACK_TYPES else 'other'}", "arf")


def _delivery_status(message: email.message.Message) -> Report | None:
    part = _report_part(message, "message/delivery-status")
    if part is None:
        return None
    worst = Report(IGNORE, "no-failure", "dsn")
    recipients: list[str] = []
    for block in _blocks(part)[1:] or _blocks(part):  # the first block is per message
        action = str(block.get("Action", "")).strip().lower()
        status = str(block.get("Status", "")) or str(block.get("Diagnostic-Code", ""))
        decided = status_event(status)
        # Original-Recipient is the address as we sent it (RFC 3464 2.3.1), Final-Recipient
        # the one after forwarding or aliasing: both may be what we know.
        named = [_address(block.get(f)) for f in ("Original-Recipient", "Final-Recipient")]
        if action in _NOT_BOUNCES:
            event, reason = IGNORE, action
        elif decided is not None and (action == "failed" or not action):
            event, reason = decided
        elif action == "failed":  # no status code: not evidence of a dead mailbox alone
            event, reason = SOFT, "failed"
        else:
            continue
        if event != IGNORE:
            recipients += [a for a in named if a and a not in recipients]
        if _SEVERITY[event] > _SEVERITY[worst.event] or worst.reason == "no-failure":
            worst = Report(event, reason, "dsn")  # a failure not about the address: its code
    return Report(worst.event, worst.reason, "dsn", tuple(recipients))


def _auto_reply(message: email.message.Message) -> bool:
    sender = parseaddr(str(message.get("From", "")))[1].lower()
    if sender.partition("@")[0] in _DAEMONS:
        return False
    submitted = str(message.get("Auto-Submitted", "no")).strip().lower()
    precedence = str(message.get("Precedence", "")).strip().lower()
    return (
        not submitted.startswith("no")
        or precedence == "auto_reply"
        or any(name in message for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"))
    )


def _text_of(message: email.message.Message) -> str:
    texts = []
    for part in message.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                texts.append(payload.decode("utf-8", "replace"))
    return "\n".join(texts)


def _heuristic(message: email.message.Message) -> Report:
    try:
        temporary, permanent = all_failures(message)
    except Exception as exc:  # a detector choking on a malformed message: not a bounce
        log.info("bounce detectors failed", extra={"error": exc.__class__.__name__})
        return Report(IGNORE, "unreadable", "heuristic")
    failed = [*getaddresses(message.get_all("X-Failed-Recipients", []))]
    recipients = tuple(
        sorted(
            {a.decode("utf-8", "replace").lower() for a in permanent}
            | {address.lower() for _name, address in failed if "@" in address}
        )
    )
    if permanent:
        # A status code in the text decides as in a DSN (a policy or quota code ignores it);
        # without one, "permanent" is a detector's reading of free text: soft, so only
        # repeated failures of separate emails end the subscription.
        decided = status_event(_text_of(message))
        if decided is not None:
            return Report(decided[0], decided[1], "heuristic", recipients)
        return Report(SOFT, "unstructured", "heuristic", recipients)
    if temporary:
        return Report(IGNORE, "delayed", "heuristic")
    return Report(IGNORE, "not-a-bounce", "heuristic")


def parse(raw: bytes) -> Report:
    """What the message says; never raises on malformed input."""
    message = email.message_from_bytes(raw)
    if message.get_content_type() == "multipart/report" or _report_part(
        message, "message/feedback-report"
    ):
        report_type = str(message.get_param("report-type", "") or "").lower()
        found = (
            _feedback(message) if report_type != "delivery-status" else None
        ) or _delivery_status(message)
        if found is not None:
            return found
    if _auto_reply(message):
        return Report(IGNORE, "auto-reply", "heuristic")
    return _heuristic(message)
