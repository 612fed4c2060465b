"""Every setting of the service, read from the environment once and validated at start.

`Settings.from_env()` collects *all* problems before failing, so an operator fixing a
deployment sees every wrong variable in one go, one line each, with no traceback.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from service import i18n, keys

REQUIRED = ("DATABASE_URL", "SMTP_URL", "PUBLIC_URL", "SECRET_KEYS")

IP_MODES = ("full", "truncated", "none")
TRACKING_MODES = ("notice", "consent", "off")
PIXEL_MODES = ("wait", "answer-first")


class SettingsError(Exception):
    """Raised with every problem found; `problems` holds one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> float:
    """`"15s"`, `"10m"`, `"48h"`, `"395d"`, `"250ms"` or bare seconds -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 15s, 10m, 48h or 395d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class SmtpTarget:
    hostname: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool  # implicit TLS (smtps://)
    start_tls: bool | None  # None: aiosmtplib's default (STARTTLS when offered)
    validate_certs: bool


def parse_smtp_url(url: str) -> SmtpTarget:
    """`smtp://user:pass@host:587?starttls=true`, `smtps://host:465`, `smtp://host:25`."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError("must start with smtp:// or smtps://")
    if not parts.hostname:
        raise ValueError("has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"has a bad port ({exc})") from None
    query = dict(
        pair.split("=", 1) if "=" in pair else (pair, "true")
        for pair in parts.query.split("&")
        if pair
    )
    unknown = set(query) - {"starttls", "verify"}
    if unknown:
        raise ValueError(f"has unknown options {sorted(unknown)} (known: starttls, verify)")

    def flag(name: str) -> bool | None:
        if name not in query:
            return None
        value = query[name].lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"option {name}={query[name]!r} must be true or false")
        return value in ("true", "1", "yes")

    implicit = parts.scheme == "smtps"

    return SmtpTarget(
        hostname=parts.hostname,
        port=port or (465 if implicit else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        use_tls=implicit,
        start_tls=False if implicit else flag("starttls"),
        validate_certs=flag("verify") is not False,
    )


# Events for the shop's other systems (docs/guides/events.md).
EVENT_TYPES = ("subscriber.confirmed", "subscriber.updated", "subscriber.erased")


@dataclass(frozen=True)
class Endpoint:
    """One receiver of events: its URL, the key of its `whsec_` secret, and the event
    types it wants (None: all)."""

    url: str
    key: bytes = dataclasses.field(repr=False)
    types: frozenset[str] | None = None

    def wants(self, event_type: str) -> bool:
        return self.types is None or event_type in self.types


@dataclass(frozen=True)
class Settings:
    """The whole configuration; what each variable means is in `MEANINGS` below."""

    # -- required (by `serve`; `migrate` and `purge` need only DATABASE_URL) -----
    database_url: str = ""
    smtp_url: str = "smtp://localhost:25"
    public_url: str = "http://localhost:8000"
    secret_keys: tuple[str, ...] = ()
    # -- mail --------------------------------------------------------------------
    mail_from: str = ""
    smtp_timeout: float = 30.0
    dkim_private_key_file: str = ""
    dkim_selector: str = ""
    dkim_domain: str = ""
    # -- admin -------------------------------------------------------------------
    admin_tokens: tuple[str, ...] = ()
    session_max_age: float = 8 * 3600
    dashboard_time_zone: str = "UTC"  # the operator's zone: scheduling and showing times
    demo_page: bool = False  # the demo signup form at / outside dev mode (staging, e2e test)
    # -- network -----------------------------------------------------------------
    forwarded_allow_ips: str = "127.0.0.1"
    cors_origins: tuple[str, ...] = ()
    # -- database ----------------------------------------------------------------
    database_direct_url: str = ""  # bypasses a transaction pooler: LISTEN, migrations
    db_pool_min: int = 2
    db_pool_max: int = 10
    db_statement_cache_size: int = 100
    db_command_timeout: float = 10.0
    # -- signup and confirmation -------------------------------------------------
    thank_you_url: str = ""
    confirmed_url: str = ""
    site_url: str = ""  # the website the form is on: the public pages link back to it
    languages: tuple[str, ...] = i18n.SHIPPED  # offered to subscribers; the first is the fallback
    email_check_deliverability: bool = False
    consent_text_version: str = "v1"
    honeypot_field: str = "website"
    altcha_hmac_key: str = ""  # set: sign-ups need a solved ALTCHA challenge (issue 29)
    altcha_max_age: float = 600.0
    max_body_bytes: int = 8192
    confirm_max_age: float = 48 * 3600
    scanner_window: float = 15.0
    rate_confirm_per_day: int = 3
    rate_confirm_min_interval: float = 600.0
    rate_signup_per_ip_hour: int = 20
    campaign_test_per_hour: int = 10
    # -- mailer (outbox) ---------------------------------------------------------
    outbox_max_attempts: int = 8
    outbox_concurrency: int = 4
    # -- sending at scale (issue 16) -------------------------------------------------
    outbox_batch: int = 50  # jobs a lane claims, sends and records in one transaction
    import_max_bytes: int = 256 * 1024 * 1024  # one NDJSON import's body
    import_confirm_rate: int = 20  # imported pending subscribers' confirmations a second
    outbox_poll_interval: float = 5.0
    outbox_backoff_base: float = 30.0
    outbox_backoff_max: float = 6 * 3600
    schedule_poll_interval: float = 2.0  # how often a worker looks for due scheduled sends
    # -- a relay in a bad mood (docs/concepts/delivery.md, "Sending limits and …") -----
    smtp_max_rate: float | None = None  # emails a second, all processes together
    smtp_max_per_hour: int | None = None  # per UTC clock hour
    smtp_max_per_day: int | None = None  # per UTC day
    send_breaker_share: float = 0.10  # refusals of one category that pause a campaign ...
    send_breaker_min_sends: int = 20  # ... among at least this many recent sends
    send_breaker_window: int = 200  # the recent sends a worker process judges
    # -- pixel and privacy -------------------------------------------------------
    tracking_mode: str = "consent"
    ip_mode: str = "truncated"
    pixel_mode: str = "wait"
    pixel_wait_max: float = 2.0
    pixel_queue_max: int = 20000
    pixel_batch_max: int = 1000
    machine_open_window: float = 10.0
    geoip_mmdb: str = ""
    apple_proxy_ranges_file: str = ""
    # -- classification (issue 15) -------------------------------------------------
    # Mail scanners' networks (opens from them are `scanner_network`); empty: the list
    # shipped in service/tracking/data/scanner_ranges.csv.
    scanner_ranges_file: str = ""
    open_retention: float = 395 * 86400
    purge_interval: float = 3600.0
    # -- privacy at the edges (docs/concepts/privacy.md) ----------------------
    signup_min_duration: float = 0.1  # every accepted sign-up answers no sooner
    admin_auth_failures: int = 10  # failed admin tokens per client IP and window
    admin_auth_window: float = 900.0
    erasure_journal_retention: float = 40 * 86400  # > backup retention + base backup interval
    stats_min_bucket: int = 5  # smaller breakdown buckets are merged into "other"
    # -- the subscriber's own page (issue 14) ----------------------------------------
    # How long a fresh link to see or change one's data works (once), and the page it
    # opens stays usable after that.
    manage_link_max_age: float = 1800.0
    # -- bounces and complaints (service/bounces/, docs/guides/bounces.md) ---------
    bounce_domain: str = ""  # VERP return paths {BOUNCE_LOCAL}+{token}@ here; "" = MAIL_FROM
    bounce_local: str = "bounces"
    bounce_soft_limit: int = 3  # soft bounces within BOUNCE_SOFT_WINDOW that erase
    bounce_soft_window: float = 15 * 86400
    bounce_smtp_host: str = "0.0.0.0"  # `newsletter bounces`
    bounce_smtp_port: int = 2525
    bounce_smtp_max_bytes: int = 2 * 1024 * 1024
    bounce_smtp_timeout: float = 60.0
    bounce_smtp_max_connections: int = 32  # sessions at once; each may hold MAX_BYTES
    bounce_smtp_max_per_peer: int = 5  # sessions at once from one IP address
    bounce_imap_url: str = ""  # imaps://user:password@host/INBOX, polled by the worker
    bounce_imap_interval: float = 60.0
    webhook_max_bytes: int = 1024 * 1024
    webhook_ses_topic_arns: tuple[str, ...] = ()
    webhook_postmark_auth: str = ""  # user:password of the webhook URL's basic auth
    webhook_sendgrid_public_key: str = ""  # base64 DER, "Signed Event Webhook" page
    webhook_mailgun_signing_key: str = ""
    webhook_postmark_ips: tuple[str, ...] = ()  # networks Postmark may call from; () = any
    # -- events for the shop's other systems (docs/guides/events.md) --------------
    events_url: tuple[str, ...] = ()  # one entry per receiver
    events_secret: tuple[str, ...] = ()  # in step with events_url
    events_types: tuple[str, ...] = ()  # in step; "" = every type
    events_max_age: float = 3 * 86400  # an undeliverable event is dropped after it
    events_timeout: float = 10.0
    # -- process -----------------------------------------------------------------
    log_level: str = "info"
    dev: bool = False
    dev_mail_dir: str = ""  # set by `newsletter dev` only: where caught mail is kept

    @property
    def smtp(self) -> SmtpTarget:
        return parse_smtp_url(self.smtp_url)

    @property
    def direct_database_url(self) -> str:
        """For what a transaction-mode pooler cannot carry: LISTEN and session locks."""
        return self.database_direct_url or self.database_url

    @property
    def public_base(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def event_endpoints(self) -> tuple[Endpoint, ...]:
        """The receivers of EVENTS_URL, EVENTS_SECRET and EVENTS_TYPES, taken in step."""
        types = self.events_types or ("",) * len(self.events_url)
        return tuple(
            Endpoint(url, _secret_key(secret), frozenset(kinds.split()) if kinds else None)
            for url, secret, kinds in zip(self.events_url, self.events_secret, types, strict=True)
        )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, required: Sequence[str] = REQUIRED
    ) -> Settings:
        return _load(os.environ if environ is None else environ, tuple(required))


# (env var, field, parser); parsers raise ValueError with a message that completes
# "VARIABLE <message>".
def _url(schemes: tuple[str, ...]):
    def parse(text: str) -> str:
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(
                f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
            )
        return text

    return parse


def _optional_pg_url(text: str) -> str:
    return _url(("postgresql", "postgres"))(text) if text else ""


def _optional_url(text: str) -> str:
    return _url(("http", "https"))(text) if text else ""


def _public_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL, e.g. https://news.example.com")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return text.rstrip("/")


def _smtp(text: str) -> str:
    parse_smtp_url(text)
    return text


def _keys(text: str) -> tuple[str, ...]:
    keys = _split(text)
    if not keys:
        raise ValueError("must hold at least one key")
    short = [i + 1 for i, key in enumerate(keys) if len(key) < 32]
    if short:
        raise ValueError(f"entries must be at least 32 characters (too short: key {short})")
    return keys


def _optional_key(text: str) -> str:
    if text and len(text) < 32:
        raise ValueError("must be at least 32 characters (or empty: off)")
    return text


def _tokens(text: str) -> tuple[str, ...]:
    tokens = _split(text)
    if any(len(token) < 16 for token in tokens):
        raise ValueError("entries must be at least 16 characters")
    return tokens


def _origins(text: str) -> tuple[str, ...]:
    origins = _split(text)
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError(f"entry {origin!r} must be an origin like https://www.example.com")
        if parts.path not in ("", "/") and origin != "*":
            raise ValueError(f"entry {origin!r} must be an origin without a path")
    return tuple(o.rstrip("/") for o in origins)


def _mail_from(text: str) -> str:
    name, address = parseaddr(text)
    if "@" not in address or any(c in text for c in "\r\n"):
        raise ValueError("must be an address like 'Example News <news@example.com>'")
    Address(display_name=name, addr_spec=address)  # raises on malformed parts
    return text


def _int(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _seconds(low: float, high: float):
    def parse(text: str) -> float:
        value = parse_duration(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g}s and {high:g}s, got {value:g}s")
        return value

    return parse


def _optional_number(kind: type, low: float, high: float):
    def parse(text: str) -> float | int | None:
        if not text:
            return None
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"must be a number or empty (no cap), got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g} or empty, got {value:g}")
        return value

    return parse


def _share(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise ValueError(f"must be a share like 0.1 or 10%, got {text!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"must be above 0 and at most 1 (100%), got {text!r}")
    return value


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"must be true or false, got {text!r}")


def _choice(choices: tuple[str, ...]):
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _text(max_len: int):
    def parse(text: str) -> str:
        if len(text) > max_len or any(ord(c) < 32 for c in text):
            raise ValueError(f"must be at most {max_len} printable characters")
        return text

    return parse


def _time_zone(text: str) -> str:
    """An IANA zone name the system's (or the tzdata package's) zone data knows."""
    if text == "UTC":
        return text
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"must be a time zone name such as Europe/Berlin (IANA), got {text[:60]!r}"
            " (or the system has no zone data: install tzdata)"
        ) from None
    return text


def _field_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,40}", text):
        raise ValueError("must be a simple form field name")
    if text in ("email", "name", "tracking", "source"):
        raise ValueError(f"must not be a real field of the form ({text!r})")
    return text


