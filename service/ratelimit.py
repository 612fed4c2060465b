"""Abuse limits kept in PostgreSQL, so that they hold across every replica.

Rows are keyed by an HMAC of the address or client IP, never the value itself; the
HMAC key is derived from the first of `SECRET_KEYS` (rotating keys resets the
counters, which is harmless). Windows are fixed: a UTC day per address, an hour per
IP. Rows keyed by an address are deleted with the subscriber (erasure) and every row
is purged two days after its window started (`purge_expired`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass

import asyncpg

from service.clientinfo import canonical_ip
from service.queries import queries
from service.settings import Settings

HOUR = 3600
DAY = 86400
q = queries("ratelimit")


def _hmac_key(settings: Settings) -> bytes:
    return hashlib.sha256(b"newsletter.ratelimit\0" + settings.secret_keys[0].encode()).digest()


def address_key(settings: Settings, email: str) -> bytes:
    """The key of an address's rows; case-insensitive like the subscribers index."""
    return hmac.new(_hmac_key(settings), b"address\0" + email.lower().encode(), "sha256").digest()


def ip_key(settings: Settings, ip: str) -> bytes:
    """IPv6 clients are counted per /64: one host commonly holds the whole prefix."""
    address = canonical_ip(ip)
    if address is None:
        raise ValueError(f"not an IP address: {ip!r}")
    if address.version == 4:
        text = str(address)
    else:
        text = str(ipaddress.ip_network(f"{address}/64", strict=False))
    return hmac.new(_hmac_key(settings), b"ip\0" + text.encode(), "sha256").digest()


def _window(length: int, now: float) -> tuple[int, int]:
    """(start of the window holding `now`, seconds until it ends, at least 1)."""
    start = int(now) // length * length
    return start, max(1, start + length - int(now))


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int  # seconds; meaningful when not allowed


async def hit_ip(con: asyncpg.Connection | asyncpg.Pool, settings: Settings, ip: str) -> Verdict:
    """Counts one sign-up from this client IP in the current hour."""
    start, remaining = _window(HOUR, time.time())
    hits = await q.hit_window.fetchval(
        con, scope="ip", key=ip_key(settings, ip), window_start=start
    )
    return Verdict(hits <= settings.rate_signup_per_ip_hour, remaining)


async def claim_confirmation_email(con: asyncpg.Connection, settings: Settings, email: str) -> bool:
    """Takes one confirmation email from the address's allowance; False when spent.

    At most RATE_CONFIRM_PER_DAY per UTC day and none within RATE_CONFIRM_MIN_INTERVAL
    of the previous one. Call inside the sign-up transaction: the claim is undone with it.
    """
    start, _ = _window(DAY, time.time())
    claimed = await q.claim_email.fetchval(
        con,
        key=address_key(settings, email),
        window_start=start,
        per_day=settings.rate_confirm_per_day,
        min_interval=settings.rate_confirm_min_interval,
    )
    return claimed is not None


async def purge_expired(con: asyncpg.Connection | asyncpg.Pool) -> int:
    """Deletes rows whose window is long over; returns how many."""
    status = await q.purge_expired.execute(con)
    return int(status.split()[-1])
