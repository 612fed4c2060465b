"""DKIM signing with OpenSSL (RSA and Ed25519), verified by an independent verifier (dkimpy)."""

from __future__ import annotations

import base64

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import given
from hypothesis import strategies as st

from service.mail import dkim
from service.settings import Settings, SettingsError

MESSAGE = (
    b"From: News <news@newsletter.test>\r\n"
    b"To: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>\r\n"
    b"Subject: Spring   news\r\n"
    b"\tfolded on a second line\r\n"
    b"Date: Wed, 02 Dec 2026 01:00:00 +0000\r\n"
    b"Message-ID: <1@newsletter.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"List-Unsubscribe: <https://news.example.com/unsubscribe/abc>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"\r\n"
    b"Hello  there \r\n\r\nnews\t\r\n\r\n\r\n"
)


def _dns(key) -> callable:
    record = dkim.dns_record(key).encode()

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.newsletter.test."
        return record

    return lookup


KEYS = {
    "rsa-sha256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ed25519-sha256": ed25519.Ed25519PrivateKey.generate,
}


@pytest.mark.parametrize("algorithm", sorted(KEYS))
def test_signature_verifies_with_dkimpy_and_covers_the_list_headers(algorithm: str) -> None:
    key = KEYS[algorithm]()
    signer = dkim.Signer("s1", "newsletter.test", key)
    signed = signer.sign(MESSAGE)
    assert signer.algorithm == algorithm
    assert dkimpy.verify(signed, dnsfunc=_dns(key))
    header = signed.split(b"\r\n\r\n")[0].split(b"\r\nFrom:")[0]
    tags = dict(
        part.split(b"=", 1)
        for part in b"".join(header[len(b"DKIM-Signature:") :].split()).split(b";")
    )
    assert tags[b"a"] == algorithm.encode()
    assert tags[b"c"] == b"relaxed/relaxed"
    assert tags[b"h"].split(b":") == [
        b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
        b"content-transfer-encoding", b"list-unsubscribe", b"list-unsubscribe-post",
        b"from", b"subject", b"list-unsubscribe", b"list-unsubscribe-post",
    ]  # fmt: skip
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))


@pytest.mark.parametrize("algorithm", sorted(KEYS))
def test_a_changed_body_an_added_list_header_or_a_changed_subject_fail(algorithm: str) -> None:
    key = KEYS[algorithm]()
    signed = dkim.Signer("s1", "newsletter.test", key).sign(MESSAGE)
    dns = _dns(key)
    forged_header = signed.replace(
        b"List-Unsubscribe:", b"List-Unsubscribe: <https://evil.example/u>\r\nList-Unsubscribe:", 1
    )
    for tampered in (
        signed.replace(b"news\t", b"NEWS\t"),
        forged_header,
        signed.replace(b"Spring", b"Summer"),
    ):
        assert not dkimpy.verify(tampered, dnsfunc=dns)
    # Relaxed canonicalisation: re-folding whitespace and trailing blanks stay valid.
    assert dkimpy.verify(signed.replace(b"Spring   news", b"Spring news"), dnsfunc=dns)
    assert dkimpy.verify(signed + b"\r\n\r\n", dnsfunc=dns)


def test_relaxed_body_canonicalisation_follows_rfc_6376() -> None:
    # RFC 6376 section 3.4.6, example of relaxed body canonicalisation
    assert dkim.relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"
    assert dkim.relaxed_body(b"") == b""
    assert dkim.relaxed_header(b"SUBJect ", b" AbC\r\n\t  def  ") == b"subject:AbC def\r\n"


@given(st.lists(st.sampled_from([b" ", b"\t", b"  ", b"\r\n", b"a", b"."])))
def test_relaxed_body_canonicalisation_agrees_with_dkimpy(parts: list[bytes]) -> None:
    """Ours skips the rewriting a body does not need (a speed-up); dkimpy's is the plain
    reading of the RFC. Bodies as SMTP carries them: CRLF line ends, the last one too."""
    body = b"".join(parts) + b"\r\n"
    assert dkim.relaxed_body(body) == Relaxed.canonicalize_body(body)


def _pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_the_key_is_checked_at_start(tmp_path) -> None:
    small = tmp_path / "ec.pem"  # DKIM has no ECDSA algorithm
    small.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    good = tmp_path / "ed.pem"
    good.write_bytes(_pem(ed25519.Ed25519PrivateKey.generate()))
    base = {
        "DATABASE_URL": "postgresql://db/x",
        "SMTP_URL": "smtp://relay:25",
        "PUBLIC_URL": "https://news.example.com",
        "SECRET_KEYS": "k" * 40,
        "DKIM_SELECTOR": "s1",
        "DKIM_DOMAIN": "newsletter.test",
    }
    for bad in (small, garbage):
        with pytest.raises(SettingsError, match="DKIM_PRIVATE_KEY_FILE is not a usable key"):
            Settings.from_env({**base, "DKIM_PRIVATE_KEY_FILE": str(bad)})
    settings = Settings.from_env({**base, "DKIM_PRIVATE_KEY_FILE": str(good)})
    signer = dkim.signer(
        settings.dkim_private_key_file, settings.dkim_selector, settings.dkim_domain
    )
    assert signer.algorithm == "ed25519-sha256"
    assert base64.b64decode(dkim.dns_record(signer.key).split("p=")[1])