def _forwarded(text: str) -> str:
    for part in _split(text):
        if part == "*" or part.startswith("unix:"):
            continue
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValueError(f"entry {part!r} is not an IP address, network or *") from None
    return text


def _file(text: str) -> str:
    if text and not os.path.isfile(text):
        raise ValueError(f"names a file that does not exist: {text}")
    return text


def _domain(text: str) -> str:
    if text and not re.fullmatch(
        r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", text.lower()
    ):
        raise ValueError(f"is not a domain name: {text!r}")
    return text.lower()


def _bounce_local(text: str) -> str:
    """At most 18 characters: with `+` and the 45 of the token, 64 (RFC 5321)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,17}", text) or text.endswith("."):
        raise ValueError("must be 1-18 of a-z 0-9 . _ - (lower case, no +)")
    return text


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _imap_url(text: str) -> str:
    if not text:
        return text
    parts = urlsplit(text)
    if parts.scheme not in ("imap", "imaps") or not parts.hostname or not parts.username:
        raise ValueError("must look like imaps://user:password@host/INBOX")
    if parts.scheme == "imap" and not _loopback(parts.hostname):
        raise ValueError(
            "must use imaps:// (TLS): plain imap:// would send the mailbox password and"
            " the bounces unencrypted, so it is allowed only to a loopback host"
        )
    return text


def _networks(text: str) -> tuple[str, ...]:
    networks = _split(text)
    for part in networks:
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValueError(f"entry {part!r} is not an IP address or network") from None
    return networks


def _basic_auth(text: str) -> str:
    if text and (":" not in text or len(text) < 16):
        raise ValueError("must be user:password, at least 16 characters in all")
    return text


def _event_urls(text: str) -> tuple[str, ...]:
    urls = _split(text)
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"entry {_host_of(url)!r} must be an https:// URL")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValueError(
                f"entry for {parts.hostname} must use https://: events carry addresses and"
                " names, so plain http:// is allowed only to a loopback host"
            )
    if len(set(urls)) != len(urls):
        raise ValueError("names a URL twice")
    return urls


def _host_of(url: str) -> str:
    """A URL's host, for messages and metric labels (a path may hold a token)."""
    return urlsplit(url).hostname or "?"


