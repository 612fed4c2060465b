"""Changing one's address: the double opt-in again, for the new address.

A request (from the person's page, or `PATCH /admin/api/subscribers/{email}`) stores
the new address in `address_changes` and queues a confirmation email to it; the old
address stays the active one. The new address's link (`/manage/address/{token}`, valid
CONFIRM_MAX_AGE, naming the request's row) shows a button; its POST, in one transaction,
puts the new address on the subscriber row, deletes the request row and the old
address's rate-limit rows (nothing else holds an address), and records an
`address_changed` consent event. So after it no table holds the old address.

An address that is anyone's already gets no email, and the person's page answers and
shows exactly what a usable address gets, "waiting for confirmation" included: a sign-up
tells nobody whether an address is subscribed, neither does this. So does an address
whose daily email allowance is spent. Such a request is stored `unmailed` (sql/137): it
replaces the previous one and is shown and exported like it, its outbox job is queued
like any (the composer finds nothing to mail), and its link, never sent, cannot exist.
Every request spends the new address's allowance (as a sign-up does), the taken ones
too, so all three write the same rows. The owner of a taken address gets nothing: a
notice would let anyone with a subscription mail any subscriber; their address's
allowance (RATE_CONFIRM_PER_DAY) is spent, as by a sign-up of it. The operator's
correction (`PATCH /admin/api/subscribers/{email}`) is told the outcome instead and
stores nothing for a refused address.

Races: the confirmation locks the subscriber row first, as an erasure's delete does. An
unsubscribe that commits first leaves nothing to change (the request row went with the
subscriber); one that comes second waits, then erases the row with its new address.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage

import asyncpg
from email_validator import EmailNotValidError, validate_email
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.db.queries import queries
from service.events import queue as events
from service.i18n import N_
from service.mail.messages import MailContext
from service.manage import links
from service.privacy import erasure, evidence
from service.settings import Settings
from service.web import pages, ratelimit

log = logging.getLogger("newsletter.manage")
q = queries("manage")

ADDRESS_SUBJECT = N_("Please confirm your new address")
FORM_MAX_BYTES = 2048
EMAIL_MAX = 320


def clean_address(raw: object, missing: str) -> tuple[str | None, str | None]:
    """(the address as sign-up stores it, None) or (None, what is wrong with it); checked
    as strictly as a sign-up's (no DNS: the confirmation email is the real check)."""
    if not isinstance(raw, str) or not raw.strip():
        return None, missing
    if len(raw.strip()) > EMAIL_MAX:
        return None, "This email address is too long."
    try:
        return validate_email(raw.strip(), check_deliverability=False, strict=True).normalized, None
    except EmailNotValidError as exc:
        return None, str(exc)


async def request_change(
    con: asyncpg.Connection,
    settings: Settings,
    day_key: bytes,
    subscriber_id: int,
    new_email: str,
    *,
    masked: bool = True,
) -> str:
    """'queued', 'same' (the address is theirs already), 'taken', 'limited' (allowance
    spent) or 'gone'. `masked` (the person's page): a taken or limited address is stored
    and queued as a queued one is, unmailed, so that the page cannot tell them apart;
    without it (the operator) nothing is stored for them."""
    async with con.transaction():
        row = await q.lock_subscriber.fetchrow(con, id=subscriber_id)
        if row is None:
            return "gone"
        if row["email"].lower() == new_email.lower():
            return "same"
        # Both questions asked every time: the three outcomes take the same statements.
        allowed = await links.claim(con, settings, day_key, new_email)
        taken = await q.address_taken.fetchval(con, email=new_email)
        outcome = "limited" if not allowed else "taken" if taken else "queued"
        if outcome != "queued" and not masked:
            return outcome
        current = await q.current_change.fetchval(
            con, id=subscriber_id, max_age=settings.confirm_max_age
        )
        # Asked again too soon: the request whose email went out stays, its link works.
        if not (outcome == "limited" and (current or "").lower() == new_email.lower()):
            await q.drop_address_change.execute(con, id=subscriber_id)
            await q.request_address_change.fetchval(
                con, id=subscriber_id, new_email=new_email, unmailed=outcome != "queued"
            )
        await q.queue_address_email.fetchval(con, id=subscriber_id)
        return outcome


