"""Consent evidence (GDPR Art. 7(1)): the kinds of events and who did what, from where.

Every `consent_events` row is written by one SQL function, `record_consent`
(sql/139_one_source_for_consent_policies.sql): here for the events of one request, and
inside the sign-up and import statements, which stay one statement each.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from starlette.requests import Request

from service.db.queries import queries
from service.settings import Settings
from service.web import clientinfo

q = queries("evidence")

# The kinds consent_events accepts (its CHECK constraint, sql/100_manage.sql, sql/142).
SIGNUP = "signup"
CONFIRM = "confirm"
TRACKING_GRANTED = "tracking_granted"
TRACKING_WITHDRAWN = "tracking_withdrawn"
ADDRESS_CHANGED = "address_changed"
# Joining or leaving a topic; the event's `topic` is the topic's slug (sql/147).
TOPIC_JOINED = "topic_joined"
TOPIC_LEFT = "topic_left"
KINDS = (
    SIGNUP,
    CONFIRM,
    TRACKING_GRANTED,
    TRACKING_WITHDRAWN,
    ADDRESS_CHANGED,
    TOPIC_JOINED,
    TOPIC_LEFT,
)


@dataclass(frozen=True)
class Evidence:
    """Who acted, as kept: the IP reduced per IP_MODE, the user agent, the source (a form's
    `source` field, or the page the person acted on) and the consent text they saw."""

    ip: str | None
    user_agent: str | None
    source: str | None
    consent_text_version: str

    @classmethod
    def of(cls, request: Request, settings: Settings, source: str | None) -> Evidence:
        """The evidence of the person making this request."""
        return cls(
            ip=clientinfo.reduce_ip(clientinfo.client_ip(request), settings.ip_mode),
            user_agent=clientinfo.user_agent(request),
            source=source,
            consent_text_version=settings.consent_text_version,
        )


async def record(
    con: asyncpg.Connection,
    subscriber_id: int,
    kind: str,
    evidence: Evidence,
    method: str | None = None,
    topic: str | None = None,
) -> None:
    """One event, now, in the caller's transaction (which holds the subscriber row);
    `method` is how the person acted, `topic` the slug of the topic it is about."""
    if kind not in KINDS:
        raise ValueError(f"unknown consent event kind {kind!r}")
    await q.record.fetchval(
        con,
        subscriber_id=subscriber_id,
        kind=kind,
        ip=evidence.ip,
        user_agent=evidence.user_agent,
        source=evidence.source,
        consent_text_version=evidence.consent_text_version,
        method=method,
        topic=topic,
    )