def _secret_key(secret: str) -> bytes:
    """The key of a Standard Webhooks secret: the base64 after `whsec_`, 24 to 64 bytes."""
    if not secret.startswith("whsec_"):
        raise ValueError("must start with whsec_")
    try:
        encoded = secret.removeprefix("whsec_")
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("must be whsec_ followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"must hold 24 to 64 bytes after whsec_ (holds {len(key)})")
    return key


def _event_secrets(text: str) -> tuple[str, ...]:
    secrets = _split(text)
    for number, secret in enumerate(secrets, 1):
        try:
            _secret_key(secret)
        except ValueError as exc:  # the message never shows the secret
            raise ValueError(f"entry {number} {exc}") from None
    return secrets


def _event_types(text: str) -> tuple[str, ...]:
    """One entry per URL, comma-separated: `*` (or nothing) for every type, else the
    types wanted separated by spaces."""
    if not text.strip():
        return ()
    entries = tuple(entry.strip() for entry in text.split(","))
    for entry in entries:
        unknown = set(entry.split()) - set(EVENT_TYPES) - {"*"}
        if unknown:
            raise ValueError(
                f"names unknown types {sorted(unknown)} (known: {', '.join(EVENT_TYPES)}, *)"
            )
    return tuple("" if entry in ("", "*") else " ".join(entry.split()) for entry in entries)


def _public_key(text: str) -> str:
    if text:
        keys.ecdsa_public_key(text)
    return text


_DAY = 86400.0
VARIABLES: tuple[tuple[str, str, Any], ...] = (
    ("DATABASE_URL", "database_url", _url(("postgresql", "postgres"))),
    ("SMTP_URL", "smtp_url", _smtp),
    ("PUBLIC_URL", "public_url", _public_url),
    ("SECRET_KEYS", "secret_keys", _keys),
    ("MAIL_FROM", "mail_from", _mail_from),
    ("SMTP_TIMEOUT", "smtp_timeout", _seconds(1, 600)),
    ("DKIM_PRIVATE_KEY_FILE", "dkim_private_key_file", _file),
    ("DKIM_SELECTOR", "dkim_selector", _text(63)),
    ("DKIM_DOMAIN", "dkim_domain", _text(253)),
    ("ADMIN_TOKENS", "admin_tokens", _tokens),
    ("SESSION_MAX_AGE", "session_max_age", _seconds(60, 30 * _DAY)),
    ("DASHBOARD_TIME_ZONE", "dashboard_time_zone", _time_zone),
    ("DEMO_PAGE", "demo_page", _bool),
    ("FORWARDED_ALLOW_IPS", "forwarded_allow_ips", _forwarded),
    ("CORS_ORIGINS", "cors_origins", _origins),
    ("DATABASE_DIRECT_URL", "database_direct_url", _optional_pg_url),
    ("DB_POOL_MIN", "db_pool_min", _int(0, 100)),
    ("DB_POOL_MAX", "db_pool_max", _int(1, 200)),
    ("DB_STATEMENT_CACHE_SIZE", "db_statement_cache_size", _int(0, 10000)),
    ("DB_COMMAND_TIMEOUT", "db_command_timeout", _seconds(0.1, 600)),
    ("THANK_YOU_URL", "thank_you_url", _optional_url),
    ("CONFIRMED_URL", "confirmed_url", _optional_url),
    ("SITE_URL", "site_url", _optional_url),
    ("LANGUAGES", "languages", i18n.parse_languages),
    ("EMAIL_CHECK_DELIVERABILITY", "email_check_deliverability", _bool),
    ("CONSENT_TEXT_VERSION", "consent_text_version", _text(64)),
    ("HONEYPOT_FIELD", "honeypot_field", _field_name),
    ("ALTCHA_HMAC_KEY", "altcha_hmac_key", _optional_key),
    ("ALTCHA_MAX_AGE", "altcha_max_age", _seconds(60, 3600)),
    ("MAX_BODY_BYTES", "max_body_bytes", _int(1024, 1024 * 1024)),
    ("CONFIRM_MAX_AGE", "confirm_max_age", _seconds(60, 30 * _DAY)),
    ("SCANNER_WINDOW", "scanner_window", _seconds(0, 600)),
    ("RATE_CONFIRM_PER_DAY", "rate_confirm_per_day", _int(1, 100)),
    ("RATE_CONFIRM_MIN_INTERVAL", "rate_confirm_min_interval", _seconds(0, _DAY)),
    ("RATE_SIGNUP_PER_IP_HOUR", "rate_signup_per_ip_hour", _int(1, 1_000_000)),
    ("CAMPAIGN_TEST_PER_HOUR", "campaign_test_per_hour", _int(1, 1000)),
    ("OUTBOX_MAX_ATTEMPTS", "outbox_max_attempts", _int(1, 100)),
    ("OUTBOX_CONCURRENCY", "outbox_concurrency", _int(0, 64)),
    ("OUTBOX_BATCH", "outbox_batch", _int(1, 1000)),
    ("IMPORT_MAX_BYTES", "import_max_bytes", _int(1024, 2**31)),
    ("IMPORT_CONFIRM_RATE", "import_confirm_rate", _int(1, 10_000)),
    ("OUTBOX_POLL_INTERVAL", "outbox_poll_interval", _seconds(0.05, 3600)),
    ("OUTBOX_BACKOFF_BASE", "outbox_backoff_base", _seconds(0.01, _DAY)),
    ("OUTBOX_BACKOFF_MAX", "outbox_backoff_max", _seconds(0.01, 7 * _DAY)),
    ("SCHEDULE_POLL_INTERVAL", "schedule_poll_interval", _seconds(0.05, 300)),
    ("SMTP_MAX_RATE", "smtp_max_rate", _optional_number(float, 0.01, 100_000)),
    ("SMTP_MAX_PER_HOUR", "smtp_max_per_hour", _optional_number(int, 1, 10**9)),
    ("SMTP_MAX_PER_DAY", "smtp_max_per_day", _optional_number(int, 1, 10**10)),
    ("SEND_BREAKER_SHARE", "send_breaker_share", _share),
    ("SEND_BREAKER_MIN_SENDS", "send_breaker_min_sends", _int(1, 100_000)),
    ("SEND_BREAKER_WINDOW", "send_breaker_window", _int(1, 1_000_000)),
    ("TRACKING_MODE", "tracking_mode", _choice(TRACKING_MODES)),
    ("IP_MODE", "ip_mode", _choice(IP_MODES)),
    ("PIXEL_MODE", "pixel_mode", _choice(PIXEL_MODES)),
    ("PIXEL_WAIT_MAX", "pixel_wait_max", _seconds(0.01, 60)),
    ("PIXEL_QUEUE_MAX", "pixel_queue_max", _int(100, 10_000_000)),
    ("PIXEL_BATCH_MAX", "pixel_batch_max", _int(1, 100_000)),
    ("MACHINE_OPEN_WINDOW", "machine_open_window", _seconds(0, 3600)),
    ("GEOIP_MMDB", "geoip_mmdb", _file),
    ("APPLE_PROXY_RANGES_FILE", "apple_proxy_ranges_file", _file),
    ("SCANNER_RANGES_FILE", "scanner_ranges_file", _file),
    ("OPEN_RETENTION", "open_retention", _seconds(_DAY, 20 * 365 * _DAY)),
    ("PURGE_INTERVAL", "purge_interval", _seconds(1, 7 * _DAY)),
    ("SIGNUP_MIN_DURATION", "signup_min_duration", _seconds(0, 5)),
    ("ADMIN_AUTH_FAILURES", "admin_auth_failures", _int(1, 10_000)),
    ("ADMIN_AUTH_WINDOW", "admin_auth_window", _seconds(60, _DAY)),
    ("ERASURE_JOURNAL_RETENTION", "erasure_journal_retention", _seconds(_DAY, 10 * 365 * _DAY)),
    ("STATS_MIN_BUCKET", "stats_min_bucket", _int(1, 1000)),
    ("MANAGE_LINK_MAX_AGE", "manage_link_max_age", _seconds(60, _DAY)),
    ("BOUNCE_DOMAIN", "bounce_domain", _domain),
    ("BOUNCE_LOCAL", "bounce_local", _bounce_local),
    ("BOUNCE_SOFT_LIMIT", "bounce_soft_limit", _int(1, 100)),
    ("BOUNCE_SOFT_WINDOW", "bounce_soft_window", _seconds(_DAY, 365 * _DAY)),
    ("BOUNCE_SMTP_HOST", "bounce_smtp_host", _text(253)),
    ("BOUNCE_SMTP_PORT", "bounce_smtp_port", _int(1, 65535)),
    ("BOUNCE_SMTP_MAX_BYTES", "bounce_smtp_max_bytes", _int(64 * 1024, 100 * 1024 * 1024)),
    ("BOUNCE_SMTP_TIMEOUT", "bounce_smtp_timeout", _seconds(1, 3600)),
    ("BOUNCE_SMTP_MAX_CONNECTIONS", "bounce_smtp_max_connections", _int(1, 10_000)),
    ("BOUNCE_SMTP_MAX_PER_PEER", "bounce_smtp_max_per_peer", _int(1, 10_000)),
    ("BOUNCE_IMAP_URL", "bounce_imap_url", _imap_url),
    ("BOUNCE_IMAP_INTERVAL", "bounce_imap_interval", _seconds(1, _DAY)),
    ("WEBHOOK_MAX_BYTES", "webhook_max_bytes", _int(1024, 100 * 1024 * 1024)),
    ("WEBHOOK_SES_TOPIC_ARNS", "webhook_ses_topic_arns", _split),
    ("WEBHOOK_POSTMARK_AUTH", "webhook_postmark_auth", _basic_auth),
    ("WEBHOOK_SENDGRID_PUBLIC_KEY", "webhook_sendgrid_public_key", _public_key),
    ("WEBHOOK_MAILGUN_SIGNING_KEY", "webhook_mailgun_signing_key", _text(200)),
    ("WEBHOOK_POSTMARK_IPS", "webhook_postmark_ips", _networks),
    ("EVENTS_URL", "events_url", _event_urls),
    ("EVENTS_SECRET", "events_secret", _event_secrets),
    ("EVENTS_TYPES", "events_types", _event_types),
    ("EVENTS_MAX_AGE", "events_max_age", _seconds(60, 30 * _DAY)),
    ("EVENTS_TIMEOUT", "events_timeout", _seconds(1, 60)),
    ("LOG_LEVEL", "log_level", _choice(("debug", "info", "warning", "error"))),
)

# What each variable is for, in the operator's words: docs/generate.py writes the settings
# reference (docs/reference/settings.md) from VARIABLES, the defaults of Settings and this.
MEANINGS: dict[str, str] = {
    "DATABASE_URL": "PostgreSQL, `postgresql://user:pass@host:5432/db` (through PgBouncer in"
    " transaction mode is fine with `DB_STATEMENT_CACHE_SIZE=0`).",
    "SMTP_URL": "The relay: `smtp://user:pass@host:587?starttls=true`, `smtps://host:465`,"
    " `smtp://host:25`; `?verify=false` skips certificate checks (test relays only).",
    "PUBLIC_URL": "Base of every link in an email, e.g. `https://news.example.com`"
    " (no query or fragment).",
    "SECRET_KEYS": "Comma-separated, each at least 32 characters: the first encrypts tokens"
    " and signs cookies, all decrypt and verify, so keys rotate by putting a new one first.",
    "MAIL_FROM": "Sender (`From`) of every email, e.g. `Example News <news@example.com>`;"
    " empty: `Newsletter <newsletter@{PUBLIC_URL host}>`.",
    "SMTP_TIMEOUT": "Timeout of each SMTP command.",
    "DKIM_PRIVATE_KEY_FILE": "A PEM key to DKIM-sign every email with (all three DKIM settings"
    " or none): RSA (2048 bits advised) signs `rsa-sha256`, Ed25519 `ed25519-sha256`;"
    " checked at start.",
    "DKIM_SELECTOR": "The DKIM selector: the key's DNS record is `{selector}._domainkey.{domain}`.",
    "DKIM_DOMAIN": "The DKIM signing domain (`d=`), normally `MAIL_FROM`'s domain.",
    "ADMIN_TOKENS": "Comma-separated bearer tokens (each at least 16 characters) for"
    " `/admin/api/*` and the dashboard sign-in; empty: every admin route answers `401`.",
    "SESSION_MAX_AGE": "Lifetime of a dashboard session (absolute, not sliding).",
    "DASHBOARD_TIME_ZONE": "The operator's time zone (an IANA name such as `Europe/Berlin`):"
    " the dashboard schedules sends in it and shows scheduled times in it. The API always"
    " takes and answers RFC 3339 times with their offset.",
    "DEMO_PAGE": "Also serve the demo sign-up form at `/` outside `newsletter dev`"
    " (a staging check of the whole flow, the browser test).",
    "FORWARDED_ALLOW_IPS": "uvicorn's own: the proxies whose `X-Forwarded-For` is believed;"
    " the client IP of a sign-up, an open or a rate limit comes from it only then. Never `*`.",
    "CORS_ORIGINS": "Origins allowed to post JSON to `/subscribe` from a browser script"
    " (`*` for any); plain form posts need none.",
    "DATABASE_DIRECT_URL": "A connection that bypasses a transaction-mode pooler, for the"
    " outbox's `LISTEN` and the session-level advisory lock of `migrate`; empty:"
    " `DATABASE_URL`.",
    "DB_POOL_MIN": "Smallest asyncpg pool per process.",
    "DB_POOL_MAX": "Largest asyncpg pool per process; keep it above `OUTBOX_CONCURRENCY`.",
    "DB_STATEMENT_CACHE_SIZE": "asyncpg's prepared-statement cache; `0` behind PgBouncer in"
    " transaction mode.",
    "DB_COMMAND_TIMEOUT": "Timeout of each query (and of waiting for a pooled connection).",
    "THANK_YOU_URL": "Where a form sign-up is redirected (`303`); empty: a"
    ' "check your inbox" page.',
    "CONFIRMED_URL": "Where a confirmation is redirected (`303`); empty: a page.",
    "SITE_URL": "The website the form is on: the public pages link back to it. Empty: the"
    " site of `CONFIRMED_URL` or `THANK_YOU_URL`, else the demo page when it is served,"
    " else no link.",
    "LANGUAGES": "The languages offered to subscribers, BCP 47 tags, comma-separated, each"
    f" a shipped one ({', '.join(i18n.SHIPPED)}). A sign-up's `lang` field, else its"
    " `Accept-Language`, picks one; nothing matching: the first listed. Every page and email"
    " about a subscriber is in their language (docs/guides/languages.md).",
    "EMAIL_CHECK_DELIVERABILITY": "Also ask DNS whether an address's domain accepts mail.",
    "CONSENT_TEXT_VERSION": "Version of the consent text in force, stored with every consent"
    " event; change it when the form's wording changes.",
    "HONEYPOT_FIELD": "Name of the hidden form field that only bots fill in.",
    "ALTCHA_HMAC_KEY": "At least 32 characters; set: every sign-up needs a solved ALTCHA"
    " challenge (a proof of work the form's widget does in the browser; no cookies, no third"
    " party) in the field `altcha`, and `GET /altcha` serves the challenges; empty: off"
    " (`GET /altcha` answers `404`). Changing it invalidates the challenges issued before.",
    "ALTCHA_MAX_AGE": "How long an ALTCHA challenge can be solved and sent: a form left"
    " open longer fetches a new one.",
    "MAX_BODY_BYTES": "Largest sign-up or unsubscribe body; larger gets `413`.",
    "CONFIRM_MAX_AGE": "Lifetime of confirmation and cancel links, of an unconfirmed sign-up"
    " and of an address change waiting for its confirmation.",
    "SCANNER_WINDOW": "Automatic confirmations this soon after the email was handed to the"
    " relay are refused (mail scanners strike at delivery); a person gets the button.",
    "RATE_CONFIRM_PER_DAY": "Confirmation and fresh-link emails per address per UTC day.",
    "RATE_CONFIRM_MIN_INTERVAL": "No such email to an address sooner than this after the last.",
    "RATE_SIGNUP_PER_IP_HOUR": "Sign-ups (and `/manage` link requests) per client IP"
    " (IPv6: per /64) per clock hour; then `429` with `Retry-After`.",
    "CAMPAIGN_TEST_PER_HOUR": "Test sends of one campaign per operator (admin token) per"
    " clock hour, API and dashboard together; then `429` with `Retry-After`.",
    "OUTBOX_MAX_ATTEMPTS": "Tries per email before it is dropped (throttles and an"
    " unreachable relay use up none).",
    "OUTBOX_CONCURRENCY": "Sending lanes per process, each with its own SMTP connection and"
    " transaction (keep `DB_POOL_MAX` above it); `0`: `serve` sends nothing (unlike"
    " `--no-worker` it still runs retention), and `newsletter worker` refuses to start.",
    "OUTBOX_BATCH": "Jobs a lane claims, sends and records in one transaction; also the"
    " duplicate window per lane if the process is killed.",
    "IMPORT_MAX_BYTES": "Largest body of `POST /admin/api/subscribers/import`.",
    "IMPORT_CONFIRM_RATE": "Confirmation emails a second for the pending subscribers of an"
    " import (their jobs' run times are spread out).",
    "OUTBOX_POLL_INTERVAL": "The outbox's polling fallback; it is normally woken by"
    " `LISTEN/NOTIFY`.",
    "OUTBOX_BACKOFF_BASE": "First wait before a refused email is tried again (exponential,"
    " jittered into the upper half).",
    "OUTBOX_BACKOFF_MAX": "Longest wait between two tries.",
    "SCHEDULE_POLL_INTERVAL": "How often a process that sends (`newsletter worker`, or"
    " `serve` without `--no-worker`) looks for scheduled sends that are due; a send starts"
    " at most this long after its time.",
    "SMTP_MAX_RATE": "Emails a second to the relay, every process and lane together (a"
    " token bucket in PostgreSQL); empty: no cap.",
    "SMTP_MAX_PER_HOUR": "Emails per UTC clock hour, every process together; empty: no cap.",
    "SMTP_MAX_PER_DAY": "Emails per UTC day, every process together; empty: no cap.",
    "SEND_BREAKER_SHARE": "Share of one refusal category among a worker's recent sends that"
    " pauses the campaigns concerned (`0.1` or `10%`).",
    "SEND_BREAKER_MIN_SENDS": "Recent sends a worker process needs before it judges.",
    "SEND_BREAKER_WINDOW": "The recent sends a worker process judges.",
    "TRACKING_MODE": "`consent` (personal opens only for those who agreed on the"
    " confirmation page), `notice` (everyone unless they object) or `off` (no pixel).",
    "IP_MODE": "IP kept in evidence and open events: `full`, `truncated` (/24 for IPv4, /48"
    " for IPv6) or `none`; reduced before storage.",
    "PIXEL_MODE": "`wait` (a pixel answer means its open is committed) or `answer-first`"
    " (answer at once, write in the background).",
    "PIXEL_WAIT_MAX": "Longest a pixel request waits for its batch's commit.",
    "PIXEL_QUEUE_MAX": "Opens waiting in memory per process; beyond it an open is dropped"
    " and counted.",
    "PIXEL_BATCH_MAX": "Opens per statement of the group commit.",
    "MACHINE_OPEN_WINDOW": "Opens this soon after the email was sent count as machine opens"
    " (`soon_after_send`).",
    "GEOIP_MMDB": "A MaxMind `.mmdb` country database instead of geoip2fast's bundled data"
    " (needs the `mmdb` extra).",
    "APPLE_PROXY_RANGES_FILE": "A CSV whose first column is a network (Apple's"
    " `egress-ip-ranges.csv`): opens from it are `apple_mpp`; 17.0.0.0/8 is built in.",
    "SCANNER_RANGES_FILE": "A CSV of mail scanners' networks (first column) replacing the"
    " shipped `service/tracking/data/scanner_ranges.csv`; opens from them are `scanner_network`.",
    "OPEN_RETENTION": "Open events, and deliveries no longer queued, older than this are"
    " deleted (395 days: 13 months).",
    "PURGE_INTERVAL": "How often a process that sends (`newsletter worker`, or `serve`"
    " without `--no-worker`) tries a retention pass; one pass runs at a time.",
    "SIGNUP_MIN_DURATION": "Every accepted sign-up (and `/manage` request) is answered no"
    " sooner than this, so timing does not tell a subscribed address from a new one.",
    "ADMIN_AUTH_FAILURES": "Failed admin tokens (API bearer or dashboard sign-in) per client"
    " IP per `ADMIN_AUTH_WINDOW`, counted across replicas; then `429` with `Retry-After`,"
    " also for a right token.",
    "ADMIN_AUTH_WINDOW": "The window of `ADMIN_AUTH_FAILURES`.",
    "ERASURE_JOURNAL_RETENTION": "How long the erasure journal (ids and times only) is kept"
    " for re-erasing after a backup restore; longer than the backups.",
    "STATS_MIN_BUCKET": "Statistics show no country, client or hour bucket with fewer opens:"
    " those are merged into `other` (totals stay exact).",
    "MANAGE_LINK_MAX_AGE": "How long a fresh link to a subscriber's own data works (once),"
    " and how long the page it opens can act after that.",
    "BOUNCE_DOMAIN": "VERP return paths `{BOUNCE_LOCAL}+{token}@` this domain; empty: the"
    " envelope sender is `MAIL_FROM`'s address.",
    "BOUNCE_LOCAL": "The return path's local part before `+` (1-18 of a-z 0-9 . _ -).",
    "BOUNCE_SOFT_LIMIT": "Soft bounces of separate emails within `BOUNCE_SOFT_WINDOW` that"
    " erase the subscriber.",
    "BOUNCE_SOFT_WINDOW": "The window of `BOUNCE_SOFT_LIMIT`; soft bounces older than it"
    " are deleted.",
    "BOUNCE_SMTP_HOST": "Where `newsletter bounces` listens (`--host` overrides it).",
    "BOUNCE_SMTP_PORT": "Its port (`--port` overrides it).",
    "BOUNCE_SMTP_MAX_BYTES": "Largest message the bounce receiver takes (`552` above).",
    "BOUNCE_SMTP_TIMEOUT": "An idle SMTP session of the bounce receiver ends after this.",
    "BOUNCE_SMTP_MAX_CONNECTIONS": "Bounce receiver sessions at once; `421` above.",
    "BOUNCE_SMTP_MAX_PER_PEER": "Bounce receiver sessions at once from one IP address;"
    " `421` above.",
    "BOUNCE_IMAP_URL": "A bounce mailbox the worker polls, `imaps://user:password@host/INBOX`"
    " (`imap://` only to a loopback host); empty: none.",
    "BOUNCE_IMAP_INTERVAL": "How often the worker polls the bounce mailbox.",
    "WEBHOOK_MAX_BYTES": "Largest provider webhook body; `413` above.",
    "WEBHOOK_SES_TOPIC_ARNS": "SNS topics whose messages `/webhooks/ses` takes"
    " (comma-separated); empty: that webhook is off.",
    "WEBHOOK_POSTMARK_AUTH": "`user:password` of the Postmark webhook's basic auth; empty:"
    " `/webhooks/postmark` is off.",
    "WEBHOOK_SENDGRID_PUBLIC_KEY": "SendGrid's Signed Event Webhook key (base64 DER or PEM);"
    " empty: `/webhooks/sendgrid` is off.",
    "WEBHOOK_MAILGUN_SIGNING_KEY": "Mailgun's webhook signing key; empty: `/webhooks/mailgun`"
    " is off.",
    "WEBHOOK_POSTMARK_IPS": "IP addresses or networks `/webhooks/postmark` is taken from"
    " (Postmark's published webhook IPs); empty: any.",
    "EVENTS_URL": "Where signed events go (Standard Webhooks; docs/guides/events.md):"
    " comma-separated URLs, each its own receiver (`https://`; `http://` only to a loopback"
    " host); empty: no events are queued. Every process of a deployment needs the same value.",
    "EVENTS_SECRET": "The `whsec_…` secret of each URL of `EVENTS_URL`, comma-separated in"
    " the same order (base64 of 24 to 64 random bytes after `whsec_`).",
    "EVENTS_TYPES": "The event types each URL of `EVENTS_URL` gets, comma-separated in the"
    " same order: `*` (or nothing) for all, else types separated by spaces, e.g."
    " `*,subscriber.erased subscriber.confirmed`; empty: every URL gets every type.",
    "EVENTS_MAX_AGE": "An event not delivered by then is dropped (and counted), so no"
    " address waits longer for a receiver that is gone; retries back off as"
    " `OUTBOX_BACKOFF_BASE` and `OUTBOX_BACKOFF_MAX` say.",
    "EVENTS_TIMEOUT": "Timeout of each event delivery (connecting, sending, the answer).",
    "LOG_LEVEL": "`debug`, `info`, `warning` or `error`.",
}


def _load(environ: Mapping[str, str], required: tuple[str, ...] = REQUIRED) -> Settings:
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, field, parse in VARIABLES:
        raw = environ.get(name)
        if raw is None or (raw.strip() == "" and name in REQUIRED):
            if name in required:
                problems.append(f"{name} is not set (required)")
            continue
        try:
            values[field] = parse(raw.strip())
        except ValueError as exc:
            problems.append(f"{name} {exc}")
    if not problems:
        problems.extend(_cross_checks(values))
    if problems:
        raise SettingsError(problems)
    if not values.get("mail_from"):
        host = urlsplit(values.get("public_url", "")).hostname or "localhost"
        values["mail_from"] = f"Newsletter <newsletter@{host}>"
    return Settings(**values)


def _cross_checks(values: dict[str, Any]) -> list[str]:
    problems = []
    if values.get("db_pool_min", 2) > values.get("db_pool_max", 10):
        problems.append("DB_POOL_MIN must not be larger than DB_POOL_MAX")
    dkim = [values.get(f) for f in ("dkim_private_key_file", "dkim_selector", "dkim_domain")]
    if any(dkim) and not all(dkim):
        problems.append("DKIM_PRIVATE_KEY_FILE, DKIM_SELECTOR and DKIM_DOMAIN must be set together")
    elif all(dkim):
        try:
            keys.dkim_private_key(Path(dkim[0]).read_bytes())
        except (ValueError, TypeError, OSError) as exc:
            problems.append(f"DKIM_PRIVATE_KEY_FILE is not a usable key: {exc}")
    if values.get("outbox_backoff_base", 30) > values.get("outbox_backoff_max", 6 * 3600):
        problems.append("OUTBOX_BACKOFF_BASE must not be larger than OUTBOX_BACKOFF_MAX")
    if values.get("send_breaker_min_sends", 20) > values.get("send_breaker_window", 200):
        problems.append("SEND_BREAKER_MIN_SENDS must not be larger than SEND_BREAKER_WINDOW")
    urls, secrets = values.get("events_url", ()), values.get("events_secret", ())
    if len(secrets) != len(urls):
        problems.append(
            f"EVENTS_SECRET must hold one whsec_ secret per URL of EVENTS_URL"
            f" ({len(urls)} URLs, {len(secrets)} secrets)"
        )
    types = values.get("events_types", ())
    if types and len(types) != len(urls):
        problems.append(
            f"EVENTS_TYPES must hold one entry per URL of EVENTS_URL ({len(urls)} URLs,"
            f" {len(types)} entries; `*` for every type)"
        )
    return problems
