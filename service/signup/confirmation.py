"""`/confirm/{token}` (double opt-in) and `/cancel/{token}` ("this wasn't me").

One click for a person, none for a machine: mail scanners fetch every link, so GET
changes nothing; its page posts itself at once (`auto=1`, by a script allowed by a
per-response CSP nonce) and holds a form with a button for when scripts are off.
Scanners that run scripts strike within seconds of delivery, so an automatic post
inside SCANNER_WINDOW after the email was handed to the relay changes nothing and
answers the page with the button instead; a person's click on the button always counts.

The choices of the sign-up form (the name, the wish to have opens measured) came from
whoever submitted it, who need not be the address's owner. So they are only proposals:
the page shows them in a form (`choices=1`) for the person to keep or change, and only
that form's button sets them. The automatic post confirms the subscription and grants
nothing; its answer shows the same form. Consent to tracking is recorded with its
evidence (time, IP per IP_MODE, user agent, consent text version) by the request that
grants it, and withdrawn the same way.

Confirmation emails get forwarded too, and their link keeps working. Once the
subscription is active, the link shows neither the name nor the choices: it says
"confirmed" and points to the subscriber's page, whose fresh emailed link is what shows
personal data. Only the answer of the request that confirmed carries the choices form,
with a secret in it (`session`, never in a URL: an HMAC of the subscriber and the moment
of confirmation under SECRET_KEYS) that lets the form act for MANAGE_LINK_MAX_AGE after
the confirmation, as the data page's secret does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from service.db.queries import queries
from service.events import queue as events
from service.privacy import erasure, evidence
from service.settings import Settings
from service.signup import fields
from service.topics import membership
from service.tracking import consent
from service.web import pages, token_path

log = logging.getLogger("newsletter.confirm")
q = queries("signup")

FORM_MAX_BYTES = 4096  # the name, the choices and up to SLUGS_MAX topic slugs
# A lost database (db.UNAVAILABLE) is answered by the app's one handler (app.py): 503,
# Retry-After, the "unavailable" page; any other database error is a bug and a 500.


def _verified(request: Request, verify: str) -> int | None:
    return token_path.verified(request, getattr(request.app.state.tokens, verify))


def _choices_secret(key: str, row: asyncpg.Record) -> str:
    """The choices form's secret: bound to this subscriber and this confirmation."""
    derived = hashlib.sha256(b"newsletter.confirm.choices\0" + key.encode()).digest()
    message = f"{row['id']}:{row['confirmed_at'].timestamp():.6f}".encode()
    return base64.urlsafe_b64encode(hmac.digest(derived, message, "sha256")).decode().rstrip("=")


def _may_choose(settings: Settings, row: asyncpg.Record, secret: object) -> bool:
    """Whether a post may set the choices of this subscriber: a pending one's link is
    the person's by the double opt-in; an active one's only with the secret of the
    answer that confirmed it, within MANAGE_LINK_MAX_AGE."""
    if row["status"] != "active":
        return True
    if not isinstance(secret, str) or not secret or row["confirmed_at"] is None:
        return False
    if row["confirmed_age"] > settings.manage_link_max_age:
        return False
    return any(
        hmac.compare_digest(_choices_secret(key, row), secret) for key in settings.secret_keys
    )


def _invalid(request: Request) -> Response:
    return pages.render(request, "confirm_invalid.html", status_code=400)


def _page_context(settings: Settings, row: asyncpg.Record | None) -> dict[str, object]:
    return {
        "tracking_mode": settings.tracking_mode,
        "ip_mode": settings.ip_mode,
        "name": row["name"] if row is not None else None,
        "tracking_requested": bool(row is not None and row["tracking_requested"]),
        "tracking_consent": bool(row is not None and row["tracking_consent"]),
        "topics": json.loads(row["topic_choices"]) if row is not None else [],
        "error": None,
        "saved": False,
    }


def _confirm_page(
    request: Request, row: asyncpg.Record, *, auto: bool, status_code: int = 200, **extra: object
) -> Response:
    """The page with the choices and the button; with `auto`, it also posts itself."""
    settings: Settings = request.app.state.settings
    csp = pages.CSP
    if settings.confirmed_url:
        # Browsers apply form-action to the redirect after the post, too.
        target = urlsplit(settings.confirmed_url)
        csp = csp.replace(
            "form-action 'self'", f"form-action 'self' {target.scheme}://{target.netloc}"
        )
    nonce = secrets.token_urlsafe(18) if auto else None
    if nonce:
        csp += f"; script-src 'nonce-{nonce}'"
    context = {**_page_context(settings, row), "lang": row["lang"], **extra}
    return pages.render(
        request,
        "confirm.html",
        status_code=status_code,
        csp=csp,
        auto=auto,
        nonce=nonce,
        **context,
    )


