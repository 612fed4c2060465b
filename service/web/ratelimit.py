"""Abuse limits kept in PostgreSQL, so that they hold across every replica.

Rows are keyed by an HMAC of the address or client IP, never the value itself, with a
random key of the current UTC day (`rate_limit_keys`). The retention pass deletes a
day's key, and every row made with it, once the day is over: the windows are fixed
(a UTC day per address, an hour per sign-up IP, ADMIN_AUTH_WINDOW per admin client), so
no window outlives its day, and after that no stored hash can be tested against a list
of every IPv4 address. The same construction privacy-first web analytics use for
visitor hashes (Plausible: a salt rotated daily and deleted, plausible.io/data-policy).

While a day's key exists, an erasure finds the address's rows by computing their key
with it, whatever SECRET_KEYS is. Each replica caches only today's key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime

import asyncpg

from service.db.queries import queries
from service.settings import Settings
from service.web.clientinfo import canonical_ip

HOUR = 3600
DAY = 86400
q = queries("ratelimit")

Executor = asyncpg.Connection | asyncpg.Pool


def _day(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


class DayKeys:
    """Today's key, fetched (or created) once per replica and day."""

    def __init__(self) -> None:
        self._day: date | None = None
        self._key = b""

    async def today(self, con: Executor, now: float | None = None) -> bytes:
        day = _day(time.time() if now is None else now)
        if day != self._day:
            self._key = await key_of_day(con, day)
            self._day = day
        return self._key


async def key_of_day(con: Executor, day: date) -> bytes:
    """The key of `day`, made by the first replica that needs it."""
    for _ in range(3):
        # A replica that lost the race to create the key sees no row in the statement's
        # snapshot; the next statement sees the winner's.
        key = await q.key_of_day.fetchval(con, day=day, candidate=secrets.token_bytes(32))
        if key is not None:
            return bytes(key)
    raise RuntimeError("the rate-limit key of the day could not be read")


def _mac(key: bytes, scope: bytes, text: str) -> bytes:
    return hmac.new(key, scope + b"\0" + text.encode(), hashlib.sha256).digest()


def address_key(day_key: bytes, email: str) -> bytes:
    """The key of an address's rows; case-insensitive like the subscribers index."""
    return _mac(day_key, b"address", email.lower())


def ip_key(day_key: bytes, ip: str, scope: bytes = b"ip") -> bytes:
    """IPv6 clients are counted per /64: one host commonly holds the whole prefix."""
    address = canonical_ip(ip)
    if address is None:
        raise ValueError("not an IP address")
    if address.version == 4:
        text = str(address)
    else:
        text = str(ipaddress.ip_network(f"{address}/64", strict=False))
    return _mac(day_key, scope, text)


async def address_keys(con: Executor, email: str) -> list[bytes]:
    """Every key an address's rows can have now: one per day key still held."""
    return [address_key(bytes(row["key"]), email) for row in await q.day_keys.fetch(con)]


def _window(length: int, now: float) -> tuple[int, int]:
    """(start of the window holding `now`, seconds until it ends, at least 1)."""
    start = int(now) // length * length
    return start, max(1, start + length - int(now))


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int  # seconds; meaningful when not allowed


async def hit_ip(con: Executor, settings: Settings, day_key: bytes, ip: str) -> Verdict:
    """Counts one sign-up from this client IP in the current hour."""
    start, remaining = _window(HOUR, time.time())
    hits = await q.hit_window.fetchval(con, scope="ip", key=ip_key(day_key, ip), window_start=start)
    return Verdict(hits <= settings.rate_signup_per_ip_hour, remaining)


@dataclass(frozen=True)
class EmailClaim:
    """The arguments of a confirmation email's claim on its address's daily allowance:
    at most RATE_CONFIRM_PER_DAY per UTC day, none within RATE_CONFIRM_MIN_INTERVAL of
    the previous one (the sign-up statement takes it, see `sign_up` in signup.sql)."""

    key: bytes
    window_start: int
    per_day: int
    min_interval: float

    @classmethod
    def of(cls, settings: Settings, day_key: bytes, email: str) -> EmailClaim:
        start, _ = _window(DAY, time.time())
        return cls(
            address_key(day_key, email),
            start,
            settings.rate_confirm_per_day,
            settings.rate_confirm_min_interval,
        )


# -- failed admin sign-ins and bearer tokens ------------------------------------------
def _admin_window(settings: Settings) -> tuple[int, int]:
    return _window(int(settings.admin_auth_window), time.time())


async def admin_verdict(con: Executor, settings: Settings, day_key: bytes, ip: str) -> Verdict:
    """Whether this client may try an admin token now (its failures in the window are
    under ADMIN_AUTH_FAILURES); asked before the token is checked, so a right guess after
    the limit gets the same 429 as a wrong one."""
    start, remaining = _admin_window(settings)
    failures = await q.window_hits.fetchval(
        con, scope="admin", key=ip_key(day_key, ip, b"admin"), window_start=start
    )
    return Verdict((failures or 0) < settings.admin_auth_failures, remaining)


async def admin_failed(con: Executor, settings: Settings, day_key: bytes, ip: str) -> None:
    start, _ = _admin_window(settings)
    await q.hit_window.fetchval(
        con, scope="admin", key=ip_key(day_key, ip, b"admin"), window_start=start
    )


# -- campaign test sends --------------------------------------------------------------
async def hit_campaign_test(
    con: Executor, settings: Settings, day_key: bytes, operator: bytes, campaign_id: int
) -> Verdict:
    """Counts one test send of the campaign by this operator (the sha256 of their admin
    token) in the current hour: at most CAMPAIGN_TEST_PER_HOUR."""
    start, remaining = _window(HOUR, time.time())
    key = _mac(day_key, b"campaign_test", f"{operator.hex()}:{campaign_id}")
    hits = await q.hit_window.fetchval(con, scope="campaign_test", key=key, window_start=start)
    return Verdict(hits <= settings.campaign_test_per_hour, remaining)


async def purge_expired(con: Executor) -> int:
    """Deletes the keys of past days and every row made with them; returns the rows."""
    rows = await q.purge_expired.fetchval(con)
    return int(rows)
