"""Real bounce, complaint and auto-reply messages (tests/data/bounces/SOURCES.md) read
as what they are; the VERP token."""

from __future__ import annotations

import base64
import struct
from datetime import UTC, datetime

import pytest

from service.bounces import verp
from service.bounces.parse import COMPLAINT, HARD, IGNORE, SOFT, parse
from service.settings import Settings
from service.tokens import BOUNCE_TOKEN_LENGTH, InvalidToken, Tokens
from tests import support
from tests.bounce_support import DOMAIN, sample, tokens


@pytest.mark.parametrize(
    ("name", "event", "reason", "source"),
    [
        # RFC 3464 DSNs
        ("lhost-postfix-01.eml", HARD, "5.1.1", "dsn"),
        ("lhost-postfix-05.eml", SOFT, "4.1.1", "dsn"),
        ("lhost-exchange2007-01.eml", HARD, "5.1.1", "dsn"),
        ("lhost-office365-11.eml", HARD, "5.1.1", "dsn"),
        ("lhost-outlook-02.eml", HARD, "5.1.1", "dsn"),
        ("lhost-amazonses-05.eml", HARD, "5.1.1", "dsn"),
        ("rhost-yahooinc-01.eml", IGNORE, "5.7.9", "dsn"),  # policy: not about the address
        # non-standard formats, through flufl.bounce
        ("lhost-exim-02.eml", HARD, "5.1.1", "heuristic"),
        ("lhost-exchange2003-01.eml", SOFT, "unstructured", "heuristic"),
        ("lhost-gmail-01.eml", HARD, "5.1.1", "heuristic"),
        ("lhost-yahoo-03.eml", HARD, "5.1.1", "heuristic"),
        # delay warnings: the relay is still trying
        ("lhost-exim-41.eml", IGNORE, "delayed", "heuristic"),
        ("lhost-gmail-06.eml", IGNORE, "delayed", "heuristic"),
        # ARF (RFC 5965)
        ("arf-01.eml", COMPLAINT, "abuse", "arf"),
        ("arf-02.eml", COMPLAINT, "abuse", "arf"),
        ("arf-18.eml", IGNORE, "feedback-auth-failure", "arf"),
        # vacation replies (RFC 3834) and ordinary mail
        ("rfc3834-01.eml", IGNORE, "auto-reply", "heuristic"),
        ("rfc3834-05.eml", IGNORE, "auto-reply", "heuristic"),
        ("rfc3834-06.eml", IGNORE, "auto-reply", "heuristic"),
        ("is-not-bounce-01.eml", IGNORE, "not-a-bounce", "heuristic"),
    ],
)
def test_real_messages_are_read_as_what_they_are(name, event, reason, source) -> None:
    report = parse(sample(name))
    assert (report.event, report.reason, report.source) == (event, reason, source)
    if event in (HARD, SOFT):
        assert report.recipients and all("@" in r for r in report.recipients)


def test_a_hard_dsn_names_its_failed_recipient() -> None:
    assert parse(sample("lhost-postfix-01.eml")).recipients == (
        "kijitora@example.org",
        "r@p351355.pool.example.ne.jp",
    )
    assert parse(sample("lhost-gmail-01.eml")).recipients == ("userunknown@example.jp",)


def _dsn(fields: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.org\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nUndeliverable.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; reader@example.org\r\n{fields}\r\n--b--\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("fields", "event", "reason"),
    [
        ("Action: failed\r\nStatus: 5.1.1\r\n", HARD, "5.1.1"),
        # No status code: a failure, but no evidence that the mailbox is gone.
        ("Action: failed\r\n", SOFT, "failed"),
        # Our sender or our quota refused, not the reader's mailbox.
        ("Action: failed\r\nStatus: 5.1.8\r\n", IGNORE, "5.1.8"),
        ("Action: failed\r\nStatus: 5.4.5\r\n", IGNORE, "5.4.5"),
    ],
)
def test_only_a_mailbox_status_makes_a_dsn_hard(fields, event, reason) -> None:
    report = parse(_dsn(fields))
    assert (report.event, report.reason) == (event, reason)


def test_a_free_text_bounce_with_a_policy_code_is_not_hard() -> None:
    """flufl.bounce reads a permanent failure in the Exim text; the code in it decides."""
    raw = sample("lhost-exim-02.eml").replace(b"5.1.1", b"5.7.1")
    assert parse(sample("lhost-exim-02.eml")).event == HARD
    assert (parse(raw).event, parse(raw).reason) == (IGNORE, "5.7.1")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x",
        b"Content-Type: multipart/report; boundary=\r\n\r\n" + b"A" * 100_000,
        b"Content-Type: message/delivery-status\r\n\r\nAction: failed\r\nStatus: nonsense\r\n",
    ],
)
def test_malformed_messages_never_raise(raw) -> None:
    report = parse(raw)
    assert report.event in (HARD, SOFT, COMPLAINT, IGNORE)


