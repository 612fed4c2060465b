"""`/confirm/{token}` (double opt-in) and `/cancel/{token}` ("this wasn't me").

One click for a person, none for a machine: mail scanners fetch every link, so GET
changes nothing; its page posts itself at once (`auto=1`, by a script allowed by a
per-response CSP nonce) and holds a button for when scripts are off. Scanners that
run scripts strike within seconds of delivery, so an automatic post inside
SCANNER_WINDOW after the email was handed to the relay changes nothing and answers the
page with the button instead; a person's click on the button always counts.
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit

import asyncpg
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from service import clientinfo, db, pages
from service.queries import queries
from service.settings import Settings
from service.tokens import InvalidToken

log = logging.getLogger("newsletter.confirm")
q = queries("signup")

TOKEN_MAX = 200
FORM_MAX_BYTES = 2048
RETRY_AFTER_UNAVAILABLE = db.RETRY_AFTER
DB_ERRORS = db.UNAVAILABLE  # any other database error is a bug: the app answers 500


def _verified(request: Request, verify: str) -> int | None:
    token = request.path_params["token"]
    if len(token) > TOKEN_MAX:
        return None
    try:
        return getattr(request.app.state.tokens, verify)(token)
    except InvalidToken as exc:
        log.info("bad token", extra={"reason": exc.reason, "route": request.url.path.split("/")[1]})
        return None


def _invalid(request: Request) -> Response:
    return pages.render(request, "confirm_invalid.html", status_code=400)


def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("confirmation database unavailable", extra={"error": exc.__class__.__name__})
    return pages.render(
        request,
        "unavailable.html",
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_UNAVAILABLE},
    )


def _confirm_page(request: Request, *, auto: bool) -> Response:
    """The page with the button; with `auto`, it also posts itself by script."""
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
    return pages.render(request, "confirm.html", csp=csp, auto=auto, nonce=nonce)


def _confirmed(request: Request, *, redirect: bool) -> Response:
    url = request.app.state.settings.confirmed_url
    if redirect and url:
        return RedirectResponse(url, status_code=303)
    return pages.render(request, "confirm_done.html")


async def confirm_get(request: Request) -> Response:
    """Shows the page; changes nothing (mail scanners prefetch this)."""
    subscriber_id = _verified(request, "verify_confirm")
    if subscriber_id is None:
        return _invalid(request)
    settings: Settings = request.app.state.settings
    try:
        row = await q.subscriber_state.fetchrow(
            request.app.state.pool,
            id=subscriber_id,
            max_age=settings.confirm_max_age,
            scanner_window=settings.scanner_window,
        )
    except DB_ERRORS as exc:
        return _unavailable(request, exc)
    if row is None or row["expired"]:
        return _invalid(request)
    if row["status"] == "active":
        return _confirmed(request, redirect=False)
    return _confirm_page(request, auto=True)


async def confirm_post(request: Request) -> Response:
    """Activates the pending sign-up and records how (`auto` script or `button`)."""
    form = await request.form(max_files=0, max_fields=5)
    auto = form.get("auto") == "1"
    subscriber_id = _verified(request, "verify_confirm")
    if subscriber_id is None:
        return _invalid(request)
    state = request.app.state
    settings: Settings = state.settings
    method = "auto" if auto else "button"
    try:
        async with state.pool.acquire() as con, con.transaction():
            outcome = await _activate(con, request, settings, subscriber_id, method)
    except DB_ERRORS as exc:
        return _unavailable(request, exc)
    if outcome == "invalid":
        return _invalid(request)
    if outcome == "scanner_window":
        state.metrics.confirmations.labels("auto_refused").inc()
        return _confirm_page(request, auto=False)
    if outcome == "activated":
        state.metrics.confirmations.labels(method).inc()
    return _confirmed(request, redirect=True)


async def _activate(
    con: asyncpg.Connection, request: Request, settings: Settings, subscriber_id: int, method: str
) -> str:
    """'activated', 'already' (idempotent), 'scanner_window' or 'invalid'."""
    row = await q.subscriber_state.fetchrow(
        con,
        id=subscriber_id,
        max_age=settings.confirm_max_age,
        scanner_window=settings.scanner_window,
    )
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
    await q.insert_consent_event.execute(
        con,
        subscriber_id=subscriber_id,
        kind="confirm",
        ip=clientinfo.reduce_ip(clientinfo.client_ip(request), settings.ip_mode),
        user_agent=clientinfo.user_agent(request),
        source=None,
        consent_text_version=settings.consent_text_version,
        method=method,
    )
    await q.count_confirmation.execute(con)
    return "activated"


async def cancel_get(request: Request) -> Response:
    """Shows the "this wasn't me" button; changes nothing."""
    subscriber_id = _verified(request, "verify_cancel")
    if subscriber_id is None:
        return _invalid(request)
    try:
        row = await q.subscriber_state.fetchrow(
            request.app.state.pool, id=subscriber_id, max_age=0.0, scanner_window=0.0
        )
    except DB_ERRORS as exc:
        return _unavailable(request, exc)
    status = None if row is None else row["status"]
    return pages.render(request, "cancel.html", status=status, done=False)


async def cancel_post(request: Request) -> Response:
    """Deletes a pending sign-up at once; an active subscriber is left alone."""
    await request.form(max_files=0, max_fields=5)
    subscriber_id = _verified(request, "verify_cancel")
    if subscriber_id is None:
        return _invalid(request)
    try:
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
    except DB_ERRORS as exc:
        return _unavailable(request, exc)
    if deleted:
        log.info("pending sign-up cancelled", extra={"subscriber_id": subscriber_id})
    status = "active" if row is not None and row["status"] == "active" else None
    return pages.render(request, "cancel.html", status=status, done=True)


def routes() -> list[Route]:
    return [
        Route("/confirm/{token}", confirm_get, methods=["GET"]),
        Route("/confirm/{token}", confirm_post, methods=["POST"], max_body_size=FORM_MAX_BYTES),
        Route("/cancel/{token}", cancel_get, methods=["GET"]),
        Route("/cancel/{token}", cancel_post, methods=["POST"], max_body_size=FORM_MAX_BYTES),
    ]
