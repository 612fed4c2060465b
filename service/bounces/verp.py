"""VERP (variable envelope return path): each email's envelope sender names that email,
so a bounce says which delivery failed without anyone parsing its text.

`{BOUNCE_LOCAL}+{token}@{BOUNCE_DOMAIN}`, the token a purpose-bound AES-SIV token
(service/tokens.py, `Tokens.bounce`: subscriber, campaign, time of sending) in
lower-case base32: the local part stays within RFC 5321's 64 octets and survives relays
that change its case.

Where a token counts: the SMTP receiver's envelope recipient, and in a mailbox the
headers that carry the envelope recipient (`Delivered-To`, `X-Original-To`,
`Envelope-To`) or the report's own `To:` (a DSN goes to the return path). A return path
quoted anywhere else (the returned message's headers, the text) is not evidence: anyone
can write text.
"""

from __future__ import annotations

import email.parser
import email.policy
import re

from service.settings import Settings
from service.tokens import BOUNCE_TOKEN_LENGTH, BounceClaim, InvalidToken, Tokens

Delivery = BounceClaim
ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To")
MAX_HEADER_TOKENS = 20  # as many as the SMTP receiver takes recipients


def return_path(
    settings: Settings, tokens: Tokens, subscriber_id: int, campaign_id: int | None
) -> str | None:
    """The envelope sender for one email, or None without BOUNCE_DOMAIN (or for a
    subscriber id beyond what a token holds, 2**40: that email's bounces go unread)."""
    if not settings.bounce_domain:
        return None
    try:
        token = tokens.bounce(subscriber_id, campaign_id)
    except ValueError:
        return None
    return f"{settings.bounce_local}+{token}@{settings.bounce_domain}"


def _pattern(settings: Settings) -> re.Pattern[str]:
    local, domain = re.escape(settings.bounce_local), re.escape(settings.bounce_domain)
    return re.compile(
        rf"(?<![\w.+-]){local}\+([a-z2-7]{{{BOUNCE_TOKEN_LENGTH}}})@{domain}(?![\w-])",
        re.IGNORECASE,
    )


def delivery_of(settings: Settings, tokens: Tokens, address: str) -> Delivery | None:
    """The email a return-path address names; None for any other address or a bad token."""
    if not settings.bounce_domain:
        return None
    match = _pattern(settings).fullmatch(address.strip().strip("<>"))
    if match is None:
        return None
    try:
        return tokens.verify_bounce(match.group(1))
    except InvalidToken:
        return None


def deliveries_in(settings: Settings, tokens: Tokens, text: str) -> list[Delivery]:
    """Every valid return path in a text (one per email), at most MAX_HEADER_TOKENS."""
    if not settings.bounce_domain:
        return []
    found: list[Delivery] = []
    for match in _pattern(settings).finditer(text):
        try:
            delivery = tokens.verify_bounce(match.group(1))
        except InvalidToken:
            continue
        if all(d[:2] != delivery[:2] for d in found):
            found.append(delivery)
        if len(found) == MAX_HEADER_TOKENS:
            break
    return found


def envelope_deliveries(settings: Settings, tokens: Tokens, raw: bytes) -> list[Delivery]:
    """The return paths a message in a mailbox was delivered to: only in its own
    ENVELOPE_HEADERS (never in its body or the returned message it quotes)."""
    if not settings.bounce_domain:
        return []
    head = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    values = [str(v) for name in ENVELOPE_HEADERS for v in head.get_all(name, [])]
    return deliveries_in(settings, tokens, "\n".join(values))
