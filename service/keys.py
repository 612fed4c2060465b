"""The keys that settings name, parsed: checked once at start by settings, used by the
code that signs (DKIM) or verifies (a provider's webhook signature)."""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def dkim_private_key(pem: bytes) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """A PEM private key (PKCS#1 or PKCS#8): RSA of at least 1024 bits, or Ed25519."""
    key = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise ValueError("an RSA DKIM key needs at least 1024 bits (RFC 8301)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ValueError("a DKIM key must be RSA or Ed25519")


def ecdsa_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key: base64 DER (SubjectPublicKeyInfo), or PEM."""
    try:
        if "BEGIN PUBLIC KEY" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise ValueError("is not a base64 DER or PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("is not an ECDSA public key")
    return key
