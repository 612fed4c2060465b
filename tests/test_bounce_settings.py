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
