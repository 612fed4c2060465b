"""`POST /subscribe`: a double opt-in sign-up from a site's form or script.

The answer never tells whether the address was new, pending or already subscribed:
those three get byte-identical responses, and a filled honeypot gets the same answer
with nothing stored. The pending row, its consent evidence and the confirmation email
job are written in one transaction (the outbox worker sends the email).
"""

from __future__ import annotations

import asyncio
import json
import logging
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from email_validator import EmailNotValidError, validate_email
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from service import clientinfo, db, pages, ratelimit
from service.queries import queries
from service.settings import Settings

log = logging.getLogger("newsletter.signup")
q = queries("signup")

NAME_MAX = 100
SOURCE_MAX = 200
EMAIL_MAX = 320
RETRY_AFTER_UNAVAILABLE = db.RETRY_AFTER
DB_ERRORS = db.UNAVAILABLE  # any other database error is a bug: the app answers 500
_TRUE = frozenset({"1", "on", "true", "yes"})


class BadBody(Exception):
    """The body could not be read as the content type it claims."""


@dataclass(frozen=True)
class Signup:
    email: str
    name: str | None
    tracking: bool
    source: str | None


@dataclass(frozen=True)
class Evidence:
    ip: str | None
    user_agent: str | None
    source: str | None
    consent_text_version: str


# -- reading and validating --------------------------------------------------------
def _content_kind(request: Request) -> str | None:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        return "json"
    if media in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return "form"
    return None


