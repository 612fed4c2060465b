"""VERP (variable envelope return path): each email's envelope sender names that email,
so a bounce says which delivery failed without anyone parsing its text.

`{BOUNCE_LOCAL}+{token}@{BOUNCE_DOMAIN}`, the token a purpose-bound AES-SIV token
(service/tokens.py, `Tokens.bounce`) in lower-case base32: the local part stays within
RFC 5321's 64 octets and survives relays that change its case.
"""

from __future__ import annotations

import re

from service.settings import Settings
from service.tokens import BOUNCE_TOKEN_LENGTH, InvalidToken, Tokens

Delivery = tuple[int, int | None]  # subscriber id, campaign id (None: the confirmation)


def return_path(
    settings: Settings, tokens: Tokens, subscriber_id: int, campaign_id: int | None
) -> str | None:
    """The envelope sender for one email, or None without BOUNCE_DOMAIN."""
    if not settings.bounce_domain:
        return None
    token = tokens.bounce(subscriber_id, campaign_id)
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
    """Every valid return path quoted anywhere in a text (a mailbox's bounce keeps the
    envelope recipient in Delivered-To or X-Original-To, a report the returned headers)."""
    if not settings.bounce_domain:
        return []
    found: list[Delivery] = []
    for match in _pattern(settings).finditer(text):
        try:
            delivery = tokens.verify_bounce(match.group(1))
        except InvalidToken:
            continue
        if delivery not in found:
            found.append(delivery)
    return found
