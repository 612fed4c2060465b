import base64
import email
import email.policy

import dkim as dkimpy
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from service.mail import dkim, messages
from service.settings import Settings
from tests import support

SETTINGS = Settings(
    secret_keys=(support.TEST_KEY,),
    mail_from="Test News <news@newsletter.test>",
    public_url=support.PUBLIC_URL,
)


def _parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def test_message_is_multipart_alternative_with_text_and_html_and_required_headers() -> None:
    message = messages.build_message(
        SETTINGS, to="ada@example.com", subject="Grüße", text="Hallo ü\n", html="<p>Hallo ü</p>\n"
    )
    parsed = _parse(messages.to_bytes(message))
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert parsed["From"] == "Test News <news@newsletter.test>"
    assert parsed["To"] == "ada@example.com"
    assert parsed["Subject"] == "Grüße"
    assert parsed["Message-ID"].endswith("@newsletter.test>")
    assert parsed["Date"]
    assert parsed.get_body(("plain",)).get_content().rstrip() == "Hallo ü"
    assert parsed.get_body(("html",)).get_content().rstrip() == "<p>Hallo ü</p>"
    raw = messages.to_bytes(message)
    assert raw.isascii()  # 7-bit on the wire: no relay re-encodes it and breaks DKIM
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


@pytest.mark.parametrize("field", ["subject", "to", "header_value", "header_name"])
@pytest.mark.parametrize("breaker", ["\r\n", "\n", "\r", "\x00"])
def test_line_breaks_in_any_header_are_refused(field: str, breaker: str) -> None:
    values = {"to": "a@example.com", "subject": "Hi", "headers": {"X-Ok": "fine"}}
    evil = f"x{breaker}Bcc: victim@example.com"
    if field in ("subject", "to"):
        values[field] = evil
    elif field == "header_value":
        values["headers"] = {"X-Thing": evil}
    else:
        values["headers"] = {evil: "v"}
    with pytest.raises(messages.HeaderInjection):
        messages.build_message(SETTINGS, text="t", html="<p>t</p>", **values)


@hsettings(max_examples=200)
@given(name=st.text(max_size=100), subject=st.text(max_size=200))
def test_no_name_or_subject_can_add_a_header(name: str, subject: str) -> None:
    try:
        to = messages.recipient_header("ada@example.com", name)
        message = messages.build_message(
            SETTINGS, to=to, subject=subject, text="t", html="<p>t</p>"
        )
    except (messages.HeaderInjection, ValueError):
        return  # refused outright is fine
    parsed = _parse(messages.to_bytes(message))
    assert [a.addr_spec for a in parsed["To"].addresses] == ["ada@example.com"]
    assert parsed["Bcc"] is None and parsed["Cc"] is None
    names = [k.lower() for k in parsed.keys()]
    assert sorted(names) == sorted(
        ["from", "to", "subject", "date", "message-id", "mime-version", "content-type"]
    )


def test_html_template_escapes_the_name(settings) -> None:
    from service.web import pages

    env = pages.environment()
    html = env.get_template("email/confirm.html").render(
        name="<script>x</script>",
        confirm_url="u",
        cancel_url="c",
        hours=48,
        public_url="p",
        tracking_mode="consent",
        tracking_requested=True,
    )
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_idn_domain_goes_out_as_ascii_and_unicode_local_part_needs_smtputf8() -> None:
    assert messages.smtp_address("user@bücher.example") == ("user@xn--bcher-kva.example", False)
    assert messages.smtp_address("jörg@example.com") == ("jörg@example.com", True)
    message = messages.build_message(
        SETTINGS,
        to=messages.recipient_header("jörg@example.com", "Jörg"),
        subject="s",
        text="t",
        html="h",
    )
    recipients, utf8 = messages.envelope_recipients(message)
    assert recipients == ["jörg@example.com"] and utf8
    assert b"To: j\xc3\xb6rg@example.com" in messages.to_bytes(message, smtputf8=True)


def _dkim_key(tmp_path) -> tuple[str, bytes]:
    key = support.dkim_key(tmp_path)
    return key.path, key.public_der


def test_dkim_signature_covers_list_unsubscribe_and_verifies(tmp_path) -> None:
    key, public = _dkim_key(tmp_path)
    settings = SETTINGS.replace(
        dkim_private_key_file=key, dkim_selector="s2026", dkim_domain="newsletter.test"
    )
    message = messages.build_message(
        settings,
        to="ada@example.com",
        subject="Spring news",
        text="news\n",
        html="<p>news</p>\n",
        headers={
            "List-Unsubscribe": "<https://news.example.com/unsubscribe/abc>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    signer = dkim.signer(
        settings.dkim_private_key_file, settings.dkim_selector, settings.dkim_domain
    )
    signed = signer.sign(messages.to_bytes(message))

    def dns(name, timeout=5):
        assert name == b"s2026._domainkey.newsletter.test."
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    assert dkimpy.verify(signed, dnsfunc=dns)
    header = _parse(signed)["DKIM-Signature"].replace(" ", "").replace("\n", "").lower()
    signed_headers = header.split("h=")[1].split(";")[0].split(":")
    for name in (
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ):
        assert name in signed_headers
    assert signed_headers.count("list-unsubscribe") == 2  # oversigned: none can be added

    tampered = signed.replace(b"Subject: Spring news", b"Subject: Spring newz")
    assert not dkimpy.verify(tampered, dnsfunc=dns)
    added = signed.replace(
        b"Subject: Spring news", b"List-Unsubscribe: <https://evil.example>\r\nSubject: Spring news"
    )
    assert not dkimpy.verify(added, dnsfunc=dns)
