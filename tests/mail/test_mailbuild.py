"""The campaign email builder: every email it writes parses the same with the standard
library and with an independent parser (Rust's mail-parser), keeps its lines within
the limits, stays 7-bit unless the address needs SMTPUTF8, and carries a DKIM
signature that dkimpy verifies."""

from __future__ import annotations

import email
import email.policy

import dkim as dkimpy
import fast_mail_parser
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from service.mail import dkim, wire
from service.settings import Settings
from tests import support

SETTINGS = Settings(
    secret_keys=(support.TEST_KEY,),
    mail_from="Bücher & News <news@newsletter.test>",
    public_url=support.PUBLIC_URL,
)
KEY = ed25519.Ed25519PrivateKey.generate()
SIGNER = dkim.Signer("s1", "newsletter.test", KEY)
RECORD = dkim.dns_record(KEY).encode()
UNSUBSCRIBE = "https://news.example.com/unsubscribe/AbC-dEf_0123456789abcdefghijklmnopqrstuvwxyz"

# Any text a database can hold (no lone surrogates); names and subjects without the
# line breaks the builder refuses (tested separately).
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400)
LINE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"),
    max_size=120,
)


def _dns(name: bytes, timeout: int = 5) -> bytes:
    assert name == b"s1._domainkey.newsletter.test."
    return RECORD


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def build(name: str, subject: str, text: str, html: str, address: str = "reader@example.org"):
    skeleton = wire.Skeleton(SETTINGS)
    to = wire.recipient(address, not address.isascii(), name)
    raw = skeleton.render(
        to=to, subject=subject, text=text, html=html, list_unsubscribe=UNSUBSCRIBE
    )
    return raw, SIGNER.sign(raw)


@hsettings(max_examples=120)
@example(name="0000000000\x80\x80\x80\x80\x80\x80𐀀𐀀𐀀𐀀𐀀𐀀", subject="", text="", html="")
@given(name=LINE, subject=LINE, text=TEXT, html=TEXT)
def test_every_email_parses_alike_in_two_parsers_and_its_signature_verifies(
    name: str, subject: str, text: str, html: str
) -> None:
    subject = subject.strip(" \t")  # the campaign renderer strips its subject line
    raw, signed = build(name, subject, text, html)
    assert raw.isascii()  # 7-bit: no relay re-encodes it and breaks the signature
    lines = raw.split(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in lines) <= 998
    _head, _, body = raw.partition(b"\r\n\r\n")
    assert max(len(line) for line in body.split(b"\r\n")) <= 76  # quoted-printable
    assert dkimpy.verify(signed, dnsfunc=_dns)

    expected_name = " ".join(name.split())
    parsed = email.message_from_bytes(signed, policy=email.policy.default)
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    [to] = parsed["To"].addresses
    assert to.addr_spec == "reader@example.org"
    # CPython's address parser keeps the space between two adjacent encoded words, which
    # RFC 2047 section 6.2 says to ignore (a name longer than one word, 45 UTF-8 bytes):
    # it is compared without spaces; the second parser must give the name exactly.
    assert to.display_name.replace(" ", "") == expected_name.replace(" ", "")
    if len(wire.encoded_words(expected_name)) <= 1:
        assert to.display_name == expected_name
    assert parsed["Subject"] == subject
    assert parsed["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert _lines(parsed.get_body(("plain",)).get_content()) == _lines(text)
    assert _lines(parsed.get_body(("html",)).get_content()) == _lines(html)
    assert parsed["From"].addresses[0].display_name == "Bücher & News"
    assert parsed.defects == [] and all(p.defects == [] for p in parsed.walk())

    second = fast_mail_parser.parse_email(signed)
    assert second.subject == subject
    assert second.to[0].address == "reader@example.org"
    assert (second.to[0].display_name or "") == expected_name
    assert _lines("".join(second.text_plain)) == _lines(text)
    assert _lines("".join(second.text_html)) == _lines(html)


@pytest.mark.parametrize("breaker", ["\r", "\n", "\0"])
def test_a_line_break_in_the_subject_or_the_link_is_refused(breaker: str) -> None:
    skeleton = wire.Skeleton(SETTINGS)
    good = {"to": "a@example.org", "subject": "s", "text": "t", "html": "h"}
    for field in ("subject", "list_unsubscribe", "to"):
        with pytest.raises(wire.HeaderInjection):
            skeleton.render(**{**good, field: f"x{breaker}Bcc: victim@example.com"})
    with pytest.raises(wire.HeaderInjection):
        wire.display_name(f"x{breaker}Bcc: victim@example.com")


def test_ascii_subjects_are_folded_at_spaces_and_encoded_words_stay_within_75() -> None:
    raw, _ = build("Ada", "word " * 40 + "end", "t", "h")
    head = raw.split(b"\r\n\r\n")[0]
    subject = head.split(b"Subject:")[1].split(b"\r\nDate:")[0]
    assert all(len(line) <= 78 for line in (b"Subject:" + subject).split(b"\r\n"))
    words = wire.encoded_words("ü" * 100 + "🙂" * 30)
    assert all(len(word) <= 75 for word in words)
    assert (
        email.message_from_bytes(
            b"Subject: " + "\r\n ".join(words).encode() + b"\r\n\r\n", policy=email.policy.default
        )["Subject"]
        == "ü" * 100 + "🙂" * 30
    )


def test_a_unicode_local_part_goes_out_as_utf8_without_a_name() -> None:
    raw, signed = build("Jörg", "Hallo", "t", "h", address="jörg@example.org")
    assert b"To: j\xc3\xb6rg@example.org\r\n" in raw
    assert dkimpy.verify(signed, dnsfunc=_dns)


def test_the_boundary_cannot_occur_in_a_quoted_printable_body() -> None:
    skeleton = wire.Skeleton(SETTINGS)
    evil = f"--{skeleton.boundary}--\n"
    raw = skeleton.render(to="a@example.org", subject="s", text=evil, html=evil)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert _lines(parsed.get_body(("plain",)).get_content()) == evil
    assert raw.count(skeleton.boundary.encode()) == 4  # header, two parts, the end


@pytest.mark.parametrize("tracking_mode", ["consent", "notice", "off"])
@pytest.mark.parametrize("ip_mode", ["none", "truncated"])
@pytest.mark.parametrize("consent", [True, False])
def test_footers_rendered_once_equal_the_templates_rendered_per_subscriber(
    tracking_mode: str, ip_mode: str, consent: bool
) -> None:
    from service.campaigns import mail
    from service.mail import messages
    from service.tokens import Tokens
    from service.web import pages

    settings = SETTINGS.replace(
        tracking_mode=tracking_mode, ip_mode=ip_mode, public_url="https://news.example.com/a&b"
    )
    templates = pages.environment()
    ctx = messages.MailContext(
        settings, Tokens(settings.secret_keys, settings.confirm_max_age), templates
    )
    links = mail.Links.mint(settings, ctx.tokens, 42, 7, consent)
    values = {"links": links, "tracking_mode": tracking_mode, "ip_mode": ip_mode}
    expected = (
        templates.get_template("campaign_footer.html").render(**values),
        templates.get_template("campaign_footer.txt").render(**values),
    )
    assert mail.footers(ctx, links) == expected
    assert "a&amp;b" in expected[0] and "a&b" in expected[1]