def _done_page(
    request: Request,
    row: asyncpg.Record,
    status_code: int = 200,
    *,
    choosing: bool = False,
    **extra: object,
) -> Response:
    """Confirmed, and a link to the subscriber's page; with `choosing` (the answer to the
    request that confirmed, or to its form) also the choices form and its secret. Without
    it, nothing personal: the link may be a forwarded email's."""
    settings: Settings = request.app.state.settings
    # The page speaks the subscriber's language, which tells nothing personal.
    context = {**_page_context(settings, row if choosing else None), "lang": row["lang"], **extra}
    session = _choices_secret(settings.secret_keys[0], row) if choosing else ""
    return pages.render(
        request,
        "confirm_done.html",
        status_code=status_code,
        manage_token=request.app.state.tokens.manage(row["id"]),
        session=session,
        **context,
    )


def _wish_waiting(settings: Settings, row: asyncpg.Record | None) -> bool:
    """A tracking wish from the sign-up that only the person can turn into consent."""
    return (
        settings.tracking_mode == "consent"
        and row is not None
        and row["tracking_requested"]
        and not row["tracking_consent"]
    )


async def _state(con: asyncpg.Connection | asyncpg.Pool, settings: Settings, sid: int):
    return await q.subscriber_state.fetchrow(
        con, id=sid, max_age=settings.confirm_max_age, scanner_window=settings.scanner_window
    )


async def confirm_get(request: Request) -> Response:
    """Shows the page; changes nothing (mail scanners prefetch this)."""
    subscriber_id = _verified(request, "verify_confirm")
    if subscriber_id is None:
        return _invalid(request)
    settings: Settings = request.app.state.settings
    row = await _state(request.app.state.pool, settings, subscriber_id)
    if row is None or row["expired"]:
        return _invalid(request)
    if row["status"] == "active":
        return _done_page(request, row)  # "confirmed", nothing personal
    return _confirm_page(request, row, auto=True)


@dataclass(frozen=True)
class Choices:
    """What the person chose on the page's form."""

    name: str | None
    tracking: bool
    topics: tuple[str, ...] = ()  # the ticked topics' slugs


def _choices(settings: Settings, form: Any) -> tuple[Choices | None, str | None]:
    """The form's choices (None for a post without them, e.g. the automatic one), or
    the name's error message."""
    if form.get("auto") == "1" or form.get("choices") != "1":
        return None, None
    name, error = fields.clean_name(form.get("name"))
    if error:
        return None, error
    tracking = settings.tracking_mode == "consent" and fields.truthy(form.get("tracking"))
    topics = tuple(t for t in form.getlist("topics") if isinstance(t, str))
    return Choices(name=name, tracking=tracking, topics=topics), None


async def confirm_post(request: Request) -> Response:
    """Activates the pending sign-up and records how (`auto` script or `button`); a post
    of the form also sets the person's choices (name, tracking consent)."""
    form = await request.form(max_files=0, max_fields=8 + membership.SLUGS_MAX)
    auto = form.get("auto") == "1"
    subscriber_id = _verified(request, "verify_confirm")
    if subscriber_id is None:
        return _invalid(request)
    state = request.app.state
    settings: Settings = state.settings
    method = "auto" if auto else "button"
    choices, error = _choices(settings, form)
    async with state.pool.acquire() as con:
        before = await _state(con, settings, subscriber_id)
        if before is None or before["expired"]:
            return _invalid(request)
        may_choose = _may_choose(settings, before, form.get("session"))
        if error and may_choose:
            if before["status"] == "active":
                return _done_page(request, before, 400, choosing=True, error=error)
            return _confirm_page(request, before, auto=False, status_code=400, error=error)
        if not may_choose:
            choices = None  # an active subscriber's link, maybe forwarded: no choices
        async with con.transaction():
            outcome = await _activate(con, request, settings, subscriber_id, method, choices)
            if choices is not None and outcome in ("activated", "already"):
                await _apply(con, request, settings, subscriber_id, choices)
            row = await _state(con, settings, subscriber_id)
    if outcome == "invalid":
        return _invalid(request)
    if outcome == "scanner_window":
        state.metrics.confirmations.labels("auto_refused").inc()
        return _confirm_page(request, row, auto=False)
    if outcome == "activated":
        state.metrics.confirmations.labels(method).inc()
    # The form again for whoever may choose: the request that confirmed, or its form.
    choosing = may_choose and (
        before["status"] == "active" or outcome == "activated" or choices is not None
    )
    if (
        choices is None
        and settings.confirmed_url
        and not (choosing and _wish_waiting(settings, row))
    ):
        return RedirectResponse(settings.confirmed_url, status_code=303)
    return _done_page(request, row, choosing=choosing, saved=choices is not None)


