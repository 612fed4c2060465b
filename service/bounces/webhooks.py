"""`POST /webhooks/{provider}`: bounce and complaint events from Amazon SES (through
SNS), Postmark, SendGrid and Mailgun, each authenticated the provider's way
(`signatures`).

Answers: 401 for a request not provably from the provider, 400 for a body that is not
the provider's format, 413 above WEBHOOK_MAX_BYTES, 404 for a provider not configured,
503 (with Retry-After) when the database cannot be reached, so the provider retries;
otherwise 200, also for events that change nothing (deliveries, opens, a repeat). An
event is matched to its email by the VERP return path when the provider reports it,
else by the address and the event's time (`actions.target_by_address`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from service import db
from service.bounces import actions, signatures, verp
from service.bounces.parse import COMPLAINT, HARD, IGNORE, SOFT, status_event

log = logging.getLogger("newsletter.bounces")

_REASON = re.compile(r"[A-Za-z0-9 ._:-]{1,40}")
DATABASE_ERRORS = (asyncpg.PostgresError, *db.UNAVAILABLE)


class Malformed(ValueError):
    """Not the provider's format: 400."""


@dataclass(frozen=True)
class Event:
    event: str
    reason: str
    address: str | None
    return_path: str | None = None
    at: datetime | None = None


def _reason(*candidates: Any) -> str:
    for value in candidates:
        if isinstance(value, str | int) and _REASON.fullmatch(str(value)):
            return str(value)
    return "other"


def _status(text: Any) -> tuple[str, str] | None:
    return status_event(text) if isinstance(text, str) else None


