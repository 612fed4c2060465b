"""The fresh link to a person's data: requested, mailed, opened once, then a session.

A campaign email's "Manage your subscription" link never expires and travels with every
forwarded copy, so it opens only what is harmless. Seeing or changing personal data needs
a fresh link, mailed to the address on file: a `manage_links` row, made when the email is
composed, named by an AES-SIV token that expires after MANAGE_LINK_MAX_AGE. Opening it is
one atomic UPDATE (`open_link`) that works once on any replica; it also stores the hash of
a random secret that only the page it answers holds (in its forms, never in a URL), which
lets that page act for MANAGE_LINK_MAX_AGE more. An erasure deletes the rows.

Requests for a link spend the address's daily email allowance, the one sign-up spends
(RATE_CONFIRM_PER_DAY, RATE_CONFIRM_MIN_INTERVAL), so nobody can flood an inbox with them.
An allowance of their own would double what a stranger can send to any address (the
/manage form takes any address), so a refused request is told when the next can go.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from email.message import EmailMessage
from typing import Any

import asyncpg
from starlette.requests import Request

from service import i18n
from service.db.queries import queries
from service.i18n import N_
from service.mail.messages import MailContext, build_message, recipient_header
from service.settings import Settings
from service.web import ratelimit, token_path

q = queries("manage")

LINK_SUBJECT = N_("Your link to see or change your data")


def verified(request: Request, method: str) -> Any:
    """What the path's token names, per `Tokens.<method>`, or None (logged by reason)."""
    return token_path.verified(request, getattr(request.app.state.tokens, method))


def session_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def claim(con: asyncpg.Connection, settings: Settings, day_key: bytes, email: str) -> bool:
    """One claim on the address's daily email allowance, the one sign-up's confirmation
    emails spend (`claim` in `sign_up`, signup.sql); False when it is spent."""
    claimed = ratelimit.EmailClaim.of(settings, day_key, email)
    hits = await q.claim_address.fetchval(
        con,
        claim_key=claimed.key,
        window_start=claimed.window_start,
        per_day=claimed.per_day,
        min_interval=claimed.min_interval,
    )
    return hits is not None


# What a request for a fresh link came to.
QUEUED = "queued"
ON_ITS_WAY = "on_its_way"  # one is queued already
HELD = "held"  # the address's allowance is spent for now
NO_SUBSCRIBER = "no_subscriber"


async def queue_link(
    con: asyncpg.Connection,
    settings: Settings,
    day_key: bytes,
    email: str,
    subscriber_id: int | None = None,
) -> str:
    """Queues the fresh-link email of the active subscriber with this id (or, without an
    id, this address) unless one is queued, when the address's allowance grants it; says
    which of QUEUED, ON_ITS_WAY, HELD, NO_SUBSCRIBER. Unknown addresses spend a claim too,
    so that both cases write the same rows but the job."""
    async with con.transaction():
        target = await q.link_target.fetchrow(
            con, id=subscriber_id, email=None if subscriber_id is not None else email
        )
        if target is not None and target["queued"]:
            return ON_ITS_WAY
        if not await claim(con, settings, day_key, email):
            return HELD
        if target is None:
            return NO_SUBSCRIBER
        await q.queue_link_email.fetchval(con, id=target["id"])
        return QUEUED


async def next_email_at(
    con: asyncpg.Connection, settings: Settings, day_key: bytes, email: str
) -> datetime | None:
    """When the address's allowance grants its next email, or None when it would now."""
    claimed = ratelimit.EmailClaim.of(settings, day_key, email)
    return await q.next_email_at.fetchval(
        con,
        claim_key=claimed.key,
        window_start=claimed.window_start,
        per_day=claimed.per_day,
        min_interval=claimed.min_interval,
    )


def mail(
    ctx: MailContext,
    to: str,
    name: str | None,
    subject: str,
    template: str,
    values: dict,
    lang: str | None = None,
) -> EmailMessage:
    """An email of the subscriber's page from `email/{template}.txt` and `.html`, in the
    subscriber's language (`subject` is the English msgid)."""
    lang = ctx.language(lang)
    values = {**values, "lang": lang}
    return build_message(
        ctx.settings,
        to=recipient_header(to, name),
        subject=i18n.gettext(lang, subject),
        text=ctx.templates.get_template(f"email/{template}.txt").render(values),
        html=ctx.templates.get_template(f"email/{template}.html").render(values),
        headers={"Content-Language": lang},
    )


async def compose_link(
    con: asyncpg.Connection, job: asyncpg.Record, ctx: MailContext
) -> EmailMessage | None:
    """The fresh link's email (the outbox composer of `manage_link` jobs): the link row
    is made now, so its lifetime starts when the email leaves."""
    row = await q.subscriber.fetchrow(con, id=job["subscriber_id"])
    if row is None or row["status"] != "active":
        return None
    max_age = ctx.settings.manage_link_max_age
    link_id = await q.issue_link.fetchval(con, subscriber_id=row["id"], max_age=max_age)
    values = {
        "name": row["name"],
        "link_url": f"{ctx.settings.public_base}/manage/link/"
        f"{ctx.tokens.manage_link(row['id'], link_id)}",
        "minutes": round(max_age / 60),
    }
    return mail(ctx, row["email"], row["name"], LINK_SUBJECT, "manage_link", values, row["lang"])


async def open_link(
    con: asyncpg.Connection,
    settings: Settings,
    subscriber_id: int,
    link_id: int,
    *,
    auto: bool,
) -> tuple[str, str | None]:
    """('opened', the page's secret), or (why not: 'used', 'expired', 'scanner_window',
    'gone'; None)."""
    secret = secrets.token_urlsafe(32)
    opened = await q.open_link.fetchval(
        con,
        link_id=link_id,
        subscriber_id=subscriber_id,
        session_hash=session_hash(secret),
        max_age=settings.manage_link_max_age,
        auto=auto,
        scanner_window=settings.scanner_window,
    )
    if opened is not None:
        return "opened", secret
    state = await q.link_state.fetchrow(
        con, link_id=link_id, subscriber_id=subscriber_id, scanner_window=settings.scanner_window
    )
    if state is None:
        return "gone", None
    if state["used"]:
        return "used", None
    if state["expired"]:
        return "expired", None
    return ("scanner_window" if auto and state["in_scanner_window"] else "expired"), None


async def session_subscriber(con: asyncpg.Connection | asyncpg.Pool, secret: str) -> int | None:
    """The subscriber whose page holds this secret, while its session lasts."""
    if not secret or len(secret) > 100:
        return None
    row = await q.session_subscriber.fetchrow(con, session_hash=session_hash(secret))
    return None if row is None else row["subscriber_id"]
