"""The tokens in email links: opaque, purpose-bound, and keyed by `SECRET_KEYS`.

A token is the deterministic authenticated encryption (AES-SIV, RFC 5297) of a few packed
integers — the subscriber id, the campaign id, the time of issue — with the token's
purpose as associated data, in unpadded base64url. So a link tells nobody who handles it
(a mail relay, a proxy's or an ingress's access log, the person it was forwarded to)
anything: not the id, not how many subscribers or campaigns there are, not the order in
which people signed up. It cannot be altered or used for another purpose, and the same
input always gives the same token (the campaign-only pixel of a campaign is one URL for
every recipient, so it cannot single anyone out). Ids are never reused, so the tokens of
an erased subscriber point at nothing.

The first of `SECRET_KEYS` encrypts and every key decrypts, so keys rotate without
breaking links in mail already sent. Confirmation and cancel tokens expire
(`CONFIRM_MAX_AGE`, from the time of issue inside the token), and so do the tokens that
name a row of their own (a fresh manage link: MANAGE_LINK_MAX_AGE; an address change's
confirmation: CONFIRM_MAX_AGE), whose row is what makes them work once; the others never
expire, because old emails must keep working.

Links mailed by earlier releases (itsdangerous signatures over base-36 ids, recognisable
by their `.`) are still accepted, decoded strictly; no new token is made that way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from itsdangerous import BadData, SignatureExpired, Signer, TimestampSigner

CONFIRM = "newsletter.confirm"
CANCEL = "newsletter.cancel"
UNSUBSCRIBE = "newsletter.unsubscribe"
UNSUBSCRIBE_CAMPAIGN = "newsletter.unsubscribe.campaign"  # a topic campaign's: leaves its topics
TRACKING = "newsletter.tracking"
MANAGE = "newsletter.manage"
MANAGE_LINK = "newsletter.manage.link"
ADDRESS_CONFIRM = "newsletter.manage.address"
PIXEL = "newsletter.pixel"
CAMPAIGN_PIXEL = "newsletter.pixel.campaign"
BOUNCE = "newsletter.bounce"  # earlier releases' return paths: no time of sending
BOUNCE_SENT = "newsletter.bounce.sent"

MAX_LENGTH = 200
_ONE_ID = struct.Struct(">Q")  # unsubscribe, tracking, manage, campaign-only pixel
_TWO_IDS = struct.Struct(">QQ")  # pixel: subscriber, campaign
_TIMED = struct.Struct(">QI")  # confirm, cancel: subscriber, issued at (epoch seconds)
_ROW_TIMED = struct.Struct(">QQI")  # manage link, address change: subscriber, row, issued at
_DELIVERY = struct.Struct(">QI")  # earlier bounce tokens: subscriber, campaign (0: confirmation)
# Bounce tokens: subscriber (40 bits), campaign (32 bits, 0: the confirmation email) and
# the time of sending in BOUNCE_TIME_UNIT steps (24 bits: until the year 2129), the same
# 12 bytes as _DELIVERY, so the token keeps its 45 characters.
BOUNCE_MAX_SUBSCRIBER = 2**40 - 1
BOUNCE_TIME_UNIT = 300  # seconds
BOUNCE_TOKEN_LENGTH = 45  # base32 characters of 12 bytes + tag (224 bits)
_SIV_TAG = 16
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_BASE32 = re.compile(r"[A-Z2-7]+")
_CLOCK_SKEW = 300.0  # seconds a token may seem to come from the future (replica clocks)


class InvalidToken(Exception):
    """Forged, malformed or (for timed tokens) expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # 'forged', 'malformed' or 'expired'; safe to log


@dataclass(frozen=True, slots=True)
class PixelClaim:
    """Whose open it is. `subscriber_id` is None for a campaign-only pixel."""

    subscriber_id: int | None
    campaign_id: int


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(token: str, length: int) -> bytes:
    """The bytes of an unpadded base64url token of exactly `length` bytes, refusing every
    other spelling of them (a changed padding bit, a stray character): one token, one text."""
    if len(token) != (length * 4 + 2) // 3 or not _BASE64URL.fullmatch(token):
        raise InvalidToken("malformed")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except binascii.Error:
        raise InvalidToken("malformed") from None
    if _encode(raw) != token:
        raise InvalidToken("malformed")
    return raw


