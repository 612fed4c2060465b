"""`/admin/api/*` for campaigns and for access and erasure requests.

Every endpoint is wrapped in `admin_auth.require_admin` (bearer token, constant-time
comparison). Answers are JSON with `Cache-Control: no-store`: several hold personal data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from service.admin.auth import bearer, require_admin
from service.campaigns import check, schedule, store
from service.campaigns.mail import Links
from service.campaigns.stats import campaign_stats
from service.events import queue as events
from service.mail.messages import MailContext
from service.manage import address_change
from service.outbox import breaker
from service.privacy import erasure
from service.signup.fields import clean_name

log = logging.getLogger("newsletter.admin_api")

NO_STORE = {"Cache-Control": "no-store"}
MAX_ID = 2**63 - 1
RECIPIENT_BATCH = 1000  # rows per cursor fetch and per chunk written to the client
LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 500
PATCH_MAX_BYTES = 2048


def _json(content: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, headers=NO_STORE)


def _error(status_code: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    return _json({"error": error, "detail": detail, **extra}, status_code)


def _not_found(what: str) -> JSONResponse:
    return _error(404, "not_found", f"no such {what}")


def _campaign_id(request: Request) -> int | None:
    """The path's campaign id, or None when it cannot name a campaign (too large)."""
    value = request.path_params["campaign_id"]
    return value if 0 < value <= MAX_ID else None


