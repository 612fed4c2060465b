"""What a message returned to the bounce address says: a hard or soft bounce, a
complaint, or nothing to act on.

In this order:

1. a complaint: an ARF feedback report (RFC 5965) of type `abuse`, `fraud` or `virus`;
2. a delivery status notification (RFC 3464): per recipient, `Action: failed` with a
   `Status:` of class 5 is hard, of class 4 soft; `delayed`, `delivered`, `relayed`
   and `expanded` are not bounces;
3. an auto-reply (RFC 3834 `Auto-Submitted`, and the older vacation markers), unless
   it comes from a mail system (`MAILER-DAEMON`, `postmaster`): not a bounce;
4. any other bounce format, through `flufl.bounce` (GNU Mailman's detectors): its
   permanent failures are hard, its warnings ("still trying") are not bounces.

A status of class 5.7 (security or policy: the receiving system refused *our* mail,
e.g. as spam or for DMARC) says nothing about the address, and 5.2.2 (mailbox full) may
pass, so both count as soft: only repeated ones end the subscription. `reason` is the status code or a fixed word, never
text from the message (which quotes addresses).
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


def status_event(status: str) -> tuple[str, str] | None:
    """(event, code) for an enhanced status code somewhere in `status` (RFC 3463)."""
    match = _STATUS.search(status)
    if match is None:
        return None
    code = match.group(0)
    klass, subject = match.group(1), match.group(2)
    if klass == "5" and subject != "7" and code != "5.2.2":
        return HARD, code
    if klass in ("4", "5"):
        return SOFT, code
    return IGNORE, code


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
        elif action == "failed":
            event, reason = HARD, "failed"
        else:
            continue
        if event != IGNORE:
            recipients += [a for a in named if a and a not in recipients]
        if _SEVERITY[event] > _SEVERITY[worst.event]:
            worst = Report(event, reason, "dsn")
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
        decided = status_event(_text_of(message))
        if decided is not None and decided[0] != IGNORE:
            return Report(decided[0], decided[1], "heuristic", recipients)
        return Report(HARD, "unstructured", "heuristic", recipients)
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