def _iso(value: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _epoch(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed("expected an object")
    return value


# -- Amazon SES through SNS ---------------------------------------------------------------
def ses_events(notification: dict[str, Any]) -> list[Event]:
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail") or {}
    source = mail.get("source") if isinstance(mail, dict) else None
    events = []
    if kind == "Bounce":
        bounce = _object(notification.get("bounce"))
        permanent = bounce.get("bounceType") == "Permanent"
        at = _iso(bounce.get("timestamp"))
        for recipient in bounce.get("bouncedRecipients") or []:
            recipient = _object(recipient)
            decided = _status(recipient.get("status"))
            if decided is not None:
                event, reason = decided
                event = HARD if permanent and event == HARD else SOFT
            else:
                event, reason = (HARD if permanent else SOFT), _reason(bounce.get("bounceSubType"))
            events.append(Event(event, reason, recipient.get("emailAddress"), source, at))
    elif kind == "Complaint":
        complaint = _object(notification.get("complaint"))
        reason = _reason(complaint.get("complaintFeedbackType"), "abuse")
        for recipient in complaint.get("complainedRecipients") or []:
            address = _object(recipient).get("emailAddress")
            events.append(
                Event(COMPLAINT, reason, address, source, _iso(complaint.get("timestamp")))
            )
    return events


async def _ses(request: Request, body: bytes) -> list[Event]:
    settings = request.app.state.settings
    message = _object(_json(body))
    await request.app.state.sns.verify(message, settings.webhook_ses_topic_arns)
    if message["Type"] == "SubscriptionConfirmation":
        url = str(message.get("SubscribeURL", ""))
        if not signatures.sns_url_allowed(url):
            raise signatures.BadSignature("subscribe URL not allowed")
        await request.app.state.sns.fetch(url)
        log.info("ses subscription confirmed", extra={"source": "ses"})
        return []
    if message["Type"] != "Notification":
        return []
    return ses_events(_object(_json(str(message.get("Message", "")).encode())))


# -- Postmark -----------------------------------------------------------------------------
_POSTMARK = {
    "HardBounce": HARD,
    "BadEmailAddress": HARD,
    "SoftBounce": SOFT,
    "Transient": SOFT,
    "DnsError": SOFT,
    "SpamComplaint": COMPLAINT,
}


def postmark_events(record: dict[str, Any]) -> list[Event]:
    if not isinstance(record.get("RecordType"), str):
        raise Malformed("no RecordType")
    kind = record.get("Type") if record.get("RecordType") == "Bounce" else record.get("RecordType")
    event = _POSTMARK.get(str(kind), IGNORE)
    at = _iso(record.get("BouncedAt") or record.get("ReceivedAt"))
    return [Event(event, _reason(kind), record.get("Email"), None, at)]


async def _postmark(request: Request, body: bytes) -> list[Event]:
    expected = request.app.state.settings.webhook_postmark_auth
    signatures.verify_basic(expected, request.headers.get("authorization"))
    return postmark_events(_object(_json(body)))


# -- SendGrid -----------------------------------------------------------------------------
def sendgrid_events(items: list[Any]) -> list[Event]:
    events = []
    for item in items:
        item = _object(item)
        kind, at = item.get("event"), _epoch(item.get("timestamp"))
        if kind == "spamreport":
            events.append(Event(COMPLAINT, "spamreport", item.get("email"), None, at))
        elif kind == "bounce":
            decided = _status(item.get("status"))
            blocked = item.get("type") == "blocked"
            event = SOFT if blocked or (decided and decided[0] == SOFT) else HARD
            reason = decided[1] if decided else _reason(item.get("type"))
            events.append(Event(event, reason, item.get("email"), None, at))
    return events


async def _sendgrid(request: Request, body: bytes) -> list[Event]:
    signatures.verify_sendgrid(
        request.app.state.settings.webhook_sendgrid_public_key,
        body,
        request.headers.get("x-twilio-email-event-webhook-signature", ""),
        request.headers.get("x-twilio-email-event-webhook-timestamp", ""),
    )
    items = _json(body)
    if not isinstance(items, list):
        raise Malformed("expected a list of events")
    return sendgrid_events(items)


# -- Mailgun ------------------------------------------------------------------------------
def mailgun_events(data: dict[str, Any]) -> list[Event]:
    kind, at = data.get("event"), _epoch(data.get("timestamp"))
    envelope = data.get("envelope") if isinstance(data.get("envelope"), dict) else {}
    sender = envelope.get("sender")
    if kind == "complained":
        return [Event(COMPLAINT, "complained", data.get("recipient"), sender, at)]
    if kind != "failed" or data.get("severity") != "permanent":
        return []  # a temporary failure is retried by Mailgun: not a bounce yet
    status = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
    decided = _status(status.get("enhanced-code")) or _status(status.get("message"))
    event, reason = decided if decided else (HARD, _reason(data.get("reason")))
    return [Event(event if event != IGNORE else HARD, reason, data.get("recipient"), sender, at)]


async def _mailgun(request: Request, body: bytes) -> list[Event]:
    payload = _object(_json(body))
    signed = _object(payload.get("signature"))
    fields = [signed.get(k) for k in ("timestamp", "token", "signature")]
    if not all(isinstance(f, str) for f in fields):
        raise Malformed("signature fields missing")
    signatures.verify_mailgun(
        request.app.state.settings.webhook_mailgun_signing_key,
        *fields,  # type: ignore[arg-type]
    )
    return mailgun_events(_object(payload.get("event-data")))


PROVIDERS = {
    "ses": ("webhook_ses_topic_arns", _ses),
    "postmark": ("webhook_postmark_auth", _postmark),
    "sendgrid": ("webhook_sendgrid_public_key", _sendgrid),
    "mailgun": ("webhook_mailgun_signing_key", _mailgun),
}


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("not JSON") from None


async def _read(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise OverflowError
        chunks.append(chunk)
    return b"".join(chunks)


async def _act(request: Request, events: list[Event], provider: str) -> dict[str, int]:
    state = request.app.state
    outcomes: dict[str, int] = {}
    for item in events:
        if item.event == IGNORE:
            continue
        target = None
        if isinstance(item.return_path, str):
            found = verp.delivery_of(state.settings, state.tokens, item.return_path)
            target = actions.Target(*found) if found else None
        if target is None and isinstance(item.address, str):
            async with state.pool.acquire() as con:
                target = await actions.target_by_address(con, item.address, item.at)
        outcome = "unknown"
        if target is not None:
            outcome = await actions.apply(
                state.pool, state.settings, target, item.event, provider, item.reason
            )
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


async def receive(request: Request) -> Response:
    provider = request.path_params["provider"]
    settings = request.app.state.settings
    if provider not in PROVIDERS or not getattr(settings, PROVIDERS[provider][0]):
        return JSONResponse({"error": "unknown provider"}, status_code=404)
    try:
        body = await _read(request, settings.webhook_max_bytes)
        events = await PROVIDERS[provider][1](request, body)
        outcomes = await _act(request, events, provider)
    except OverflowError:
        return JSONResponse({"error": "body too large"}, status_code=413)
    except ClientDisconnect:
        return Response(status_code=400)
    except signatures.BadSignature as exc:
        log.warning("webhook refused", extra={"source": provider, "reason": str(exc)})
        return JSONResponse({"error": "bad signature"}, status_code=401)
    except (Malformed, KeyError, TypeError, AttributeError):
        return JSONResponse({"error": "malformed body"}, status_code=400)
    except DATABASE_ERRORS as exc:
        log.warning("webhook deferred: database", extra={"error": exc.__class__.__name__})
        return JSONResponse(
            {"error": "unavailable"}, status_code=503, headers={"Retry-After": "30"}
        )
    return JSONResponse({"events": len(events), "outcomes": outcomes})
