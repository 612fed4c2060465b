"""Our Standard Webhooks signature against the reference implementation's."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from service.events import signing
from service.settings import Settings, SettingsError
from tests.events.receiver import new_secret

BASE = {
    "DATABASE_URL": "postgresql://db/news",
    "SMTP_URL": "smtp://relay:25",
    "PUBLIC_URL": "https://news.example.com",
    "SECRET_KEYS": "k" * 32,
}


def test_our_signature_is_the_reference_implementations_and_verifies() -> None:
    secret = new_secret(3)
    key = (
        Settings.from_env({**BASE, "EVENTS_URL": "https://crm.example/h", "EVENTS_SECRET": secret})
        .event_endpoints[0]
        .key
    )
    body = '{"type":"subscriber.erased","data":{"email":"zoë@example.org"}}'.encode()
    now = int(datetime.now(UTC).timestamp())
    headers = signing.headers(key, "msg_abc", now, body)
    # The body as text: standardwebhooks before 1.3 formats a bytes body with an f-string
    # ("b'...'"); every version signs a str as its UTF-8 bytes.
    reference = Webhook(secret).sign("msg_abc", datetime.fromtimestamp(now, UTC), body.decode())
    assert headers["webhook-signature"] == reference
    assert Webhook(secret).verify(body, headers)["data"]["email"] == "zoë@example.org"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret(4)).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"EVENTS_URL": "https://a.example/h"},
            "EVENTS_SECRET must hold one whsec_ secret per URL",
        ),
        (
            {"EVENTS_URL": "http://crm.example/h", "EVENTS_SECRET": new_secret()},
            "EVENTS_URL entry for crm.example must use https://",
        ),
        (
            {"EVENTS_URL": "https://a.example/h", "EVENTS_SECRET": "hunter2hunter2"},
            "EVENTS_SECRET entry 1 must start with whsec_",
        ),
        (
            {"EVENTS_URL": "https://a.example/h", "EVENTS_SECRET": "whsec_" + "QUFB"},
            "EVENTS_SECRET entry 1 must hold 24 to 64 bytes after whsec_ (holds 3)",
        ),
        (
            {
                "EVENTS_URL": "https://a.example/h",
                "EVENTS_SECRET": new_secret(),
                "EVENTS_TYPES": "subscriber.deleted",
            },
            "EVENTS_TYPES names unknown types ['subscriber.deleted']",
        ),
        (
            {
                "EVENTS_URL": "https://a.example/h",
                "EVENTS_SECRET": new_secret(),
                "EVENTS_TYPES": "*,*",
            },
            "EVENTS_TYPES must hold one entry per URL of EVENTS_URL (1 URLs, 2 entries",
        ),
    ],
)
def test_bad_event_settings_are_refused_at_start_with_a_clear_line(env, problem) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, **env})
    [line] = caught.value.problems
    assert line.startswith(problem)
    assert "hunter2" not in line


def test_several_receivers_each_with_its_secret_and_filter() -> None:
    secrets = (new_secret(1), new_secret(2))
    settings = Settings.from_env(
        {
            **BASE,
            "EVENTS_URL": "https://crm.example/h, http://127.0.0.1:9000/x",
            "EVENTS_SECRET": ",".join(secrets),
            "EVENTS_TYPES": "*, subscriber.erased  subscriber.confirmed",
        }
    )
    crm, local = settings.event_endpoints
    assert (crm.url, crm.types, crm.key) == ("https://crm.example/h", None, bytes([1]) * 32)
    assert local.key == base64.b64decode(secrets[1].removeprefix("whsec_"))
    assert local.wants("subscriber.erased") and not local.wants("subscriber.updated")
