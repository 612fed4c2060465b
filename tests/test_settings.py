import pytest

from service.settings import REQUIRED, Settings, SettingsError, parse_duration, parse_smtp_url

GOOD = {
    "DATABASE_URL": "postgresql://app:pw@db:5432/news",
    "SMTP_URL": "smtp://relay:25",
    "PUBLIC_URL": "https://news.example.com/",
    "SECRET_KEYS": "k" * 32 + "," + "o" * 40,
}


def problems(**env: str) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**GOOD, **env})
    return caught.value.problems


def test_the_four_required_variables_give_a_working_configuration() -> None:
    settings = Settings.from_env(GOOD)
    assert settings.public_url == "https://news.example.com"
    assert settings.secret_keys == ("k" * 32, "o" * 40)
    assert settings.mail_from == "Newsletter <newsletter@news.example.com>"
    assert settings.tracking_mode == "consent"
    assert settings.ip_mode == "truncated"
    assert settings.confirm_max_age == 48 * 3600


def test_every_missing_required_variable_is_named_on_its_own_line() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({})
    assert caught.value.problems == [f"{name} is not set (required)" for name in REQUIRED]


def test_migrate_needs_only_the_database_url() -> None:
    settings = Settings.from_env({"DATABASE_URL": GOOD["DATABASE_URL"]}, required=["DATABASE_URL"])
    assert settings.database_url == GOOD["DATABASE_URL"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL must be a URL starting with"),
        ({"SMTP_URL": "http://relay"}, "SMTP_URL must start with smtp:// or smtps://"),
        ({"SMTP_URL": "smtp://relay:99999"}, "SMTP_URL has a bad port"),
        ({"SMTP_URL": "smtp://relay?tls=yes"}, "SMTP_URL has unknown options"),
        ({"PUBLIC_URL": "news.example.com"}, "PUBLIC_URL must be an http:// or https:// URL"),
        ({"SECRET_KEYS": "short,"}, "SECRET_KEYS entries must be at least 32 characters"),
        ({"SECRET_KEYS": " , "}, "SECRET_KEYS must hold at least one key"),
        ({"ADMIN_TOKENS": "abc"}, "ADMIN_TOKENS entries must be at least 16 characters"),
        ({"DB_POOL_MAX": "0"}, "DB_POOL_MAX must be between 1 and 200, got 0"),
        ({"DB_POOL_MAX": "ten"}, "DB_POOL_MAX must be a whole number"),
        ({"CONFIRM_MAX_AGE": "forever"}, "CONFIRM_MAX_AGE 'forever' is not a duration"),
        ({"IP_MODE": "partial"}, "IP_MODE must be one of full, truncated, none"),
        ({"TRACKING_MODE": "always"}, "TRACKING_MODE must be one of notice, consent, off"),
        ({"MAIL_FROM": "not an address"}, "MAIL_FROM must be an address"),
        ({"CORS_ORIGINS": "https://a.example/path"}, "CORS_ORIGINS entry"),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.0/8,proxy"}, "FORWARDED_ALLOW_IPS entry 'proxy'"),
        ({"HONEYPOT_FIELD": "email"}, "HONEYPOT_FIELD must not be a real field"),
        ({"DASHBOARD_TIME_ZONE": "Mars/Olympus"}, "DASHBOARD_TIME_ZONE must be a time zone"),
        ({"DASHBOARD_TIME_ZONE": "../../etc/passwd"}, "DASHBOARD_TIME_ZONE must be a time zone"),
        ({"SCHEDULE_POLL_INTERVAL": "0s"}, "SCHEDULE_POLL_INTERVAL must be between"),
        ({"DKIM_SELECTOR": "s1"}, "DKIM_PRIVATE_KEY_FILE, DKIM_SELECTOR and DKIM_DOMAIN"),
        ({"DB_POOL_MIN": "20", "DB_POOL_MAX": "10"}, "DB_POOL_MIN must not be larger"),
        ({"GEOIP_MMDB": "/no/such/file.mmdb"}, "GEOIP_MMDB names a file that does not exist"),
    ],
)
def test_a_bad_value_is_reported_with_the_variable_name(env: dict, expected: str) -> None:
    found = problems(**env)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_all_problems_are_reported_together() -> None:
    found = problems(IP_MODE="x", PIXEL_MODE="y", DB_POOL_MAX="-1")
    assert [p.split()[0] for p in found] == ["DB_POOL_MAX", "IP_MODE", "PIXEL_MODE"]


def test_problems_never_echo_secret_values() -> None:
    found = problems(SECRET_KEYS="my-short-secret")
    assert "my-short-secret" not in " ".join(found)


def test_settings_are_frozen() -> None:
    settings = Settings.from_env(GOOD)
    with pytest.raises(AttributeError):
        settings.public_url = "https://evil.example"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15), ("10m", 600), ("48h", 172800), ("395d", 395 * 86400), ("250ms", 0.25), ("7", 7)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_smtp_urls_of_the_contract() -> None:
    starttls = parse_smtp_url("smtp://user%40x:p%3Ass@mail.example:587?starttls=true")
    assert (starttls.hostname, starttls.port, starttls.start_tls, starttls.use_tls) == (
        "mail.example",
        587,
        True,
        False,
    )
    assert (starttls.username, starttls.password) == ("user@x", "p:ss")
    implicit = parse_smtp_url("smtps://mail.example")
    assert (implicit.port, implicit.use_tls, implicit.start_tls) == (465, True, False)
    plain = parse_smtp_url("smtp://mail.example:25")
    assert (plain.port, plain.start_tls, plain.username) == (25, None, None)