async def _fields(request: Request, kind: str) -> dict[str, Any]:
    if kind == "json":
        body = await request.body()  # the route's max_body_size answers 413 past the limit
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadBody("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadBody("the body must be a JSON object")
        return data
    form = await request.form(max_files=0, max_fields=20)
    return dict(form.items())


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


def _printable(text: str, limit: int) -> str:
    return "".join(c for c in text if not _has_control(c))[:limit]


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() in _TRUE


def _referer_source(request: Request) -> str | None:
    """The page the form was on, without its query (which may hold personal data)."""
    referer = request.headers.get("referer")
    if not referer:
        return None
    parts = urlsplit(referer)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return _printable(f"{parts.scheme}://{parts.netloc}{parts.path}", SOURCE_MAX)


async def validate(
    fields: dict[str, Any], settings: Settings, request: Request
) -> tuple[Signup | None, dict[str, str]]:
    """The clean sign-up, or field-level error messages."""
    errors: dict[str, str] = {}
    raw_email = fields.get("email")
    email = ""
    if not isinstance(raw_email, str) or not raw_email.strip():
        errors["email"] = "Please enter your email address."
    elif len(raw_email) > EMAIL_MAX:
        errors["email"] = "This email address is too long."
    else:
        check = settings.email_check_deliverability
        try:
            # The deliverability check asks DNS, synchronously: keep it off the loop.
            valid = (
                await asyncio.to_thread(
                    validate_email, raw_email.strip(), check_deliverability=check
                )
                if check
                else validate_email(raw_email.strip(), check_deliverability=False)
            )
            email = valid.normalized
        except EmailNotValidError as exc:
            errors["email"] = str(exc)

    name = fields.get("name")
    if name is not None and not isinstance(name, str):
        errors["name"] = "The name must be text."
    elif isinstance(name, str):
        name = name.strip() or None
        if name and len(name) > NAME_MAX:
            errors["name"] = f"The name may have at most {NAME_MAX} characters."
        elif name and _has_control(name):
            errors["name"] = "The name must not contain line breaks or control characters."

    raw_source = fields.get("source")
    source = (
        _printable(raw_source.strip(), SOURCE_MAX) or None
        if isinstance(raw_source, str)
        else _referer_source(request)
    )
    tracking = settings.tracking_mode == "consent" and _truthy(fields.get("tracking"))
    if errors:
        return None, errors
    return Signup(email=email, name=name, tracking=tracking, source=source), {}


# -- storing -------------------------------------------------------------------------
async def register(
    con: asyncpg.Connection, settings: Settings, signup: Signup, evidence: Evidence
) -> str:
    """Writes the pending sign-up, its evidence and the email job in one transaction.

    Returns the outcome for the metric: 'new', 'pending', 'active' (left alone), with
    '_limited' when the address's email allowance was spent.
    """
    async with con.transaction():
        row = await q.upsert_pending.fetchrow(
            con, email=signup.email, name=signup.name, tracking=signup.tracking
        )
        if row is None:
            return "active"
        subscriber_id = row["id"]
        await q.insert_signup_evidence.execute(
            con,
            subscriber_id=subscriber_id,
            kinds=["signup", "tracking_granted"] if signup.tracking else ["signup"],
            ip=evidence.ip,
            user_agent=evidence.user_agent,
            source=evidence.source,
            consent_text_version=evidence.consent_text_version,
            created=row["created"],
        )
        outcome = "new" if row["created"] else "pending"
        if await q.confirm_job_queued.fetchval(con, subscriber_id=subscriber_id):
            return outcome
        if not await ratelimit.claim_confirmation_email(con, settings, signup.email):
            return outcome + "_limited"
        await q.queue_confirmation.fetchval(con, subscriber_id=subscriber_id)
        return outcome


# -- answers -------------------------------------------------------------------------
def _accepted(request: Request, kind: str) -> Response:
    """The one answer for new, pending, subscribed and honeypot sign-ups."""
    if kind == "json":
        return JSONResponse({"status": "pending"}, status_code=202)
    thank_you = request.app.state.settings.thank_you_url
    if thank_you:
        return RedirectResponse(thank_you, status_code=303)
    return pages.render(request, "signup_thanks.html")


def _problem(
    request: Request,
    kind: str | None,
    status: int,
    errors: dict[str, str],
    headers: dict[str, str] | None = None,
) -> Response:
    if kind == "form":
        return pages.render(
            request, "signup_error.html", status_code=status, headers=headers, errors=errors
        )
    return JSONResponse({"errors": errors}, status_code=status, headers=headers)


async def subscribe(request: Request) -> Response:
    state = request.app.state
    settings: Settings = state.settings
    metrics = state.metrics
    kind = _content_kind(request)
    if kind is None:
        metrics.signups.labels("invalid").inc()
        return _problem(
            request,
            None,
            415,
            {"body": "Send application/json or a form (application/x-www-form-urlencoded)."},
        )
    try:
        fields = await _fields(request, kind)
    except BadBody as exc:
        metrics.signups.labels("invalid").inc()
        return _problem(request, kind, 400, {"body": str(exc)})

    honeypot = fields.get(settings.honeypot_field)
    if honeypot not in (None, "", False):
        metrics.signups.labels("honeypot").inc()
        return _accepted(request, kind)

    signup, errors = await validate(fields, settings, request)
    if signup is None:
        metrics.signups.labels("invalid").inc()
        return _problem(request, kind, 422 if kind == "json" else 400, errors)

    ip = clientinfo.client_ip(request)
    evidence = Evidence(
        ip=clientinfo.reduce_ip(ip, settings.ip_mode),
        user_agent=clientinfo.user_agent(request),
        source=signup.source,
        consent_text_version=settings.consent_text_version,
    )
    try:
        async with state.pool.acquire() as con:
            if ip is not None:
                verdict = await ratelimit.hit_ip(con, settings, ip)
                if not verdict.allowed:
                    metrics.signups.labels("rate_limited").inc()
                    return _problem(
                        request,
                        kind,
                        429,
                        {"email": "Too many sign-ups from your network. Please try again later."},
                        headers={"Retry-After": str(verdict.retry_after)},
                    )
            outcome = await register(con, settings, signup, evidence)
    except DB_ERRORS as exc:
        log.warning("signup database unavailable", extra={"error": exc.__class__.__name__})
        metrics.signups.labels("unavailable").inc()
        return _problem(
            request,
            kind,
            503,
            {"service": "Sign-up is briefly unavailable. Please try again in a minute."},
            headers={"Retry-After": RETRY_AFTER_UNAVAILABLE},
        )
    metrics.signups.labels(outcome).inc()
    return _accepted(request, kind)


def routes(settings: Settings) -> list[Route]:
    """The sign-up route, with CORS for the configured origins only (JSON posts need it;
    plain form posts never do)."""
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["POST"],
                allow_headers=["Content-Type"],
                max_age=3600,
            )
        )
    return [
        Route(
            "/subscribe",
            _only_post(subscribe),
            methods=["POST", "OPTIONS"],
            middleware=middleware,
            max_body_size=settings.max_body_bytes,
        )
    ]


def _only_post(endpoint: Any) -> Any:
    """OPTIONS is routed for CORS preflights; any other OPTIONS gets 405."""

    async def handler(request: Request) -> Response:
        if request.method != "POST":
            return Response(status_code=405, headers={"Allow": "POST"})
        return await endpoint(request)

    handler.__name__ = endpoint.__name__
    return handler
