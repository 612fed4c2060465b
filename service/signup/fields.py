"""What a typed field may hold, wherever a person or an operator types it: the sign-up
form and script, the confirmation page, the person's own page, the admin API and the
list import all hold names, addresses and sources to the same rules."""

from __future__ import annotations

import unicodedata
from typing import Any

from service.i18n import N_

NAME_MAX = 100
SOURCE_MAX = 200
EMAIL_MAX = 320  # RFC 5321's 64-character local part, "@" and 255-character domain
_TRUE = frozenset({"1", "on", "true", "yes"})


def has_control(text: str) -> bool:
    """Line breaks, control and format characters: what could forge a header or a log line."""
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


def printable(text: str, limit: int) -> str:
    """The text without control characters, cut to `limit`: safe to show back."""
    return "".join(c for c in text if not has_control(c))[:limit]


def truthy(value: Any) -> bool:
    """A ticked checkbox (`on`), a JSON true, or the usual words for yes."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() in _TRUE


def clean_name(value: Any) -> tuple[str | None, str | None]:
    """(the name, or None when empty or absent; an error message, or None)."""
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, N_("The name must be text.")
    name = value.strip() or None
    if name and len(name) > NAME_MAX:
        return None, f"The name may have at most {NAME_MAX} characters."
    if name and has_control(name):
        return None, N_("The name must not contain line breaks or control characters.")
    return name, None
