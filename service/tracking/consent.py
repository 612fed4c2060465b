"""`GET/POST /tracking/{token}`: withdraw consent to (or object to) personal open tracking.

GET only shows a button (mail scanners prefetch links); POST, in one transaction, turns
tracking off for the subscriber, records a `tracking_withdrawn` consent event (the
evidence GDPR Art. 7(1) asks for) and deletes every recorded open and first-open time
of that subscriber. The subscriber row is locked first, which waits for any pixel batch
holding it, so no open of an in-flight batch survives the withdrawal; later fetches of
old emails only move the anonymous counters. Idempotent: a repeated POST changes
nothing and records no second event. The link never expires, like the emails carrying it.
"""

from __future__ import annotations

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from service.db import retry
from service.db.queries import queries
from service.events import queue as events
from service.privacy.evidence import Evidence
from service.web import clientinfo, pages, token_path

q = queries("tracking")


def _subscriber_id(request: Request) -> int | None:
    return token_path.verified(request, request.app.state.tokens.verify_tracking)


def _page(
    request: Request, state: str, status_code: int = 200, lang: str | None = None
) -> Response:
    return pages.render(request, "tracking.html", status_code=status_code, state=state, lang=lang)


async def _lang(request: Request, subscriber_id: int) -> str | None:
    """The subscriber's language for the page (None: the browser's)."""
    return await q.subscriber_lang.fetchval(request.app.state.pool, subscriber_id=subscriber_id)


async def withdraw(
    con: asyncpg.Connection,
    subscriber_id: int,
    *,
    ip: str | None,
    user_agent: str | None,
    consent_text_version: str,
    source: str = "tracking_link",
) -> bool | None:
    """Turn tracking off; True if it changed, False if already off, None if no subscriber."""
    async with con.transaction():
        row = await q.lock_subscriber.fetchrow(con, subscriber_id=subscriber_id)
        if row is None:
            return None
        changed = row["tracking_consent"] or row["tracking_withdrawn_at"] is None
        await q.withdraw.execute(con, subscriber_id=subscriber_id)
        if changed:
            await q.record_withdrawal.execute(
                con,
                subscriber_id=subscriber_id,
                ip=ip,
                user_agent=user_agent,
                version=consent_text_version,
                source=source,
            )
            await events.updated(con, subscriber_id)
        await q.delete_opens.execute(con, subscriber_id=subscriber_id)
        await q.forget_first_opens.execute(con, subscriber_id=subscriber_id)
        return changed


async def grant(
    con: asyncpg.Connection, subscriber_id: int, evidence: Evidence, method: str = "button"
) -> bool:
    """Consent to personal open tracking as the person gives it (the confirmation page, their
    own page): the one statement that grants it, with its evidence; it answers the
    sign-up's wish. The caller holds the row. True if it changed."""
    written = await q.grant.fetchval(
        con,
        subscriber_id=subscriber_id,
        ip=evidence.ip,
        user_agent=evidence.user_agent,
        source=evidence.source,
        version=evidence.consent_text_version,
        method=method,
    )
    if written:
        await events.updated(con, subscriber_id)
    return bool(written)


async def show(request: Request) -> Response:
    subscriber_id = _subscriber_id(request)
    if subscriber_id is None:
        return _page(request, "invalid", 400)
    return _page(request, "ask", lang=await _lang(request, subscriber_id))


async def post(request: Request) -> Response:
    subscriber_id = _subscriber_id(request)
    if subscriber_id is None:
        return _page(request, "invalid", 400)
    settings = request.app.state.settings
    lang = await _lang(request, subscriber_id)
    ip = clientinfo.reduce_ip(clientinfo.client_ip(request), settings.ip_mode)
    user_agent = clientinfo.user_agent(request)
    result = await retry.run(
        request.app.state.pool,
        lambda con: withdraw(
            con,
            subscriber_id,
            ip=ip,
            user_agent=user_agent,
            consent_text_version=settings.consent_text_version,
        ),
    )
    return _page(request, "gone" if result is None else "done", lang=lang)
