"""`POST /webhooks/{provider}`: bounce and complaint events from Amazon SES (through
SNS), Postmark, SendGrid and Mailgun, each authenticated the provider's way
(`signatures`).

Fresh and once: a signed timestamp (SNS `Timestamp`, SendGrid's timestamp header,
Mailgun's `signature.timestamp`) more than FRESHNESS away from now is refused, and a
Mailgun token is taken once (`webhook_tokens`, sql/135), since Mailgun's signature
covers only the timestamp and the token, not the event. Postmark signs nothing: its
basic-auth secret, and optionally the source address (WEBHOOK_POSTMARK_IPS).

Answers: 401 for a request not provably from the provider (bad signature or secret,
stale, replayed, a source address not allowed), 400 for a body that is not the
provider's format, 413 above WEBHOOK_MAX_BYTES, 404 for a provider not configured, 503
(with Retry-After) when the database cannot be reached, so the provider retries;
otherwise 200, also for events that change nothing (deliveries, opens, a repeat). An
event is matched to its email by the VERP return path when the provider reports it,
else by the address and the event's time (`actions.target_by_address`).

A provider's "permanent" bounce is hard only if the SMTP status it reports is a hard
one for `parse.status_event` (a policy or quota refusal is not); without a status code
the provider's own verdict stands.
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

from service.bounces import actions, signatures, verp
from service.bounces.parse import COMPLAINT, HARD, IGNORE, SOFT, status_event
from service.db import connections
from service.db.queries import queries
from service.web import clientinfo

log = logging.getLogger("newsletter.bounces")
q = queries("bounces")

_REASON = re.compile(r"[A-Za-z0-9 ._:-]{1,40}")
DATABASE_ERRORS = (asyncpg.PostgresError, *connections.UNAVAILABLE)
FRESHNESS = 300.0  # seconds a signed timestamp may be from now, either way (providers' advice)
_EVENTS = frozenset({HARD, SOFT, COMPLAINT, IGNORE})
_MAILGUN_TOKEN = re.compile(r"[A-Za-z0-9]{1,100}")


class Malformed(ValueError):
    """Not the provider's format: 400."""


class TooLarge(Exception):
    """Above WEBHOOK_MAX_BYTES: 413."""


class Unreachable(Exception):
    """The provider's confirmation URL could not be visited: 503, the provider retries."""


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


def _status(*texts: Any) -> tuple[str, str] | None:
    """`status_event` of the first text holding an enhanced status code."""
    for text in texts:
        decided = status_event(text) if isinstance(text, str) else None
        if decided is not None:
            return decided
    return None


def _bounce(permanent: bool, decided: tuple[str, str] | None, reason: str) -> tuple[str, str]:
    """(event, reason) of a provider's bounce: its status code decides when it reports
    one (a transient bounce never more than soft), else the provider's verdict."""
    if decided is None:
        return (HARD if permanent else SOFT), reason
    event, code = decided
    if event not in _EVENTS:  # a kind this module does not know: act on nothing
        return IGNORE, code
    if not permanent and event == HARD:
        return SOFT, code
    return event, code


def fresh(when: datetime | None) -> None:
    """A signed timestamp within FRESHNESS of now, else BadSignature (401)."""
    if when is None:
        raise Malformed("no usable timestamp")
    if abs((datetime.now(UTC) - when).total_seconds()) > FRESHNESS:
        raise signatures.BadSignature("stale or future timestamp")


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
        for recipient in _list(bounce.get("bouncedRecipients")):
            recipient = _object(recipient)
            decided = _status(recipient.get("status"), recipient.get("diagnosticCode"))
            event, reason = _bounce(permanent, decided, _reason(bounce.get("bounceSubType")))
            events.append(Event(event, reason, recipient.get("emailAddress"), source, at))
    elif kind == "Complaint":
        complaint = _object(notification.get("complaint"))
        reason = _reason(complaint.get("complaintFeedbackType"), "abuse")
        for recipient in _list(complaint.get("complainedRecipients")):
            address = _object(recipient).get("emailAddress")
            events.append(
                Event(COMPLAINT, reason, address, source, _iso(complaint.get("timestamp")))
            )
    return events


async def _ses(request: Request, body: bytes) -> list[Event]:
    settings = request.app.state.settings
    message = _object(_json(body))
    await request.app.state.sns.verify(message, settings.webhook_ses_topic_arns)
    fresh(_iso(message.get("Timestamp")) if isinstance(message.get("Timestamp"), str) else None)
    if message["Type"] == "SubscriptionConfirmation":
        url = str(message.get("SubscribeURL", ""))
        if not signatures.sns_url_allowed(url):
            raise signatures.BadSignature("subscribe URL not allowed")
        try:
            await request.app.state.sns.fetch(url)
        except (OSError, TimeoutError) as exc:  # SNS unreachable: it sends the message again
            raise Unreachable(exc.__class__.__name__) from None
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
    event, reason = _POSTMARK.get(str(kind), IGNORE), _reason(kind)
    if event in (HARD, SOFT):
        event, reason = _bounce(event == HARD, _status(record.get("Details")), reason)
    at = _iso(record.get("BouncedAt") or record.get("ReceivedAt"))
    return [Event(event, reason, record.get("Email"), None, at)]


