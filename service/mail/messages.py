"""Email messages built safely, and the context every composer gets.

A composer (one per outbox job kind, beside the capability that owns the email: see
service/outbox/kinds.py) turns a claimed outbox row into a message. Every header value
is checked for CR/LF here, so no field a person typed can add a header.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

import jinja2
from email_validator import EmailNotValidError, validate_email

from service import i18n
from service.mail import wire
from service.mail.wire import HeaderInjection, OutgoingEmail
from service.settings import Settings
from service.tokens import Tokens

_HEADER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def _check_header(name: str, value: str) -> None:
    if not name or not set(name) <= _HEADER_NAME_CHARS:
        raise HeaderInjection(f"bad header name {name!r}")
    if any(c in value for c in "\r\n\0"):
        raise HeaderInjection(f"header {name} holds a line break")


def smtp_address(address: str) -> tuple[str, bool]:
    """The address to give the SMTP server, and whether it needs SMTPUTF8.

    Internationalised domains travel as IDNA (`xn--`), which every relay accepts; only
    a non-ASCII local part needs the SMTPUTF8 extension.
    """
    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        raise ValueError("not a valid address") from None
    if valid.ascii_email:
        return valid.ascii_email, False
    return valid.normalized, True


def recipient_header(address: str, name: str | None = None) -> str:
    """`Name <address>` with the name quoted or encoded as the email package decides."""
    envelope, utf8 = smtp_address(address)
    if utf8 or not name:
        return envelope
    return str(Address(display_name=name, addr_spec=envelope))


def build_message(
    settings: Settings,
    *,
    to: str,
    subject: str,
    text: str,
    html: str,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    """A multipart/alternative message from MAIL_FROM; refuses CR/LF in any header."""
    extra = headers or {}
    for name, value in {"To": to, "Subject": subject, **extra}.items():
        _check_header(name, value)
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    # Quoted-printable keeps lines short and 7-bit: no relay needs to re-encode the
    # body, which would break a DKIM signature.
    message.set_content(text, cte="quoted-printable")
    message.add_alternative(html, subtype="html", cte="quoted-printable")
    # After the body: setting content clears (and multipart moves) every Content-* header,
    # Content-Language among them.
    for name, value in extra.items():
        message[name] = value
    return message


def envelope_recipients(message: EmailMessage) -> tuple[list[str], bool]:
    """The `To` addresses as the SMTP server gets them, and whether SMTPUTF8 is needed."""
    recipients, utf8 = [], False
    for address in message["To"].addresses:
        envelope, needs = smtp_address(address.addr_spec)
        recipients.append(envelope)
        utf8 = utf8 or needs
    return recipients, utf8


def to_bytes(message: EmailMessage, smtputf8: bool = False) -> bytes:
    """Wire form; raw UTF-8 headers only when the recipient's address needs them."""
    return message.as_bytes(policy=email.policy.SMTPUTF8 if smtputf8 else email.policy.SMTP)


@dataclass(frozen=True)
class MailContext:
    settings: Settings
    tokens: Tokens
    templates: jinja2.Environment
    skeletons: dict[int, wire.Skeleton] = field(default_factory=dict, compare=False)

    def language(self, stored: str | None) -> str:
        """The language an email to a subscriber speaks: theirs (kept even if LANGUAGES
        shrank since they chose it), else the first of LANGUAGES."""
        return i18n.spoken(stored, self.settings.languages)

    def skeleton(self, campaign_id: int) -> wire.Skeleton:
        """The campaign's skeleton, made on its first email (campaigns never change)."""
        found = self.skeletons.get(campaign_id)
        if found is None:
            if len(self.skeletons) >= 64:
                self.skeletons.clear()
            found = self.skeletons[campaign_id] = wire.Skeleton(self.settings)
        return found


def outgoing(message: EmailMessage) -> OutgoingEmail:
    """A message built with the email package (confirmations) in the form the worker sends."""
    recipients, smtputf8 = envelope_recipients(message)
    return OutgoingEmail(
        recipients=tuple(recipients),
        smtputf8=smtputf8,
        data=to_bytes(message, smtputf8),
    )