def _derive(secret: str) -> AESSIV:
    """A 512-bit AES-SIV key of its own, so the token key is not the signing key of the
    dashboard's cookies (which also come from SECRET_KEYS)."""
    return AESSIV(hashlib.sha512(b"newsletter.tokens.v2\0" + secret.encode()).digest())


class Tokens:
    def __init__(
        self,
        secret_keys: tuple[str, ...],
        confirm_max_age: float,
        manage_link_max_age: float = 1800.0,
    ) -> None:
        if not secret_keys:
            raise ValueError("at least one secret key is needed")
        self.confirm_max_age = confirm_max_age
        self.manage_link_max_age = manage_link_max_age
        self._ciphers = tuple(_derive(key) for key in secret_keys)  # newest first
        self._legacy = _LegacyTokens(secret_keys, confirm_max_age)

    # -- the cipher ----------------------------------------------------------------
    def _seal(self, purpose: str, payload: bytes) -> str:
        return _encode(self._ciphers[0].encrypt(payload, [purpose.encode()]))

    def _open(self, purpose: str, token: str, layout: struct.Struct) -> tuple[int, ...]:
        raw = _decode(token, layout.size + _SIV_TAG)
        associated = [purpose.encode()]
        for cipher in self._ciphers:
            try:
                return layout.unpack(cipher.decrypt(raw, associated))
            except InvalidTag:
                continue
        raise InvalidToken("forged")

    def _timed(self, purpose: str, subscriber_id: int) -> str:
        return self._seal(purpose, _TIMED.pack(subscriber_id, int(time.time())))

    def _verify_timed(self, purpose: str, token: str) -> int:
        if "." in token:
            return self._legacy.timed(purpose, token)
        subscriber_id, issued = self._open(purpose, token, _TIMED)
        _check_age(issued, self.confirm_max_age)
        return subscriber_id

    def _row_timed(self, purpose: str, subscriber_id: int, row_id: int) -> str:
        return self._seal(purpose, _ROW_TIMED.pack(subscriber_id, row_id, int(time.time())))

    def _verify_row_timed(self, purpose: str, token: str, max_age: float) -> tuple[int, int]:
        if len(token) > MAX_LENGTH:
            raise InvalidToken("malformed")
        subscriber_id, row_id, issued = self._open(purpose, token, _ROW_TIMED)
        _check_age(issued, max_age)
        return subscriber_id, row_id

    def _verify_plain(self, purpose: str, token: str) -> int:
        if "." in token:
            return self._legacy.plain(purpose, token)
        return self._open(purpose, token, _ONE_ID)[0]

    # -- expire after CONFIRM_MAX_AGE ----------------------------------------------
    def confirm(self, subscriber_id: int) -> str:
        return self._timed(CONFIRM, subscriber_id)

    def verify_confirm(self, token: str) -> int:
        return self._verify_timed(CONFIRM, token)

    def cancel(self, subscriber_id: int) -> str:
        return self._timed(CANCEL, subscriber_id)

    def verify_cancel(self, token: str) -> int:
        return self._verify_timed(CANCEL, token)

    # -- never expire ----------------------------------------------------------------
    def unsubscribe(self, subscriber_id: int) -> str:
        return self._seal(UNSUBSCRIBE, _ONE_ID.pack(subscriber_id))

    def verify_unsubscribe(self, token: str) -> int:
        return self._verify_plain(UNSUBSCRIBE, token)

    def unsubscribe_campaign(self, subscriber_id: int, campaign_id: int) -> str:
        """A topic campaign's unsubscribe link: it leaves that campaign's topics (and
        erases everything when none is left), so it names the campaign too."""
        return self._seal(UNSUBSCRIBE_CAMPAIGN, _TWO_IDS.pack(subscriber_id, campaign_id))

    def verify_unsubscribe_any(self, token: str) -> tuple[int, int | None]:
        """(subscriber id, campaign id) of a topic campaign's link, or (subscriber id,
        None) of the plain one, which erases."""
        if len(token) == 43 and "." not in token:  # _TWO_IDS + tag, base64url
            subscriber_id, campaign_id = self._open(UNSUBSCRIBE_CAMPAIGN, token, _TWO_IDS)
            return subscriber_id, campaign_id
        return self.verify_unsubscribe(token), None

    def tracking(self, subscriber_id: int) -> str:
        return self._seal(TRACKING, _ONE_ID.pack(subscriber_id))

    def verify_tracking(self, token: str) -> int:
        return self._verify_plain(TRACKING, token)

    def manage(self, subscriber_id: int) -> str:
        """The "manage your subscription" link of every campaign email: it opens only what
        is harmless for whoever holds a forwarded email (unsubscribe, withdraw tracking);
        seeing or changing personal data needs a fresh, short-lived link."""
        return self._seal(MANAGE, _ONE_ID.pack(subscriber_id))

    def verify_manage(self, token: str) -> int:
        return self._verify_plain(MANAGE, token)

    # -- name a row of their own, which makes them work once -------------------------
    def manage_link(self, subscriber_id: int, link_id: int) -> str:
        """The fresh link to the person's data: `manage_links` row `link_id`."""
        return self._row_timed(MANAGE_LINK, subscriber_id, link_id)

    def verify_manage_link(self, token: str) -> tuple[int, int]:
        """(subscriber id, link id); expired after MANAGE_LINK_MAX_AGE."""
        return self._verify_row_timed(MANAGE_LINK, token, self.manage_link_max_age)

    def address_confirm(self, subscriber_id: int, change_id: int) -> str:
        """The new address's confirmation: `address_changes` row `change_id`."""
        return self._row_timed(ADDRESS_CONFIRM, subscriber_id, change_id)

    def verify_address_confirm(self, token: str) -> tuple[int, int]:
        """(subscriber id, change id); expired after CONFIRM_MAX_AGE."""
        return self._verify_row_timed(ADDRESS_CONFIRM, token, self.confirm_max_age)

    def pixel(self, subscriber_id: int, campaign_id: int) -> str:
        """The personal pixel: only for a subscriber whose opens may be recorded."""
        return self._seal(PIXEL, _TWO_IDS.pack(subscriber_id, campaign_id))

    def campaign_pixel(self, campaign_id: int) -> str:
        """The campaign-only pixel: the same token for every recipient of the campaign."""
        return self._seal(CAMPAIGN_PIXEL, _ONE_ID.pack(campaign_id))

    def verify_pixel(self, token: str) -> PixelClaim:
        """The pixel verifies a token per request: one decode and one AES-SIV decryption
        (OpenSSL), as cheap as the HMAC it replaced (`bench/bench_tokens.py`)."""
        if len(token) > MAX_LENGTH:
            raise InvalidToken("malformed")
        if "." in token:
            return self._legacy.pixel(token)
        if len(token) == 43:  # _TWO_IDS + tag, base64url
            subscriber_id, campaign_id = self._open(PIXEL, token, _TWO_IDS)
            return PixelClaim(subscriber_id, campaign_id)
        return PixelClaim(None, self._open(CAMPAIGN_PIXEL, token, _ONE_ID)[0])

    # -- the VERP return path (service/bounces/verp.py) -------------------------------
    def bounce(self, subscriber_id: int, campaign_id: int | None, at: float | None = None) -> str:
        """Names one email (campaign None: the confirmation) and when it was sent (`at`,
        now by default) in its envelope sender, so a late report is matched to the
        address the email went to (`BounceClaim.sent_after`). In lower-case base32, 45
        characters: a local part is at most 64 octets (RFC 5321 4.5.3.1.1) and some
        relays change its case. ValueError above BOUNCE_MAX_SUBSCRIBER."""
        if not 0 < subscriber_id <= BOUNCE_MAX_SUBSCRIBER:
            raise ValueError("subscriber id out of the bounce token's range")
        steps = int(time.time() if at is None else at) // BOUNCE_TIME_UNIT
        payload = (
            subscriber_id.to_bytes(5, "big")
            + (campaign_id or 0).to_bytes(4, "big")
            + steps.to_bytes(3, "big")
        )
        raw = self._ciphers[0].encrypt(payload, [BOUNCE_SENT.encode()])
        return base64.b32encode(raw).decode().rstrip("=").lower()

    def verify_bounce(self, token: str) -> BounceClaim:
        """The email a return path names; accepts the token in either case."""
        text = token.upper()
        if len(text) != BOUNCE_TOKEN_LENGTH or not _BASE32.fullmatch(text):
            raise InvalidToken("malformed")
        raw = base64.b32decode(text + "===")
        if base64.b32encode(raw).decode().rstrip("=") != text:
            raise InvalidToken("malformed")  # a changed spare bit: one token, one text
        for cipher in self._ciphers:
            try:
                payload = cipher.decrypt(raw, [BOUNCE_SENT.encode()])
            except InvalidTag:
                pass
            else:
                steps = int.from_bytes(payload[9:], "big")
                sent = datetime.fromtimestamp(steps * BOUNCE_TIME_UNIT, UTC)
                campaign = int.from_bytes(payload[5:9], "big")
                return BounceClaim(int.from_bytes(payload[:5], "big"), campaign or None, sent)
            try:
                subscriber_id, campaign_id = _DELIVERY.unpack(
                    cipher.decrypt(raw, [BOUNCE.encode()])
                )
            except InvalidTag:
                continue
            return BounceClaim(subscriber_id, campaign_id or None, None)
        raise InvalidToken("forged")


