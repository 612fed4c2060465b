"""In-process DKIM signing (RFC 6376), for operators whose relay does not sign.

RFC 8058 one-click unsubscribe only counts when the signature covers
`List-Unsubscribe` and `List-Unsubscribe-Post`. The headers that must never change
(From, Subject, the List-* pair) are signed once more than they occur ("oversigned"),
so a relay or attacker cannot add a second copy without breaking the signature.

The key is parsed once and the signature is made by OpenSSL through `cryptography`
(0.2 ms for RSA 2048 where dkimpy's pure-Python RSA took 6.5 ms, on the event loop).
The algorithm follows the key: an RSA key signs `rsa-sha256`, an Ed25519 key
`ed25519-sha256` (RFC 8463: Ed25519 over the SHA-256 hash of the signed data). The
canonicalisation is relaxed/relaxed (RFC 6376 section 3.4.2 and 3.4.4); dkimpy
verifies what this module signs in the tests.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from service import keys

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

_WSP_RUN = re.compile(rb"[ \t]+")
_UNFOLD = re.compile(rb"\r\n(?=[ \t])")


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2: lower-case name, value unfolded, runs of WSP as one SP, trimmed."""
    value = _WSP_RUN.sub(b" ", _UNFOLD.sub(b"", value)).strip(b" ")
    return name.strip().lower() + b":" + value + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: no WSP at line ends, runs of WSP as one SP, no empty lines at the end.

    Only what needs changing is touched: a tab, two WSP in a row or a SP before a line
    break; a body of single spaces (most of ours: quoted-printable keeps no tab and no
    space at a line's end) is scanned, not rewritten, which is ten times quicker."""
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)  # now every run of WSP is one SP
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    if body.endswith(b" "):
        body = body[:-1]
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The (name, value) header fields in order, values with their folding, and the body."""
    head, _, body = message.partition(b"\r\n\r\n")
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields, body


def _fold_names(names: list[str], width: int = 70) -> str:
    """The h= list folded (FWS is allowed around its colons) to keep lines under 78."""
    lines, line = [], "   "
    for name in names:
        if len(line) + len(name) + 1 > width:
            lines.append(line)
            line = ""
        line += name + ":"
    lines.append(line)
    return "\r\n ".join(lines).strip()[:-1]


@dataclass(frozen=True)
class Signer:
    """One domain's key, parsed once; `sign` prepends a `DKIM-Signature` header."""

    selector: str
    domain: str
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @property
    def algorithm(self) -> str:
        return "ed25519-sha256" if isinstance(self.key, ed25519.Ed25519PrivateKey) else "rsa-sha256"

    def sign(self, message: bytes, now: int | None = None) -> bytes:
        fields, body = split_message(message)
        present: dict[bytes, list[bytes]] = {}
        for name, value in fields:
            present.setdefault(name.strip().lower(), []).append(value)
        signed = [h for h in SIGNED if h.lower().encode() in present]
        signed += [h for h in OVERSIGNED if h.lower().encode() in present]
        # RFC 6376 5.4.2: each listed name takes the last not yet used field of that
        # name, from the bottom up; a name listed more often than it occurs adds nothing.
        canonical = []
        remaining = {name: list(values) for name, values in present.items()}
        for header in signed:
            values = remaining[header.lower().encode()]
            if values:
                canonical.append(relaxed_header(header.encode(), values.pop()))
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
        timestamp = int(time.time()) if now is None else now
        tags = (
            f" v=1; a={self.algorithm}; c=relaxed/relaxed;"
            f"\r\n d={self.domain}; s={self.selector}; t={timestamp};"
            f"\r\n h={_fold_names([h.lower() for h in signed])};"
            f"\r\n bh={body_hash};\r\n b="
        ).encode()
        data = b"".join(canonical) + relaxed_header(b"DKIM-Signature", tags)[:-2]
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            signature = self.key.sign(hashlib.sha256(data).digest())
        else:
            signature = self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        b64 = base64.b64encode(signature)
        folded = b"\r\n ".join(b64[i : i + 72] for i in range(0, len(b64), 72))
        return b"DKIM-Signature:" + tags + folded + b"\r\n" + message


@functools.cache
def _signer(path: str, selector: str, domain: str) -> Signer:
    return Signer(selector, domain, keys.dkim_private_key(Path(path).read_bytes()))


def signer(key_file: str, selector: str, domain: str) -> Signer | None:
    """The configured signer (the key read and parsed once per process), or None when
    DKIM_PRIVATE_KEY_FILE, DKIM_SELECTOR and DKIM_DOMAIN are not set (settings checks
    at start that they come together and that the key loads)."""
    if not (key_file and selector and domain):
        return None
    return _signer(key_file, selector, domain)


def dns_record(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The TXT record to publish at `{selector}._domainkey.{domain}` for this key."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