async def _postmark(request: Request, body: bytes) -> list[Event]:
    settings = request.app.state.settings
    if settings.webhook_postmark_ips:
        signatures.verify_source(settings.webhook_postmark_ips, clientinfo.client_ip(request))
    signatures.verify_basic(settings.webhook_postmark_auth, request.headers.get("authorization"))
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
            permanent = item.get("type") != "blocked"  # "blocked": a temporary refusal
            decided = _status(item.get("status"), item.get("reason"))
            event, reason = _bounce(permanent, decided, _reason(item.get("type")))
            events.append(Event(event, reason, item.get("email"), None, at))
    return events


async def _sendgrid(request: Request, body: bytes) -> list[Event]:
    timestamp = request.headers.get("x-twilio-email-event-webhook-timestamp", "")
    signatures.verify_sendgrid(
        request.app.state.settings.webhook_sendgrid_public_key,
        body,
        request.headers.get("x-twilio-email-event-webhook-signature", ""),
        timestamp,
    )
    fresh(_epoch(timestamp) if timestamp.isdigit() else None)
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
    decided = _status(status.get("enhanced-code"), status.get("message"), status.get("description"))
    event, reason = _bounce(True, decided, _reason(data.get("reason")))
    return [Event(event, reason, data.get("recipient"), sender, at)]


async def _mailgun(request: Request, body: bytes) -> list[Event]:
    payload = _object(_json(body))
    signed = _object(payload.get("signature"))
    timestamp, token, signature = (signed.get(k) for k in ("timestamp", "token", "signature"))
    if not (isinstance(timestamp, str) and isinstance(token, str) and isinstance(signature, str)):
        raise Malformed("signature fields missing")
    signatures.verify_mailgun(
        request.app.state.settings.webhook_mailgun_signing_key, timestamp, token, signature
    )
    fresh(_epoch(timestamp) if timestamp.isdigit() else None)
    if not _MAILGUN_TOKEN.fullmatch(token):
        raise Malformed("token")
    events = mailgun_events(_object(payload.get("event-data")))
    async with request.app.state.pool.acquire() as con:
        if (
            await q.claim_webhook_token.fetchval(
                con, provider="mailgun", token=token, window=2 * FRESHNESS
            )
            is None
        ):
            raise signatures.BadSignature("token already used")
    request.state.claimed = ("mailgun", token)
    return events


PROVIDERS = {
    "ses": ("webhook_ses_topic_arns", _ses),
    "postmark": ("webhook_postmark_auth", _postmark),
    "sendgrid": ("webhook_sendgrid_public_key", _sendgrid),
    "mailgun": ("webhook_mailgun_signing_key", _mailgun),
}


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[…
        raise Malformed("not JSON") from None


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Malformed("expected a list")
    return value


async def _read(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _act(request: Request, events: list[Event], provider: str) -> dict[str, int]:
    state = request.app.state
    outcomes: dict[str, int] = {}
    for item in events:
        if item.event == IGNORE:
            continue
        for text in (item.address, item.return_path):
            if isinstance(text, str) and not text.isprintable():
                raise Malformed("control characters in an address")
        target = None
        if isinstance(item.return_path, str):
            found = verp.delivery_of(state.settings, state.tokens, item.return_path)
            target = actions.Target.of(found) if found else None
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
        try:
            outcomes = await _act(request, events, provider)
        except DATABASE_ERRORS:
            await _release(request)
            raise
    except TooLarge:
        return JSONResponse({"error": "body too large"}, status_code=413)
    except ClientDisconnect:
        return Response(status_code=400)
    except signatures.BadSignature as exc:
        log.warning("webhook refused", extra={"source": provider, "reason": str(exc)})
        return JSONResponse({"error": "bad signature"}, status_code=401)
    except (Malformed, KeyError, TypeError, AttributeError):
        return JSONResponse({"error": "malformed body"}, status_code=400)
    except (*DATABASE_ERRORS, Unreachable) as exc:
        log.warning("webhook deferred", extra={"error": exc.__class__.__name__})
        return JSONResponse(
            {"error": "unavailable"},
            status_code=503,
            headers={"Retry-After": connections.RETRY_AFTER, "Cache-Control": "no-store"},
        )
    return JSONResponse({"events": len(events), "outcomes": outcomes})


async def _release(request: Request) -> None:
    """The provider's retry of a request that failed here must not count as a replay."""
    claimed = getattr(request.state, "claimed", None)
    if claimed is None:
        return
    try:
        async with request.app.state.pool.acquire() as con:
            await q.release_webhook_token.execute(con, provider=claimed[0], token=claimed[1])
    except DATABASE_ERRORS as exc:
        log.warning("webhook token kept", extra={"error": exc.__class__.__name__})