async def _activate(
    con: asyncpg.Connection,
    request: Request,
    settings: Settings,
    subscriber_id: int,
    method: str,
    choices: Choices | None = None,
) -> str:
    """'activated', 'already' (idempotent), 'scanner_window' or 'invalid'. Activating
    joins the topics the form's boxes tick, else those the sign-up asked for (each with
    its evidence and welcome email)."""
    row = await _state(con, settings, subscriber_id)
    if row is None or row["expired"]:
        return "invalid"
    if row["status"] == "active":
        return "already"
    if method == "auto" and row["in_scanner_window"]:
        return "scanner_window"
    if await q.activate.fetchval(con, id=subscriber_id, max_age=settings.confirm_max_age) is None:
        # A concurrent post won the race (or the sign-up expired this very moment).
        again = await q.subscriber_state.fetchrow(
            con, id=subscriber_id, max_age=settings.confirm_max_age, scanner_window=0.0
        )
        return "already" if again is not None and again["status"] == "active" else "invalid"
    await events.confirmed(con, subscriber_id)  # what follows folds into it
    # The confirmation's evidence carries no source (the method says how it came).
    who = evidence.Evidence.of(request, settings, None)
    await evidence.record(con, subscriber_id, evidence.CONFIRM, who, method)
    if choices is not None:
        topic_ids = await membership.known(con, choices.topics)
    elif row["topics_requested"] is not None:
        topic_ids = list(row["topics_requested"])
    else:  # a sign-up from before topics, or an import: the default topics
        topic_ids = await membership.resolve(con, ())
    await membership.join(con, subscriber_id, topic_ids, who)
    await q.count_confirmation.execute(con)
    return "activated"


async def _apply(
    con: asyncpg.Connection,
    request: Request,
    settings: Settings,
    subscriber_id: int,
    choices: Choices,
) -> None:
    """Sets the name and grants or withdraws tracking consent, each with evidence."""
    row = await q.lock_choices.fetchrow(con, id=subscriber_id)
    if row is None:
        return
    await q.set_choices.execute(con, id=subscriber_id, name=choices.name)
    await events.updated(con, subscriber_id)
    topic_ids = await membership.known(con, choices.topics)
    who = evidence.Evidence.of(request, settings, "confirmation")
    await membership.set_topics(con, subscriber_id, topic_ids, who)
    if settings.tracking_mode != "consent" or choices.tracking == row["tracking_consent"]:
        return
    who = evidence.Evidence.of(request, settings, "confirmation")
    if choices.tracking:
        await consent.grant(con, subscriber_id, who)
    else:
        await consent.withdraw(
            con,
            subscriber_id,
            ip=who.ip,
            user_agent=who.user_agent,
            consent_text_version=who.consent_text_version,
            source="confirmation",
        )


async def cancel_get(request: Request) -> Response:
    """Shows the "this wasn't me" button; changes nothing."""
    subscriber_id = _verified(request, "verify_cancel")
    if subscriber_id is None:
        return _invalid(request)
    row = await q.subscriber_state.fetchrow(
        request.app.state.pool, id=subscriber_id, max_age=0.0, scanner_window=0.0
    )
    status = None if row is None else row["status"]
    lang = None if row is None else row["lang"]
    return pages.render(request, "cancel.html", status=status, done=False, lang=lang)


async def cancel_post(request: Request) -> Response:
    """Deletes a pending sign-up at once; an active subscriber is left alone unless the
    form asks to unsubscribe (`action=unsubscribe`, the button the page shows once the
    sign-up was confirmed): the link reached this inbox, so it may end the subscription
    as the footer's link may, while a "remove sign-up" sent after a confirmation does not."""
    form = await request.form(max_files=0, max_fields=5)
    subscriber_id = _verified(request, "verify_cancel")
    if subscriber_id is None:
        return _invalid(request)
    if form.get("action") == "unsubscribe":
        if await erasure.erase(
            request.app.state.pool, subscriber_id=subscriber_id, cause="unsubscribe"
        ):
            request.app.state.metrics.unsubscribes.labels("cancel").inc()
            log.info("unsubscribed", extra={"kind": "cancel"})
        return pages.render(request, "unsubscribed.html", left=[], staying=[])
    async with request.app.state.pool.acquire() as con, con.transaction():
        await q.delete_pending_jobs.execute(con, id=subscriber_id)
        deleted = await q.delete_pending.fetchval(con, id=subscriber_id)
        row = (
            None
            if deleted
            else await q.subscriber_state.fetchrow(
                con, id=subscriber_id, max_age=0.0, scanner_window=0.0
            )
        )
    if deleted:
        log.info("pending sign-up cancelled", extra={"subscriber_id": subscriber_id})
    status = "active" if row is not None and row["status"] == "active" else None
    lang = None if row is None else row["lang"]
    return pages.render(request, "cancel.html", status=status, done=True, lang=lang)


def routes() -> list[Route]:
    return [
        Route("/confirm/{token}", confirm_get, methods=["GET"]),
        Route("/confirm/{token}", confirm_post, methods=["POST"], max_body_size=FORM_MAX_BYTES),
        Route("/cancel/{token}", cancel_get, methods=["GET"]),
        Route("/cancel/{token}", cancel_post, methods=["POST"], max_body_size=FORM_MAX_BYTES),
    ]
