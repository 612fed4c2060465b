"""Campaign emails written straight to bytes, from a skeleton made once per campaign.

The standard library's `EmailMessage` parses and re-folds every header through a class
made per header (`HeaderRegistry`) and encodes bodies in Python: 1.5 ms per email, half
of a send. A campaign's emails differ only in a few headers and their bodies, so the
static part (From, MIME-Version, the multipart boundary, each part's headers) is
rendered once into a `Skeleton`, and each email adds its own lines:

- headers are ASCII: a display name or subject that is not plain printable ASCII
  becomes RFC 2047 encoded words (`=?utf-8?b?…?=`, at most 75 characters each, split on
  character boundaries); ASCII subjects are folded at spaces, so no line passes 78
  characters except an unbreakable word (never 998: subjects are at most 300);
- bodies are quoted-printable (`binascii.b2a_qp`, in C): 7-bit lines of at most 76
  characters, so no relay needs to re-encode them and break a DKIM signature;
- the boundary starts with `=_`, which quoted-printable text can never contain.

`tests/mail/test_mailbuild.py` parses what this module writes with the standard library and
with a second parser (Rust's mail-parser) and verifies its DKIM signature.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from email.utils import formatdate, parseaddr

from service.settings import Settings

_ATEXT_SPACE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~ "
)
_PRINTABLE = frozenset(chr(c) for c in range(32, 127))
# An encoded word is at most 75 characters: "=?utf-8?b?" + base64 + "?=" leaves 63
# characters of base64, 45 bytes of UTF-8 (a multiple of 3: no padding in between).
_WORD_BYTES = 45
FOLD = "\r\n "  # a header continues on the next line (RFC 5322 folding)


class HeaderInjection(ValueError):
    """A header value would have broken out of its line."""


@dataclass(frozen=True)
class OutgoingEmail:
    """One email ready for SMTP: the envelope and the bytes of the message."""

    recipients: tuple[str, ...]
    smtputf8: bool
    data: bytes


def _check(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise HeaderInjection("a header value holds a line break")
    return value


def encoded_words(text: str) -> list[str]:
    """RFC 2047 B-encoded words of UTF-8, each at most 75 characters, split between
    characters (a word may not end inside a multi-byte character)."""
    words, chunk, size = [], [], 0
    for char in text:
        n = len(char.encode("utf-8"))
        if size + n > _WORD_BYTES:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(char)
        size += n
    if chunk:
        words.append("".join(chunk))
    return [f"=?utf-8?b?{base64.b64encode(w.encode('utf-8')).decode('ascii')}?=" for w in words]


def _needs_encoding(text: str) -> bool:
    return not set(text) <= _PRINTABLE or "=?" in text


def display_name(name: str) -> str:
    """A display name as an RFC 5322 phrase: atoms, a quoted string, or encoded words."""
    name = " ".join(_check(name).split())
    if _needs_encoding(name):
        return FOLD.join(encoded_words(name))
    if set(name) <= _ATEXT_SPACE:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unstructured(name: str, text: str) -> str:
    """An unstructured header (Subject) folded to at most 78 characters a line where it
    has spaces to fold at; encoded words when it is not printable ASCII."""
    _check(text)
    if _needs_encoding(text):
        return f"{name}: " + FOLD.join(encoded_words(text))
    lines, line = [], f"{name}:"
    for i, word in enumerate(text.split(" ")):
        piece = word if i == 0 else " " + word
        if i == 0:
            line += " " + word
        elif len(line) + len(piece) > 78 and line.strip():
            lines.append(line)
            line = piece
        else:
            line += piece
    lines.append(line)
    return "\r\n".join(lines)


def quoted_printable(text: str) -> bytes:
    """A body part as quoted-printable with CRLF line ends (lines of at most 76)."""
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    return binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")


class Skeleton:
    """What every email of one campaign shares, rendered once."""

    def __init__(self, settings: Settings, list_unsubscribe_post: bool = True) -> None:
        self.domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "localhost"
        self.boundary = "=_" + secrets.token_hex(12)
        from_name, from_address = parseaddr(settings.mail_from)
        sender = f"{display_name(from_name)} <{from_address}>" if from_name else from_address
        self.head = f"From: {sender}\r\nMIME-Version: 1.0\r\n".encode("ascii")
        self.tail = (
            (
                "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                if list_unsubscribe_post
                else ""
            )
            + f'Content-Type: multipart/alternative; boundary="{self.boundary}"\r\n\r\n'
        ).encode("ascii")
        part = (
            f'--{self.boundary}\r\nContent-Type: text/%s; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        )
        self.text_head = (part % "plain").encode("ascii")
        self.html_head = b"\r\n" + (part % "html").encode("ascii")
        self.end = f"\r\n--{self.boundary}--\r\n".encode("ascii")

    def render(
        self,
        *,
        to: str,
        subject: str,
        text: str,
        html: str,
        list_unsubscribe: str | None = None,
        list_id: str | None = None,
        extra_headers: tuple[str, ...] = (),
        content_language: str | None = None,
    ) -> bytes:
        """One email: `to` is the To header's value (see `recipient`), which may be
        folded; every other value must be a single line (`extra_headers`: whole
        `Name: value` lines)."""
        _check(to.replace(FOLD, ""))
        lines = [
            f"To: {to}",
            unstructured("Subject", subject),
            f"Date: {formatdate(usegmt=True)}",
            f"Message-ID: <{secrets.token_hex(16)}@{self.domain}>",
        ]
        if list_unsubscribe is not None:
            # One line however long (well under 998): relays that re-fold it break DKIM.
            lines.append(f"List-Unsubscribe: <{_check(list_unsubscribe)}>")
        if list_id is not None:
            lines.append(f"List-Id: {_check(list_id)}")  # RFC 2919
        lines.extend(_check(header) for header in extra_headers)
        if content_language is not None:
            lines.append(f"Content-Language: {_check(content_language)}")  # RFC 3282
        headers = ("\r\n".join(lines) + "\r\n").encode("utf-8")
        text_qp = quoted_printable(text)
        html_qp = quoted_printable(html)
        return b"".join(
            (
                self.head,
                headers,
                self.tail,
                self.text_head,
                text_qp,
                self.html_head,
                html_qp,
                self.end,
            )
        )


def recipient(envelope: str, smtputf8: bool, name: str | None) -> str:
    """The To header's value: `Name <address>`, or the bare address when the local part
    is not ASCII (the header is then UTF-8, as SMTPUTF8 allows) or there is no name."""
    name = " ".join((name or "").split())
    if smtputf8 or not name:
        return envelope
    return f"{display_name(name)} <{envelope}>"