class BounceClaim(NamedTuple):
    """The email a return-path token names. `sent_after`: the start of the time step in
    which it was sent (None: a token of an earlier release, which says nothing about
    when); a report about it may act only if the subscriber's address has not changed
    since then (service/bounces/actions.py)."""

    subscriber_id: int
    campaign_id: int | None
    sent_after: datetime | None


def _check_age(issued: int, max_age: float) -> None:
    age = time.time() - issued
    if age > max_age or age < -_CLOCK_SKEW:
        raise InvalidToken("expired")


# -- links mailed by earlier releases ----------------------------------------------------
_LEGACY_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{27}")  # HMAC-SHA1, unpadded base64url


def _from_b36(text: str) -> int:
    if not text or len(text) > 13 or not text.isalnum() or not text.isascii():
        raise InvalidToken("malformed")
    return int(text, 36)


class _LegacyTokens:
    """Verification only, of itsdangerous' format as earlier releases signed it
    (`<base-36 id>.<HMAC-SHA1>`, timed ones with a timestamp between), so the unsubscribe
    link of every email already sent keeps working."""

    def __init__(self, secret_keys: tuple[str, ...], confirm_max_age: float) -> None:
        keys = list(reversed(secret_keys))  # itsdangerous signs with the last key
        self.confirm_max_age = confirm_max_age
        self._timed = {
            salt: TimestampSigner(keys, salt=salt, sep=".") for salt in (CONFIRM, CANCEL)
        }
        self._keys = {
            salt: tuple(Signer(key, salt=salt, sep=".").derive_key() for key in secret_keys)
            for salt in (UNSUBSCRIBE, TRACKING, PIXEL)
        }

    def timed(self, salt: str, token: str) -> int:
        if len(token) > MAX_LENGTH:
            raise InvalidToken("malformed")
        signer = self._timed.get(salt)
        if signer is None:  # a purpose that never had this format: a forgery
            raise InvalidToken("forged")
        _check_signature_spelling(token.rpartition(".")[2])
        try:
            value = signer.unsign(token, max_age=self.confirm_max_age)
        except SignatureExpired:
            raise InvalidToken("expired") from None
        except BadData:
            raise InvalidToken("forged") from None
        return _from_b36(value.decode())

    def _verify(self, salt: str, token: str) -> str:
        if len(token) > MAX_LENGTH:
            raise InvalidToken("malformed")
        keys = self._keys.get(salt)
        if keys is None:  # a purpose that never had this format (manage): a forgery
            raise InvalidToken("forged")
        value, _, signature = token.rpartition(".")
        mac = _check_signature_spelling(signature)
        try:
            message = value.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidToken("forged") from None
        for key in keys:
            if hmac.compare_digest(hmac.digest(key, message, "sha1"), mac):
                return value
        raise InvalidToken("forged")

    def plain(self, salt: str, token: str) -> int:
        return _from_b36(self._verify(salt, token))

    def pixel(self, token: str) -> PixelClaim:
        subscriber, _, campaign = self._verify(PIXEL, token).partition("-")
        return PixelClaim(_from_b36(subscriber), _from_b36(campaign))


def _check_signature_spelling(signature: str) -> bytes:
    """The MAC of a legacy token, refusing any spelling but the canonical one (27
    characters carry 162 bits for 160: a changed spare bit must not pass as the same)."""
    if not _LEGACY_SIGNATURE.fullmatch(signature):
        raise InvalidToken("forged")
    mac = base64.urlsafe_b64decode(signature + "=")
    if _encode(mac) != signature:
        raise InvalidToken("forged")
    return mac
