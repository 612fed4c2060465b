"""Signed tokens for every link in an email, one salt per purpose.

The first of `SECRET_KEYS` signs and every key verifies, so keys rotate without
breaking links in mail already sent. Confirmation and cancel tokens expire
(`CONFIRM_MAX_AGE`); unsubscribe, tracking-withdrawal and pixel tokens never do,
because old emails must keep working. Ids travel in base 36 to keep URLs short.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from dataclasses import dataclass

from itsdangerous import BadData, Signer, TimestampSigner

CONFIRM = "newsletter.confirm"
CANCEL = "newsletter.cancel"
UNSUBSCRIBE = "newsletter.unsubscribe"
TRACKING = "newsletter.tracking"
PIXEL = "newsletter.pixel"


class InvalidToken(Exception):
    """Forged, malformed or (for timed tokens) expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # 'forged', 'malformed' or 'expired'; safe to log


def _b36(number: int) -> str:
    if number < 0:
        raise ValueError("ids are positive")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def _from_b36(text: str) -> int:
    if not text or len(text) > 13 or not text.isalnum() or not text.isascii():
        raise InvalidToken("malformed")
    return int(text, 36)


# itsdangerous' default signature: HMAC-SHA1, 20 bytes, urlsafe base64 without padding.
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{27}")


class _KeyCachingSigner(Signer):
    """itsdangerous derives the HMAC key from secret and salt on every call; the result
    depends on nothing else, so it is derived once per key. (The pixel verifies a token
    on every request: the derivation was a third of the verification in the profile.)"""

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        cache: dict[object, bytes] = self.__dict__.setdefault("_derived", {})
        derived = cache.get(secret_key)
        if derived is None:
            derived = cache[secret_key] = super().derive_key(secret_key)
        return derived


class _KeyCachingTimestampSigner(_KeyCachingSigner, TimestampSigner):
    pass


@dataclass(frozen=True)
class PixelClaim:
    subscriber_id: int
    campaign_id: int


class Tokens:
    def __init__(self, secret_keys: tuple[str, ...], confirm_max_age: float) -> None:
        if not secret_keys:
            raise ValueError("at least one secret key is needed")
        # itsdangerous signs with the *last* key of the list; ours signs with the first.
        keys = list(reversed(secret_keys))
        self.confirm_max_age = confirm_max_age
        self._timed = {
            salt: _KeyCachingTimestampSigner(keys, salt=salt, sep=".") for salt in (CONFIRM, CANCEL)
        }
        self._plain = {
            salt: _KeyCachingSigner(keys, salt=salt, sep=".")
            for salt in (UNSUBSCRIBE, TRACKING, PIXEL)
        }
        # Verification keys, newest first, derived by itsdangerous itself (see _plain_verify).
        self._plain_keys = {
            salt: tuple(signer.derive_key(key) for key in secret_keys)
            for salt, signer in self._plain.items()
        }

    # -- timed -------------------------------------------------------------------
    def _timed_sign(self, salt: str, subscriber_id: int) -> str:
        return self._timed[salt].sign(_b36(subscriber_id)).decode()

    def _timed_verify(self, salt: str, token: str) -> int:
        from itsdangerous import SignatureExpired

        try:
            value = self._timed[salt].unsign(token, max_age=self.confirm_max_age)
        except SignatureExpired:
            raise InvalidToken("expired") from None
        except BadData:
            raise InvalidToken("forged") from None
        return _from_b36(value.decode())

    def confirm(self, subscriber_id: int) -> str:
        return self._timed_sign(CONFIRM, subscriber_id)

    def verify_confirm(self, token: str) -> int:
        return self._timed_verify(CONFIRM, token)

    def cancel(self, subscriber_id: int) -> str:
        return self._timed_sign(CANCEL, subscriber_id)

    def verify_cancel(self, token: str) -> int:
        return self._timed_verify(CANCEL, token)

    # -- never expire ----------------------------------------------------------
    def _plain_verify(self, salt: str, token: str) -> str:
        """What itsdangerous' `Signer.unsign` checks, in one OpenSSL HMAC call: the pixel
        verifies a token per request, and the library's layers (bytes coercion, lenient
        base64, a Python-level hmac object) were two thirds of that in the profile. Tokens
        stay itsdangerous' format, signed by it (a test checks both ways); this is stricter
        only in refusing a signature that is not exactly 27 base64url characters."""
        if len(token) > 200:
            raise InvalidToken("malformed")
        value, sep, signature = token.rpartition(".")
        if not sep or not _SIGNATURE.fullmatch(signature):
            raise InvalidToken("forged")
        try:
            mac = base64.urlsafe_b64decode(signature + "=")
            message = value.encode()
        except (binascii.Error, UnicodeEncodeError):
            raise InvalidToken("forged") from None
        for key in self._plain_keys[salt]:
            if hmac.compare_digest(hmac.digest(key, message, "sha1"), mac):
                return value
        raise InvalidToken("forged")

    def unsubscribe(self, subscriber_id: int) -> str:
        return self._plain[UNSUBSCRIBE].sign(_b36(subscriber_id)).decode()

    def verify_unsubscribe(self, token: str) -> int:
        return _from_b36(self._plain_verify(UNSUBSCRIBE, token))

    def tracking(self, subscriber_id: int) -> str:
        return self._plain[TRACKING].sign(_b36(subscriber_id)).decode()

    def verify_tracking(self, token: str) -> int:
        return _from_b36(self._plain_verify(TRACKING, token))

    def pixel(self, subscriber_id: int, campaign_id: int) -> str:
        return self._plain[PIXEL].sign(f"{_b36(subscriber_id)}-{_b36(campaign_id)}").decode()

    def verify_pixel(self, token: str) -> PixelClaim:
        subscriber, _, campaign = self._plain_verify(PIXEL, token).partition("-")
        return PixelClaim(_from_b36(subscriber), _from_b36(campaign))
