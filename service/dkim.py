"""In-process DKIM signing, for operators whose relay does not sign.

RFC 8058 one-click unsubscribe only counts when the signature covers
`List-Unsubscribe` and `List-Unsubscribe-Post`. The headers that must never change
(From, Subject, the List-* pair) are signed once more than they occur ("oversigned"),
so a relay or attacker cannot add a second copy without breaking the signature.
"""

from __future__ import annotations

import functools
from pathlib import Path

import dkim as dkimpy

from service.settings import Settings

SIGNED = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
OVERSIGNED = ("From", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post")


def enabled(settings: Settings) -> bool:
    return bool(settings.dkim_private_key_file and settings.dkim_selector and settings.dkim_domain)


@functools.cache
def _key(path: str) -> bytes:
    return Path(path).read_bytes()


def _present(message: bytes) -> set[str]:
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    names = set()
    for line in head.splitlines():
        if line and line[:1] not in (b" ", b"\t") and b":" in line:
            names.add(line.split(b":", 1)[0].strip().decode("ascii", "replace").lower())
    return names


def sign(message_bytes: bytes, settings: Settings) -> bytes:
    """The message with a `DKIM-Signature` header prepended (relaxed/relaxed, rsa-sha256)."""
    present = _present(message_bytes)
    headers = [h for h in SIGNED if h.lower() in present]
    headers += [h for h in OVERSIGNED if h.lower() in present]
    signature = dkimpy.sign(
        message_bytes,
        settings.dkim_selector.encode(),
        settings.dkim_domain.encode(),
        _key(settings.dkim_private_key_file),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[h.encode() for h in headers],
    )
    return signature + message_bytes
