"""Each provider's own proof that a webhook request is theirs.

- Amazon SES, through SNS: an RSA signature (SignatureVersion 1: SHA-1, 2: SHA-256)
  over the message's fields, verified with the certificate at SigningCertURL, fetched
  only from `https://sns.<region>.amazonaws.com/` and cached; and the topic must be one
  of WEBHOOK_SES_TOPIC_ARNS, since anyone can sign SNS messages from a topic of their
  own. https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html
- SendGrid: ECDSA P-256 with SHA-256 over the timestamp header and the raw body.
  https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features
- Mailgun: HMAC-SHA256 of timestamp and token under the webhook signing key.
  https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks
- Postmark: the basic-auth credentials put in the webhook's URL, and optionally the
  source address: Postmark lists the IPs its webhooks come from on its support page
  "IPs for firewalls", linked from
  https://postmarkapp.com/developer/webhooks/webhooks-overview
  (https://postmarkapp.com/support/article/800-ips-for-firewalls).

Freshness (service/bounces/webhooks.py) is checked after the signature, on the signed
timestamp: Mailgun advises checking the timestamp and caching tokens against replays
(https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from service import keys
from service.web.clientinfo import canonical_ip

SNS_HOST = re.compile(r"sns\.[a-z0-9-]{1,30}\.amazonaws\.com(\.cn)?")
MAX_CERT_BYTES = 16 * 1024
_CACHE_SIZE = 32


class BadSignature(Exception):
    """The request is not provably from the provider: 401."""


def sns_url_allowed(url: str) -> bool:
    """Only https://sns.<region>.amazonaws.com[.cn]/… with no port or credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and port is None
        and parts.username is None
        and bool(parts.hostname)
        and SNS_HOST.fullmatch(parts.hostname or "") is not None
    )


async def https_get(url: str, limit: int = MAX_CERT_BYTES) -> bytes:
    """A small HTTPS GET (a certificate, a subscription confirmation), in a thread."""

    def get() -> bytes:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (host checked)
            return response.read(limit + 1)[:limit]

    return await asyncio.to_thread(get)


_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SIGNED_FIELDS["SubscriptionConfirmation"]


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    fields = _SIGNED_FIELDS.get(str(message.get("Type")))
    if fields is None:
        raise ValueError("unknown SNS message type")
    lines = []
    for name in fields:
        value = message.get(name)
        if value is None:
            if name == "Subject":
                continue
            raise ValueError(f"SNS message without {name}")
        if not isinstance(value, str):
            raise ValueError(f"SNS field {name} is not a string")
        lines += [name, value]
    return ("\n".join(lines) + "\n").encode()


class SnsVerifier:
    """Checks SNS signatures; `fetch` gets a certificate's PEM (an HTTPS GET in
    production; the tests give their own certificate)."""

    def __init__(self, fetch: Callable[[str], Awaitable[bytes]] = https_get) -> None:
        self.fetch = fetch
        self._certs: dict[str, rsa.RSAPublicKey] = {}

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        key = self._certs.get(url)
        if key is not None:
            return key
        if not sns_url_allowed(url) or not url.endswith(".pem"):
            raise BadSignature("certificate URL not allowed")
        try:
            cert = x509.load_pem_x509_certificate(await self.fetch(url))
        except (ValueError, OSError, TimeoutError):
            raise BadSignature("certificate unavailable") from None
        public = cert.public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            raise BadSignature("not an RSA certificate")
        if len(self._certs) >= _CACHE_SIZE:
            self._certs.pop(next(iter(self._certs)))
        self._certs[url] = public
        return public

    async def verify(self, message: Mapping[str, Any], topics: tuple[str, ...]) -> None:
        if message.get("TopicArn") not in topics:
            raise BadSignature("topic not allowed")
        version = message.get("SignatureVersion")
        algorithms = {"1": hashes.SHA1(), "2": hashes.SHA256()}  # noqa: S303 (SNS version 1)
        algorithm = algorithms.get(str(version))
        if algorithm is None:
            raise BadSignature("unknown signature version")
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
            signed = sns_string_to_sign(message)
        except (binascii.Error, ValueError):
            raise BadSignature("malformed signature") from None
        key = await self._key(str(message.get("SigningCertURL", "")))
        try:
            key.verify(signature, signed, padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise BadSignature("signature does not match") from None


def verify_sendgrid(public_key: str, body: bytes, signature: str, timestamp: str) -> None:
    try:
        raw = base64.b64decode(signature, validate=True)
        keys.ecdsa_public_key(public_key).verify(
            raw, timestamp.encode() + body, ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, binascii.Error, ValueError, UnicodeEncodeError):
        raise BadSignature("signature does not match") from None


def verify_mailgun(signing_key: str, timestamp: str, token: str, signature: str) -> None:
    expected = hmac.new(
        signing_key.encode(), (timestamp + token).encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        raise BadSignature("signature does not match")


def verify_source(networks: tuple[str, ...], ip: str | None) -> None:
    """The client address (as uvicorn resolved it, FORWARDED_ALLOW_IPS) in one of
    `networks`, else BadSignature."""
    address = canonical_ip(ip)
    if address is None or not any(
        address in ipaddress.ip_network(network, strict=False) for network in networks
    ):
        raise BadSignature("source address not allowed")


def verify_basic(expected: str, header: str | None) -> None:
    """`Authorization: Basic base64(user:password)` against WEBHOOK_POSTMARK_AUTH."""
    scheme, _, value = (header or "").partition(" ")
    try:
        given = base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        given = b""
    if scheme.lower() != "basic" or not hmac.compare_digest(given, expected.encode()):
        raise BadSignature("credentials do not match")
