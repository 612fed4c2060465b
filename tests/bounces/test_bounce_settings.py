"""The bounce settings are validated at start, one line per problem."""

from __future__ import annotations

import pytest

from service.settings import Settings, SettingsError
from tests.test_settings import GOOD

SG_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62"
    "gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)


def test_the_bounce_settings_and_their_defaults() -> None:
    settings = Settings.from_env(
        {
            **GOOD,
            "BOUNCE_DOMAIN": "Bounce.Example.COM",
            "BOUNCE_SOFT_WINDOW": "30d",
            "WEBHOOK_SES_TOPIC_ARNS": "arn:aws:sns:eu-west-1:1:a, arn:aws:sns:eu-west-1:1:b",
            "WEBHOOK_SENDGRID_PUBLIC_KEY": SG_KEY,
            "BOUNCE_IMAP_URL": "imaps://bounces:pw@imap.example.com/INBOX",
        }
    )
    assert settings.bounce_domain == "bounce.example.com"
    assert (settings.bounce_local, settings.bounce_soft_limit) == ("bounces", 3)
    assert settings.bounce_soft_window == 30 * 86400
    assert settings.webhook_ses_topic_arns == (
        "arn:aws:sns:eu-west-1:1:a",
        "arn:aws:sns:eu-west-1:1:b",
    )
    assert Settings.from_env(GOOD).bounce_soft_window == 15 * 86400


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"BOUNCE_DOMAIN": "not a domain"}, "BOUNCE_DOMAIN is not a domain name"),
        ({"BOUNCE_LOCAL": "b" * 19}, "BOUNCE_LOCAL must be 1-18"),
        ({"BOUNCE_LOCAL": "bounce+x"}, "BOUNCE_LOCAL must be 1-18"),
        ({"BOUNCE_SOFT_LIMIT": "0"}, "BOUNCE_SOFT_LIMIT"),
        ({"BOUNCE_IMAP_URL": "https://imap.example.com"}, "BOUNCE_IMAP_URL must look like"),
        ({"WEBHOOK_POSTMARK_AUTH": "short:pw"}, "WEBHOOK_POSTMARK_AUTH must be user:password"),
        ({"WEBHOOK_SENDGRID_PUBLIC_KEY": "bm90IGEga2V5"}, "WEBHOOK_SENDGRID_PUBLIC_KEY is not"),
    ],
)
def test_bad_bounce_settings_are_named(env, expected) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**GOOD, **env})
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value


@pytest.mark.parametrize(
    "url",
    [
        "imap://bounces:pw@imap.example.com/INBOX",
        "imap://bounces:pw@192.0.2.10/INBOX",
        "imap://bounces:pw@[2001:db8::1]/INBOX",
    ],
)
def test_plain_imap_is_refused_except_to_loopback(url) -> None:
    """The mailbox password and the bounces (which name addresses) never cross a network
    unencrypted."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**GOOD, "BOUNCE_IMAP_URL": url})
    [problem] = caught.value.problems
    assert problem.startswith("BOUNCE_IMAP_URL must use imaps://"), problem
    assert "pw" not in problem  # the password is not echoed


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.53", "localhost", "[::1]", "imap.example.com"]
)
def test_plain_imap_to_loopback_and_imaps_anywhere_are_taken(host) -> None:
    scheme = "imaps" if "example" in host else "imap"
    url = f"{scheme}://bounces:pw@{host}:1143/INBOX"
    assert Settings.from_env({**GOOD, "BOUNCE_IMAP_URL": url}).bounce_imap_url == url


def test_receiver_limits_and_postmark_networks() -> None:
    defaults = Settings.from_env(GOOD)
    assert (defaults.bounce_smtp_max_connections, defaults.bounce_smtp_max_per_peer) == (32, 5)
    assert defaults.webhook_postmark_ips == ()
    settings = Settings.from_env(
        {
            **GOOD,
            "BOUNCE_SMTP_MAX_CONNECTIONS": "100",
            "BOUNCE_SMTP_MAX_PER_PEER": "10",
            "WEBHOOK_POSTMARK_IPS": "192.0.2.6, 198.51.100.0/24, 2001:db8::/32",
        }
    )
    assert (settings.bounce_smtp_max_connections, settings.bounce_smtp_max_per_peer) == (100, 10)
    assert settings.webhook_postmark_ips == ("192.0.2.6", "198.51.100.0/24", "2001:db8::/32")
    for env, expected in (
        ({"BOUNCE_SMTP_MAX_PER_PEER": "0"}, "BOUNCE_SMTP_MAX_PER_PEER must be between"),
        ({"WEBHOOK_POSTMARK_IPS": "postmark.example"}, "WEBHOOK_POSTMARK_IPS entry"),
    ):
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({**GOOD, **env})
        assert caught.value.problems[0].startswith(expected), caught.value
