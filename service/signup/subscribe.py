"""`POST /subscribe`: a double opt-in sign-up from a site's form or script.

The answer never tells whether the address was new, pending or already subscribed:
those three get byte-identical responses after the same database work (one statement,
`sign_up`, that writes in every case), no sooner than SIGNUP_MIN_DURATION after the
request came in, and a filled honeypot gets the same answer, as late, with nothing
stored. The pending row, its evidence and the confirmation email job are written in
that one statement (the outbox worker sends the email).

Whoever submits a form can type anyone's address, so a sign-up grants nothing: the name
and the wish to have opens measured are proposals that the confirmation page shows to
the person, and only the person's confirming request sets them (service/signup/confirmation.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
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

from service import i18n
from service.db import connections
from service.db.queries import queries
from service.i18n import N_
from service.privacy.evidence import Evidence
from service.settings import Settings
from service.signup import botcheck
from service.signup.fields import EMAIL_MAX, SOURCE_MAX, clean_name, printable, truthy
from service.topics import membership
from service.web import clientinfo, pages, ratelimit
from service.web.body_limit import BodyLimit

log = logging.getLogger("newsletter.signup")
q = queries("signup")

FORM_FIELDS = ("email", "name")


class BadBody(Exception):
    """The body could not be read as the content type it claims."""


@dataclass(frozen=True)
class Signup:
    email: str
    name: str | None
    tracking: bool
    source: str | None
    topics: tuple[str, ...] = ()  # slugs; none: the default topics
    lang: str = i18n.SOURCE  # one of LANGUAGES: the pending sign-up's pages and emails


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
    form = await request.form(max_files=0, max_fields=20 + membership.SLUGS_MAX)
    data: dict[str, Any] = dict(form.items())
    data["topics"] = form.getlist("topics")  # checkboxes: the field repeated
    return data


def _topics(raw: Any) -> tuple[tuple[str, ...], str | None]:
    """The slugs asked for (a JSON list, or the form's repeated field), or the error."""
    if raw is None:
        return (), None
    if isinstance(raw, str):
        raw = [raw]
    if (
        not isinstance(raw, list)
        or len(raw) > membership.SLUGS_MAX
        or not all(isinstance(slug, str) and 0 < len(slug) <= 63 for slug in raw)
    ):
        return (), f"Choose at most {membership.SLUGS_MAX} topics from the list."
    return tuple(sorted(set(raw))), None


def language(request: Request, fields: dict[str, Any]) -> str:
    """The sign-up's language among LANGUAGES: the `lang` field, else Accept-Language,
    else the first offered (a malformed `lang` is a field error, found by `validate`)."""
    offered = request.app.state.settings.languages
    return i18n.choose(fields.get("lang"), request.headers.get("accept-language"), offered)


def _lang_error(raw: Any) -> str | None:
    """A `lang` field that is there but is no BCP 47 tag (`de`, `de-AT`, `pt-BR`)."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or i18n.primary(raw) is None:
        return N_("The language must be a BCP 47 tag such as de or pt-BR.")
    return None


def _referer_source(request: Request) -> str | None:
    """The page the form was on, without its query (which may hold personal data)."""
    referer = request.headers.get("referer")
    if not referer:
        return None
    parts = urlsplit(referer)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return printable(f"{parts.scheme}://{parts.netloc}{parts.path}", SOURCE_MAX)


async def validate(
    fields: dict[str, Any], settings: Settings, request: Request
) -> tuple[Signup | None, dict[str, str]]:
    """The clean sign-up, or field-level error messages."""
    errors: dict[str, str] = {}
    raw_email = fields.get("email")
    email = ""
    if not isinstance(raw_email, str) or not raw_email.strip():
        errors["email"] = N_("Please enter your email address.")
    elif len(raw_email) > EMAIL_MAX:
        errors["email"] = N_("This email address is too long.")
    else:
        check = settings.email_check_deliverability
        # strict: a local part of at most 64 characters (RFC 5321 section 4.5.3.1.1).
        try:
            # The deliverability check asks DNS, synchronously: keep it off the loop.
            valid = (
                await asyncio.to_thread(
                    validate_email, raw_email.strip(), check_deliverability=check, strict=True
                )
                if check
                else validate_email(raw_email.strip(), check_deliverability=False, strict=True)
            )
            email = valid.normalized
        except EmailNotValidError as exc:
            errors["email"] = str(exc)

    name, name_error = clean_name(fields.get("name"))
    if name_error:
        errors["name"] = name_error

    raw_source = fields.get("source")
    source = (
        printable(raw_source.strip(), SOURCE_MAX) or None
        if isinstance(raw_source, str)
        else _referer_source(request)
    )
    topics, topics_error = _topics(fields.get("topics"))
    if topics_error:
        errors["topics"] = topics_error
    lang_error = _lang_error(fields.get("lang"))
    if lang_error:
        errors["lang"] = lang_error
    # Only a wish: the person grants or refuses it on the confirmation page.
    tracking = settings.tracking_mode == "consent" and truthy(fields.get("tracking"))
    if errors:
        return None, errors
    signup = Signup(email=email, name=name, tracking=tracking, source=source, topics=topics)
    return dataclasses.replace(signup, lang=language(request, fields)), {}


# -- storing -------------------------------------------------------------------------
async def register(
    con: asyncpg.Connection,
    settings: Settings,
    day_key: bytes,
    signup: Signup,
    evidence: Evidence,
    topic_ids: list[int] | None = None,
) -> str:
    """Writes the sign-up (see `sign_up` in sql/queries/signup.sql) in one statement;
    `topic_ids` are the topics asked for (a proposal the confirmation turns into
    memberships).

    Returns the outcome for the metric: 'new', 'pending', 'active' (left alone), with
    '_limited' when the address's email allowance was spent.
    """
    claim = ratelimit.EmailClaim.of(settings, day_key, signup.email)
    row = await q.sign_up.fetchrow(
        con,
        email=signup.email,
        name=signup.name,
        tracking=signup.tracking,
        topics=topic_ids,
        lang=signup.lang,
        ip=evidence.ip,
        user_agent=evidence.user_agent,
        source=evidence.source,
        consent_text_version=evidence.consent_text_version,
        claim_key=claim.key,
        window_start=claim.window_start,
        per_day=claim.per_day,
        min_interval=claim.min_interval,
    )
    if row["created"] is None:
        return "active"
    outcome = "new" if row["created"] else "pending"
    if not row["already_queued"] and not row["claimed"]:
        return outcome + "_limited"
    return outcome


async def answer_no_sooner(started: float, settings: Settings) -> None:
    """Pads an accepted sign-up to SIGNUP_MIN_DURATION after `started`, so the time of
    the answer does not depend on what the address's state made the database do."""
    remaining = settings.signup_min_duration - (time.monotonic() - started)
    if remaining > 0:
        await asyncio.sleep(remaining)


# -- answers -------------------------------------------------------------------------
def _accepted(request: Request, kind: str, fields: dict[str, Any] | None = None) -> Response:
    """The one answer for new, pending, subscribed and honeypot sign-ups (a form's page in
    the sign-up's language)."""
    if kind == "json":
        return JSONResponse({"status": "pending"}, status_code=202)
    thank_you = request.app.state.settings.thank_you_url
    if thank_you:
        return RedirectResponse(thank_you, status_code=303)
    # In dev the email goes to the mail catcher: the page says where to read it.
    return pages.render(
        request,
        "signup_thanks.html",
        dev=request.app.state.settings.dev,
        lang=language(request, fields or {}),
    )


def _problem(
    request: Request,
    kind: str | None,
    status: int,
    errors: dict[str, str],
    headers: dict[str, str] | None = None,
    fields: dict[str, Any] | None = None,
    topic_choices: list[Any] | None = None,
) -> Response:
    """JSON errors, or for a form the form again: each message beside its field, with
    what was typed (never the honeypot) and, when given, the topics to choose from."""
    if kind == "form":
        fields = fields or {}
        values = {
            k: printable(v, EMAIL_MAX) for k in FORM_FIELDS if isinstance(v := fields.get(k), str)
        }
        ticked = fields.get("tracking")
        values["tracking"] = truthy(ticked)
        topics = fields.get("topics")
        values["topics"] = (
            [printable(t, 63) for t in topics if isinstance(t, str)][: membership.SLUGS_MAX]
            if isinstance(topics, list)
            else []
        )
        source = fields.get("source")
        values["source"] = (
            printable(source, SOURCE_MAX) if isinstance(source, str) else _referer_source(request)
        )
        raw_lang = fields.get("lang")
        if isinstance(raw_lang, str) and i18n.primary(raw_lang):
            values["lang"] = raw_lang.strip()
        settings = request.app.state.settings
        lang = language(request, {"lang": values.get("lang")})
        errors = {k: readable(lang, k, m) for k, m in errors.items()}
        return pages.render(
            request,
            "signup_error.html",
            status_code=status,
            headers=headers,
            csp=pages.CSP_WITH_ALTCHA if settings.altcha_hmac_key else pages.CSP,
            errors={k: m for k, m in errors.items() if k in FORM_FIELDS},
            general=[m for k, m in errors.items() if k not in FORM_FIELDS],
            values=values,
            honeypot=settings.honeypot_field,
            tracking_mode=settings.tracking_mode,
            topic_choices=topic_choices or [],
            lang=lang,
        )
    return JSONResponse({"errors": errors}, status_code=status, headers=headers)


def readable(lang: str, field: str, message: str) -> str:
    """A field's message in the page's language: ours from the catalog; email-validator's
    own (English only) replaced by a translated one where the page is not English."""
    translated = i18n.gettext(lang, message)
    if field == "email" and translated == message and lang != i18n.SOURCE:
        return i18n.gettext(lang, INVALID_EMAIL)
    return translated


INVALID_EMAIL = N_("This email address is not valid. Please check it for typing errors.")


async def subscribe(request: Request) -> Response:
    started = time.monotonic()
    state = request.app.state
    settings: Settings = state.settings
    count = state.metrics.signups.labels
    kind = _content_kind(request)
    if kind is None:
        count("invalid").inc()
        return _problem(request, None, 415, {"body": UNSUPPORTED})
    try:
        fields = await _fields(request, kind)
    except BadBody as exc:
        count("invalid").inc()
        return _problem(request, kind, 400, {"body": str(exc)})

    if fields.get(settings.honeypot_field) not in (None, "", False):
        count("honeypot").inc()
        await answer_no_sooner(started, settings)
        return _accepted(request, kind, fields)

    signup, errors = await validate(fields, settings, request)
    # The bot check (off unless ALTCHA_HMAC_KEY is set): a field error like any other.
    proof, altcha_error = botcheck.verify(settings, fields.get(botcheck.FIELD))
    if altcha_error:
        signup, errors = None, {**errors, botcheck.FIELD: altcha_error}
    if signup is None:
        count("bot_check" if altcha_error else "invalid").inc()
        return _problem(
            request,
            kind,
            422 if kind == "json" else 400,
            errors,
            fields=fields,
            topic_choices=await _offered(request, kind, state.pool),
        )

    ip = clientinfo.client_ip(request)
    evidence = Evidence.of(request, settings, signup.source)
    try:
        async with state.pool.acquire() as con:
            if proof is not None and not await botcheck.spend(con, proof):
                count("bot_check").inc()
                errors = {botcheck.FIELD: botcheck.REPLAYED}
                status = 422 if kind == "json" else 400
                offered = await _offered(request, kind, con)
                return _problem(request, kind, status, errors, fields=fields, topic_choices=offered)
            day_key = await state.day_keys.today(con)
            if ip is not None:
                verdict = await ratelimit.hit_ip(con, settings, day_key, ip)
                if not verdict.allowed:
                    count("rate_limited").inc()
                    offered = await _offered(request, kind, con)
                    return _too_many(request, kind, verdict.retry_after, fields, offered)
            try:
                topic_ids = await membership.resolve(con, signup.topics)
            except membership.UnknownTopics as exc:
                count("invalid").inc()
                return await _unknown_topics(request, con, kind, str(exc), fields)
            outcome = await register(con, settings, day_key, signup, evidence, topic_ids)
    except (*connections.UNAVAILABLE, asyncpg.InterfaceError) as exc:
        if not connections.is_unavailable(exc):
            raise
        log.warning("signup database unavailable", extra={"error": exc.__class__.__name__})
        count("unavailable").inc()
        return _unavailable(request, kind, fields)
    count(outcome).inc()
    await answer_no_sooner(started, settings)
    return _accepted(request, kind, fields)


UNSUPPORTED = "Send application/json or a form (application/x-www-form-urlencoded)."


def _too_many(
    request: Request,
    kind: str,
    retry_after: int,
    fields: dict[str, Any],
    topic_choices: list[Any],
) -> Response:
    message = N_("Too many sign-ups from your network. Please try again later.")
    headers = {"Retry-After": str(retry_after)}
    return _problem(
        request,
        kind,
        429,
        {"email": message},
        headers=headers,
        fields=fields,
        topic_choices=topic_choices,
    )


async def _offered(
    request: Request, kind: str, con: asyncpg.Connection | asyncpg.Pool
) -> list[Any]:
    """The topics a form that comes back offers again, whatever was wrong with it, so the
    person's ticks are not lost; none for JSON, or when the database is unavailable (the
    form then carries the ticks as hidden fields)."""
    if kind != "form":
        return []
    try:
        return list(await membership.form_choices(con))
    except (*connections.UNAVAILABLE, asyncpg.InterfaceError) as exc:
        if not connections.is_unavailable(exc):
            raise
        return []


async def _unknown_topics(
    request: Request, con: asyncpg.Connection, kind: str, unknown: str, fields: dict[str, Any]
) -> Response:
    """A slug that names no topic: a field error, with the topics offered instead."""
    status = 422 if kind == "json" else 400
    offered = await membership.form_choices(con)
    errors = {"topics": f"Unknown topics: {unknown}."}
    return _problem(request, kind, status, errors, fields=fields, topic_choices=offered)


def _unavailable(request: Request, kind: str, fields: dict[str, Any]) -> Response:
    """The one place that answers a lost database itself rather than through the app's
    handler: the form comes back with what the person typed, so nothing is lost. Same
    definition, same Retry-After; any other database error is a bug and a 500."""
    message = N_("Sign-up is briefly unavailable. Please try again in a minute.")
    headers = {"Retry-After": connections.RETRY_AFTER, "Cache-Control": "no-store"}
    return _problem(request, kind, 503, {"service": message}, headers=headers, fields=fields)


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
    middleware.append(Middleware(BodyLimit, limit=settings.max_body_bytes, answer=_too_large))
    return [
        Route(
            "/subscribe",
            _only_post(subscribe),
            methods=["GET", "POST", "OPTIONS"],
            middleware=middleware,
        )
    ]


def _too_large(request: Request) -> Response:
    limit = request.app.state.settings.max_body_bytes
    request.app.state.metrics.signups.labels("invalid").inc()
    message = f"The sign-up was larger than {limit} bytes and was not read. Please shorten it."
    return _problem(request, _content_kind(request), 413, {"body": message})


def _only_post(endpoint: Any) -> Any:
    """OPTIONS is routed for CORS preflights and GET for a page that says what this
    address is for; both answer 405 (a person who opens /subscribe gets a page)."""

    async def handler(request: Request) -> Response:
        if request.method != "POST":
            headers = {"Allow": "POST"}
            if request.method in ("GET", "HEAD") and "json" not in request.headers.get(
                "accept", ""
            ):
                return pages.render(request, "subscribe_get.html", 405, headers=headers)
            return JSONResponse({"errors": {"method": "Use POST."}}, 405, headers=headers)
        return await endpoint(request)

    handler.__name__ = endpoint.__name__
    return handler