async def compose(
    con: asyncpg.Connection, job: asyncpg.Record, ctx: MailContext
) -> EmailMessage | None:
    """The new address's confirmation email (the outbox composer of `address_confirm`
    jobs), for the subscriber's current request; None when there is none any more, or
    another job mails it (sql/132)."""
    max_age = ctx.settings.confirm_max_age
    row = await q.pending_change.fetchrow(
        con, subscriber_id=job["subscriber_id"], max_age=max_age, job_id=job["id"]
    )
    if row is None:
        return None
    values = {
        "name": row["name"],
        "confirm_url": f"{ctx.settings.public_base}/manage/address/"
        f"{ctx.tokens.address_confirm(job['subscriber_id'], row['id'])}",
        "hours": round(max_age / 3600),
    }
    return links.mail(
        ctx, row["new_email"], row["name"], ADDRESS_SUBJECT, "address_confirm", values, row["lang"]
    )


async def apply_change(
    con: asyncpg.Connection, request: Request, subscriber_id: int, change_id: int
) -> tuple[str, str | None]:
    """('changed', the new address), ('taken', it) or ('invalid', None)."""
    settings: Settings = request.app.state.settings
    try:
        async with con.transaction():
            row = await q.lock_change.fetchrow(
                con, id=subscriber_id, change_id=change_id, max_age=settings.confirm_max_age
            )
            if row is None:
                return "invalid", None
            new_email = row["new_email"]
            if await q.address_taken.fetchval(con, email=new_email):
                await q.drop_address_change.execute(con, id=subscriber_id)
                return "taken", new_email
            await q.apply_address_change.execute(con, id=subscriber_id, new_email=new_email)
            await events.updated(con, subscriber_id)
            await erasure.q.delete_address_rate_limits.execute(
                con, keys=await ratelimit.address_keys(con, row["old_email"])
            )
            await record_event(con, request, subscriber_id, "address_changed")
    except asyncpg.UniqueViolationError:  # a sign-up of the new address won the race
        return "taken", new_email
    return "changed", new_email


async def record_event(
    con: asyncpg.Connection, request: Request, subscriber_id: int, kind: str
) -> None:
    """Evidence of what the person did on their page: time, IP per IP_MODE, user agent,
    consent text version (GDPR Art. 7(1))."""
    who = evidence.Evidence.of(request, request.app.state.settings, "manage")
    await evidence.record(con, subscriber_id, kind, who, "button")


def _page(request: Request, state: str, status_code: int = 200, **extra: object) -> Response:
    return pages.render(
        request, "manage_address.html", status_code=status_code, state=state, **extra
    )


async def confirm_get(request: Request) -> Response:
    """Shows the new address and a button; changes nothing (mail scanners fetch links)."""
    claim = links.verified(request, "verify_address_confirm")
    if claim is None:
        return _page(request, "invalid", 400)
    subscriber_id, change_id = claim
    new_email = await q.change_state.fetchval(
        request.app.state.pool,
        id=subscriber_id,
        change_id=change_id,
        max_age=request.app.state.settings.confirm_max_age,
    )
    if new_email is None:
        return _page(request, "invalid", 400)
    lang = await q.subscriber_lang.fetchval(request.app.state.pool, id=subscriber_id)
    return _page(request, "ask", new_email=new_email, lang=lang)


async def confirm_post(request: Request) -> Response:
    await request.form(max_files=0, max_fields=5)
    claim = links.verified(request, "verify_address_confirm")
    if claim is None:
        return _page(request, "invalid", 400)
    async with request.app.state.pool.acquire() as con:
        outcome, new_email = await apply_change(con, request, *claim)
        lang = await q.subscriber_lang.fetchval(con, id=claim[0])
    if outcome == "invalid":
        return _page(request, "invalid", 400)
    if outcome == "changed":
        log.info("address changed")
    return _page(
        request, outcome, 409 if outcome == "taken" else 200, new_email=new_email, lang=lang
    )


def routes() -> list[Route]:
    return [
        Route("/manage/address/{token}", confirm_get, methods=["GET"]),
        Route(
            "/manage/address/{token}",
            confirm_post,
            methods=["POST"],
            max_body_size=FORM_MAX_BYTES,
        ),
    ]