async def _json_body(request: Request, limit: int) -> tuple[Any, JSONResponse | None]:
    declared = request.headers.get("content-length", "")
    if declared and (not declared.isdigit() or int(declared) > limit):
        return None, _error(413, "too_large", f"the body must be at most {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None, _error(413, "too_large", f"the body must be at most {limit} bytes")
    try:
        return json.loads(body), None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None, _error(400, "malformed", "the body must be a JSON object")


# -- campaigns --------------------------------------------------------------------


def _invalid(errors: dict[str, str]) -> JSONResponse:
    """The 422 of a campaign's fields, with the template variables when a template failed."""
    extra: dict[str, Any] = {}
    if any(message.startswith("template error") for message in errors.values()):
        extra["variables"] = [variable.name for variable in store.VARIABLES]
    return _error(422, "invalid", "some fields are not valid", fields=errors, **extra)


@require_admin
async def create_campaign(request: Request) -> Response:
    payload, problem = await _json_body(request, store.MAX_REQUEST_BYTES)
    if problem is not None:
        return problem
    # Variants per language (issue 29), checked apart from the campaign's own fields.
    raw_translations = payload.pop("translations", None) if isinstance(payload, dict) else None
    clean, errors = store.validate_campaign(payload)
    translations, translation_errors = store.validate_translations(raw_translations)
    errors.update(translation_errors)
    async with request.app.state.pool.acquire() as con:
        topic_ids, topics_error = await store.campaign_topics(con, payload)
        if topics_error:
            errors["topics"] = topics_error
        if errors:
            return _invalid(errors)
        campaign_id = await store.create_campaign(
            con, **clean, topic_ids=topic_ids, translations=translations
        )
    log.info("campaign created", extra={"campaign_id": campaign_id})
    return _json({"id": campaign_id}, 201)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        return None
    return int(raw)


@require_admin
async def list_campaigns(request: Request) -> Response:
    """Newest first, `?limit=` (1-500, default 100) and `?before=<id>` to page."""
    limit = _int_param(request, "limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX)
    before = _int_param(request, "before", MAX_ID, 1, MAX_ID)
    if limit is None or before is None:
        return _error(422, "invalid", f"limit must be 1-{LIST_LIMIT_MAX} and before a campaign id")
    async with request.app.state.pool.acquire() as con:
        rows = await store.q.list_campaigns.fetch(con, before=before, limit=limit)
    items = [store.campaign_json(row) for row in rows]
    next_before = items[-1]["id"] if len(items) == limit else None
    return _json({"campaigns": items, "next_before": next_before})


@require_admin
async def get_campaign(request: Request) -> Response:
    campaign_id = _campaign_id(request)
    row = None
    if campaign_id is not None:
        async with request.app.state.pool.acquire() as con:
            row = await store.q.get_campaign.fetchrow(con, id=campaign_id)
    if row is None:
        return _not_found("campaign")
    return _json(store.campaign_json(row))


@require_admin
async def send_campaign(request: Request) -> Response:
    """Queues the campaign for every active subscriber not yet mailed it, `202 {"queued"}`;
    with a body `{"at": "<RFC 3339>"}` schedules that instead, `202 {"scheduled_at"}`."""
    campaign_id = _campaign_id(request)
    if campaign_id is None:
        return _not_found("campaign")
    at, problem = await _send_at(request)
    if problem is not None:
        return problem
    try:
        async with request.app.state.pool.acquire() as con:
            if at is not None:
                scheduled = await schedule.schedule(con, campaign_id, at)
            else:
                queued = await schedule.send_now(con, campaign_id)
    except store.CampaignNotFound:
        return _not_found("campaign")
    except store.WelcomeCampaign:
        return _welcome_conflict()
    except schedule.SendStarted:
        return _error(409, "already_sent", "the campaign's send has started; nothing to schedule")
    if at is not None:
        log.info("campaign scheduled", extra={"campaign_id": campaign_id})
        return _json({"scheduled_at": scheduled.isoformat()}, 202)
    log.info("campaign queued", extra={"campaign_id": campaign_id, "count": queued})
    return _json({"queued": queued}, 202)


@require_admin
async def edit_campaign(request: Request) -> Response:
    """`PATCH`: changes the fields given (those creation takes, validated the same way)
    until the first send starts, `200` with the campaign; then `409`."""
    campaign_id = _campaign_id(request)
    if campaign_id is None:
        return _not_found("campaign")
    payload, problem = await _json_body(request, store.MAX_REQUEST_BYTES)
    if problem is not None:
        return problem
    clean, errors = store.validate_campaign(payload, partial=True)
    changes: dict[str, Any] = dict(clean)
    if isinstance(payload, dict) and "translations" in payload:
        # null: no variants any more, everyone gets the campaign's own texts
        translations, translation_errors = store.validate_translations(payload["translations"])
        errors.update(translation_errors)
        changes["translations"] = translations
    try:
        async with request.app.state.pool.acquire() as con:
            if isinstance(payload, dict) and "topics" in payload:
                # null: the campaign goes to everyone again
                topic_ids, topics_error = await store.campaign_topics(con, payload)
                if topics_error:
                    errors["topics"] = topics_error
                changes["topics"] = topic_ids
            if errors:
                return _invalid(errors)
            await store.update_campaign(con, campaign_id, changes)
            row = await store.q.get_campaign.fetchrow(con, id=campaign_id)
    except store.CampaignNotFound:
        return _not_found("campaign")
    except store.WelcomeCampaign:
        return _error(
            409,
            "welcome_campaign",
            "this campaign is a topic's welcome message: edit it through its topic",
        )
    except store.SendStarted:
        return _error(409, "already_sent", "the campaign's send has started; it can't change now")
    log.info("campaign edited", extra={"campaign_id": campaign_id, "kind": ",".join(changes)})
    return _json(store.campaign_json(row))


@require_admin
async def preview_campaign(request: Request) -> Response:
    """`200 {"subject", "html", "text"}` as the subscriber `?email=` (else the sample
    person) gets the campaign; `404` for an unknown campaign or subscriber."""
    campaign_id = _campaign_id(request)
    if campaign_id is None:
        return _not_found("campaign")
    email = request.query_params.get("email")
    state = request.app.state
    try:
        async with state.pool.acquire() as con:
            context = MailContext(state.settings, state.tokens, state.templates)
            shown = await check.preview(con, context, campaign_id, email)
    except store.CampaignNotFound:
        return _not_found("campaign")
    except check.SubscriberNotFound:
        return _not_found("subscriber")
    return _json({"subject": shown.subject, "html": shown.html, "text": shown.text})


@require_admin
async def test_campaign(request: Request) -> Response:
    """`POST {"to"}`: one copy to that address, marked as a test and counted nowhere,
    `202`; `422` for a bad address, `429` past CAMPAIGN_TEST_PER_HOUR."""
    campaign_id = _campaign_id(request)
    if campaign_id is None:
        return _not_found("campaign")
    payload, problem = await _json_body(request, PATCH_MAX_BYTES)
    if problem is not None:
        return problem
    if not isinstance(payload, dict):
        return _error(
            422, "invalid", "some fields are not valid", fields={"body": 'must be {"to": …}'}
        )
    errors = {str(key)[:50]: "unknown field" for key in sorted(set(payload) - {"to"})}
    address, message = check.clean_address(payload.get("to"))
    if message:
        errors["to"] = message
    if errors or address is None:
        return _error(422, "invalid", "some fields are not valid", fields=errors)
    state = request.app.state
    operator = check.operator_of(bearer(request) or "")
    try:
        async with state.pool.acquire() as con:
            day_key = await state.day_keys.today(con)
            await check.queue_test(con, state.settings, day_key, operator, campaign_id, address)
    except store.CampaignNotFound:
        return _not_found("campaign")
    except check.TooMany as exc:
        response = _error(
            429, "rate_limited", "this campaign's test sends for this hour are used up"
        )
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    log.info("campaign test queued", extra={"campaign_id": campaign_id})
    return _json({"queued": 1, "test": True}, 202)


def _welcome_conflict() -> JSONResponse:
    return _error(
        409,
        "welcome_campaign",
        "this campaign is a topic's welcome message: it is sent to each person who joins"
        " the topic, never sent or scheduled to a list",
    )


async def _send_at(request: Request) -> tuple[datetime | None, JSONResponse | None]:
    """The body of a send: none (or `{}`) is now; `{"at": …}` a time in the future."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > PATCH_MAX_BYTES:
            return None, _error(
                413, "too_large", f"the body must be at most {PATCH_MAX_BYTES} bytes"
            )
    if not body.strip():
        return None, None
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None, _error(400, "malformed", "the body must be a JSON object")
    if not isinstance(payload, dict):
        return None, _error(
            422, "invalid", "some fields are not valid", fields={"body": "must be a JSON object"}
        )
    errors = {str(key)[:50]: "unknown field" for key in sorted(set(payload) - {"at"})}
    at = None
    if "at" in payload:
        at, message = schedule.parse_at(payload["at"], datetime.now(UTC))
        if message:
            errors["at"] = message
    if errors:
        return None, _error(422, "invalid", "some fields are not valid", fields=errors)
    return at, None


@require_admin
async def unschedule_campaign(request: Request) -> Response:
    """Cancels a scheduled send that has not started: `200`; `409` once it started (or
    when none is scheduled)."""
    campaign_id = _campaign_id(request)
    if campaign_id is None:
        return _not_found("campaign")
    try:
        async with request.app.state.pool.acquire() as con:
            await schedule.unschedule(con, campaign_id)
    except store.CampaignNotFound:
        return _not_found("campaign")
    except store.WelcomeCampaign:
        return _welcome_conflict()
    except schedule.SendStarted:
        return _error(
            409, "already_sent", "the campaign's send has started; it cannot be unscheduled"
        )
    except schedule.NotScheduled:
        return _error(409, "not_scheduled", "no send of this campaign is scheduled")
    log.info("campaign schedule cancelled", extra={"campaign_id": campaign_id})
    return _json({"scheduled_at": None})


async def _on_existing_campaign(
    request: Request, act: Callable[[asyncpg.Connection, int], Awaitable[Any]]
) -> tuple[int, Any] | Response:
    """(campaign id, what `act` returned) for the campaign of the path, or its 404."""
    campaign_id = _campaign_id(request)
    if campaign_id is None:
        return _not_found("campaign")
    async with request.app.state.pool.acquire() as con:
        if not await store.q.campaign_exists.fetchval(con, id=campaign_id):
            return _not_found("campaign")
        return campaign_id, await act(con, campaign_id)


@require_admin
async def resume_campaign(request: Request) -> Response:
    """Resumes a campaign the circuit breaker paused: `200 {"resumed": n}` (its waiting
    emails are due again, with their attempts back); `409` when it is not paused."""
    outcome = await _on_existing_campaign(request, breaker.resume)
    if isinstance(outcome, Response):
        return outcome
    campaign_id, resumed = outcome
    if resumed is None:
        return _error(409, "not_paused", "the campaign is not paused")
    log.info("campaign resumed", extra={"campaign_id": campaign_id, "count": resumed})
    return _json({"resumed": resumed})


@require_admin
async def cancel_campaign(request: Request) -> Response:
    """Drops the campaign's emails not sent yet, paused or not: `200 {"cancelled": n}`."""
    outcome = await _on_existing_campaign(request, breaker.cancel)
    if isinstance(outcome, Response):
        return outcome
    campaign_id, cancelled = outcome
    log.info("campaign cancelled", extra={"campaign_id": campaign_id, "count": cancelled})
    return _json({"cancelled": cancelled})


async def _recipient_lines(app: Starlette, campaign_id: int) -> AsyncIterator[bytes]:
    """NDJSON from a server-side cursor: at most RECIPIENT_BATCH rows in memory."""
    settings, tokens = app.state.settings, app.state.tokens
    query = store.q.active_recipients
    async with app.state.pool.acquire() as con:
        async with con.transaction(readonly=True, isolation="repeatable_read"):
            topics = bool(await store.q.campaign_has_topics.fetchval(con, id=campaign_id))
            lines: list[str] = []
            args = query.args({"campaign_id": campaign_id})
            async for row in con.cursor(query.sql, *args, prefetch=RECIPIENT_BATCH):
                links = Links.mint(
                    settings,
                    tokens,
                    row["id"],
                    campaign_id,
                    row["tracking_consent"],
                    row["tracking_withdrawn"],
                    topics=topics,
                )
                record = {
                    "email": row["email"],
                    "name": row["name"],
                    "pixel_url": links.pixel_url or None,
                    "unsubscribe_url": links.unsubscribe_url,
                    "tracking_url": links.tracking_url or None,
                }
                lines.append(json.dumps(record, ensure_ascii=False))
                if len(lines) >= RECIPIENT_BATCH:
                    yield ("\n".join(lines) + "\n").encode()
                    lines = []
            if lines:
                yield ("\n".join(lines) + "\n").encode()


@require_admin
async def campaign_recipients(request: Request) -> Response:
    """One NDJSON line per active subscriber, for sending through another mail system."""
    campaign_id = _campaign_id(request)
    exists = False
    if campaign_id is not None:
        async with request.app.state.pool.acquire() as con:
            exists = await store.q.campaign_exists.fetchval(con, id=campaign_id)
    if campaign_id is None or not exists:
        return _not_found("campaign")
    return StreamingResponse(
        _recipient_lines(request.app, campaign_id),
        media_type="application/x-ndjson",
        headers=NO_STORE,
    )


# -- access and erasure requests ----------------------------------------------------


@require_admin
async def export_subscriber(request: Request) -> Response:
    """Everything stored about the address (GDPR Art. 15), `404` if nothing."""
    email = request.path_params["email"]
    data = None
    if 0 < len(email) <= erasure.MAX_EMAIL_LENGTH:
        async with request.app.state.pool.acquire() as con:
            data = await erasure.export_subscriber(con, email)
    if data is None:
        return _not_found("subscriber")
    return _json(data)


@require_admin
async def erase_subscriber(request: Request) -> Response:
    """Erases the address as an unsubscribe does; `204` whether or not it existed."""
    email = request.path_params["email"]
    if 0 < len(email) <= erasure.MAX_EMAIL_LENGTH:
        if await erasure.erase(request.app.state.pool, email=email, cause="operator"):
            request.app.state.metrics.unsubscribes.labels("admin").inc()
            log.info("subscriber erased", extra={"kind": "admin"})
    return Response(status_code=204, headers=NO_STORE)


@require_admin
async def correct_subscriber(request: Request) -> Response:
    """Corrections on the person's request: `name` (a string, or null to delete it) at
    once; `email` starts an address change, which the new address confirms (`202`)."""
    payload, problem = await _json_body(request, PATCH_MAX_BYTES)
    if problem is not None:
        return problem
    fields, errors = _correction(payload)
    if errors:
        return _error(422, "invalid", "some fields are not valid", fields=errors)
    email = request.path_params["email"]
    state = request.app.state
    async with state.pool.acquire() as con:
        subscriber_id = None
        if 0 < len(email) <= erasure.MAX_EMAIL_LENGTH:
            subscriber_id = await erasure.find_subscriber(con, email)
        if subscriber_id is None:
            return _not_found("subscriber")
        if "name" in fields:
            async with con.transaction():
                await address_change.q.set_name.execute(con, id=subscriber_id, name=fields["name"])
                await events.updated(con, subscriber_id)
        outcome = None
        if "email" in fields:
            day_key = await state.day_keys.today(con)
            outcome = await address_change.request_change(
                con, state.settings, day_key, subscriber_id, fields["email"], masked=False
            )
    log.info("subscriber corrected", extra={"kind": ",".join(sorted(fields))})
    if outcome == "gone":
        return _error(409, "not_active", "only an active subscriber's address can change")
    if outcome == "taken":
        return _error(409, "taken", "the new address is subscribed already")
    if outcome == "limited":
        return _error(429, "rate_limited", "the new address got its emails for today")
    body: dict[str, Any] = {"address_change": None}
    if "name" in fields:
        body["name"] = fields["name"]
    if outcome == "queued":
        body["address_change"] = "confirmation_sent"
    return _json(body, 202 if outcome == "queued" else 200)


def _correction(payload: Any) -> tuple[dict[str, Any], dict[str, str]]:
    if not isinstance(payload, dict) or not payload:
        return {}, {"body": "send a JSON object with name and/or email"}
    unknown = sorted(set(payload) - {"name", "email"})
    if unknown:
        return {}, {key: "unknown field" for key in unknown}
    fields: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if "name" in payload:
        name, error = clean_name(payload["name"])
        if error:
            errors["name"] = error
        fields["name"] = name
    if "email" in payload:
        email, error = address_change.clean_address(payload["email"], "must be an email address")
        if error:
            errors["email"] = error
        fields["email"] = email
    return fields, errors


@require_admin
async def stats_endpoint(request: Request) -> Response:
    """`GET /admin/api/campaigns/{id}/stats`."""
    campaign_id = request.path_params["campaign_id"]
    stats = None
    if 0 < campaign_id < 2**63:
        async with request.app.state.pool.acquire() as con:
            stats = await campaign_stats(
                con, campaign_id, request.app.state.settings.stats_min_bucket
            )
    if stats is None:
        return JSONResponse({"error": "not_found", "detail": "no such campaign"}, 404)
    return JSONResponse(stats, headers={"Cache-Control": "no-store"})