def test_the_return_path_fits_a_local_part_and_names_one_email() -> None:
    settings = Settings(bounce_domain=DOMAIN, bounce_local="b" * 18)
    path = verp.return_path(settings, tokens(), 2**40 - 1, 2**32 - 1)
    local = path.partition("@")[0]
    assert len(local.encode()) == 64  # RFC 5321's limit, at the longest BOUNCE_LOCAL
    assert local == local.lower()
    assert verp.delivery_of(settings, tokens(), path)[:2] == (2**40 - 1, 2**32 - 1)
    assert verp.delivery_of(settings, tokens(), path.upper())[:2] == (2**40 - 1, 2**32 - 1)
    confirmation = verp.return_path(settings, tokens(), 7, None)
    assert verp.delivery_of(settings, tokens(), f"<{confirmation}>")[:2] == (7, None)
    assert verp.return_path(settings, tokens(), 2**40, 1) is None  # beyond a token's range


def test_return_path_tokens_are_opaque_and_bound_to_their_purpose() -> None:
    t = tokens()
    token = t.bounce(42, 9, at=1_800_000_000)
    assert len(token) == BOUNCE_TOKEN_LENGTH and "42" not in token
    assert t.bounce(42, 9, at=1_800_000_299) == token  # deterministic within a time step
    assert t.verify_bounce(token) == (42, 9, datetime.fromtimestamp(1_800_000_000, UTC))
    flipped = ("a" if token[0] != "a" else "b") + token[1:]
    with pytest.raises(InvalidToken):
        t.verify_bounce(flipped)
    with pytest.raises(InvalidToken):  # the last character's spare bit
        t.verify_bounce(token[:-1] + ("b" if token[-1] == "a" else "a"))
    with pytest.raises(InvalidToken):
        Tokens(("another key",), 3600).verify_bounce(token)
    for bad in ("", token + "a", token[:-1] + "1", token[:-1] + "="):
        with pytest.raises(InvalidToken):
            t.verify_bounce(bad)
    # the same ids sealed for another purpose are refused
    other = t._ciphers[0].encrypt(struct.pack(">QI", 42, 9), [b"newsletter.pixel"])
    with pytest.raises(InvalidToken, match="forged"):
        t.verify_bounce(base64.b32encode(other).decode().rstrip("=").lower())
    rotated = Tokens(("new key", support.TEST_KEY), 3600)
    assert rotated.verify_bounce(token)[:2] == (42, 9)  # old mail still bounces to us
    # an earlier release's token (no time of sending) is still read, without a time
    earlier = t._ciphers[0].encrypt(struct.pack(">QI", 42, 9), [b"newsletter.bounce"])
    assert t.verify_bounce(base64.b32encode(earlier).decode().rstrip("=").lower()) == (
        42,
        9,
        None,
    )


def test_other_addresses_and_forged_tokens_name_no_email() -> None:
    settings = Settings(bounce_domain=DOMAIN, bounce_local="bounces")
    good = verp.return_path(settings, tokens(), 1, 2)
    token = good.partition("+")[2].partition("@")[0]
    assert verp.delivery_of(settings, tokens(), f"bounces@{DOMAIN}") is None
    assert verp.delivery_of(settings, tokens(), f"other+{token}@{DOMAIN}") is None
    assert verp.delivery_of(settings, tokens(), f"bounces+{token}@evil.example") is None
    assert verp.delivery_of(settings, tokens(), f"bounces+{'a' * 45}@{DOMAIN}") is None
    assert verp.delivery_of(Settings(), tokens(), good) is None  # no BOUNCE_DOMAIN
    text = f"Delivered-To: {good}\nX-Original-To: bounces+{'b' * 45}@{DOMAIN}\n"
    assert [d[:2] for d in verp.deliveries_in(settings, tokens(), text)] == [(1, 2)]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("auth-failure", "feedback-auth-failure"),
        ("not-spam", "feedback-not-spam"),
        ("mallory@example.org please read", "feedback-other"),
        ("Kijitora", "feedback-other"),
        ("", "feedback-other"),
    ],
)
def test_a_feedback_reports_reason_is_a_registered_type_never_the_senders_text(
    kind, reason
) -> None:
    """The reason is logged and counted: a Feedback-Type nobody registered is "other"."""
    raw = sample("arf-18.eml").replace(
        b"Feedback-Type: auth-failure", f"Feedback-Type: {kind}".encode()
    )
    assert parse(raw).reason == reason


@pytest.mark.parametrize("header", ["Delivered-To", "X-Original-To", "Envelope-To", "To"])
def test_a_token_counts_only_in_the_headers_that_carry_the_envelope_recipient(header) -> None:
    settings = Settings(bounce_domain=DOMAIN)
    path = verp.return_path(settings, tokens(), 5, 6)
    body = f"Subject: x\r\n\r\nThe returned message was sent by <{path}>.\r\n".encode()
    found = verp.envelope_deliveries(settings, tokens(), f"{header}: <{path}>\r\n".encode() + body)
    assert [d[:2] for d in found] == [(5, 6)]
    for elsewhere in ("Reply-To", "Return-Path", "X-Failed-Recipients", "Cc"):
        raw = f"{elsewhere}: {path}\r\n".encode() + body
        assert verp.envelope_deliveries(settings, tokens(), raw) == [], elsewhere
