"""`GET`/`POST /unsubscribe/{token}`: the footer link and RFC 8058 one-click.

`GET` only shows a page whose button POSTs: spam filters and link scanners fetch every
URI in a mail, and must not unsubscribe anyone. `POST` acts at once, whatever the body
(the mail client's `List-Unsubscribe=One-Click`, form-urlencoded or multipart, the
page's empty form, or nothing at all), answers `200` with a short page and never a
redirect (many clients turn a redirected POST into a GET). The token alone identifies
the subscriber: no cookie, no login, and it never expires.

The link of a topic campaign names the campaign too: it leaves that campaign's topics,
with evidence, and only when no topic is left is it the cancellation that erases
everything at once. Any other link erases at once. The page says which happened.
"""

from __future__ import annotations

import logging

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from service.db.queries import queries
from service.privacy import erasure
from service.privacy.evidence import Evidence
from service.topics import membership
from service.web import pages, token_path

log = logging.getLogger("newsletter.unsubscribe")
q = queries("topics")

ONE_CLICK = b"List-Unsubscribe=One-Click"


def _claim(request: Request) -> tuple[int, int | None] | None:
    """(subscriber id, campaign id of a topic campaign's link or None), or None."""
    return token_path.verified(request, request.app.state.tokens.verify_unsubscribe_any)


def _invalid(request: Request) -> Response:
    return pages.render(request, "unsubscribe_invalid.html", status_code=400)


async def no_token(request: Request) -> Response:
    """`/unsubscribe/` with the token cut off: the page that says how to go on."""
    return _invalid(request)


async def _topics_of(con: asyncpg.Connection, campaign_id: int | None) -> list[int] | None:
    """The campaign's topics when the link is a topic campaign's, else None (erase)."""
    if campaign_id is None:
        return None
    return await q.campaign_topic_ids.fetchval(con, id=campaign_id)


async def page(request: Request) -> Response:
    """The confirmation page; changes nothing."""
    claim = _claim(request)
    if claim is None:
        return _invalid(request)
    subscriber_id, campaign_id = claim
    async with request.app.state.pool.acquire() as con:
        exists = await erasure.q.subscriber_email.fetchval(con, id=subscriber_id) is not None
        lang = await q.subscriber_lang.fetchval(con, subscriber_id=subscriber_id)
        topic_ids = await _topics_of(con, campaign_id)
        leaving: list[str] = []
        staying: list[str] = []
        if exists and topic_ids is not None:
            leaving = [
                r["name"]
                for r in await q.topic_names.fetch(
                    con, subscriber_id=subscriber_id, topic_ids=topic_ids
                )
            ]
            every = await q.topic_names.fetch(con, subscriber_id=subscriber_id, topic_ids=None)
            staying = [r["name"] for r in every if r["name"] not in leaving]
    if not exists:
        return pages.render(request, "unsubscribed.html", left=[], staying=[])
    return pages.render(request, "unsubscribe.html", leaving=leaving, staying=staying, lang=lang)


async def unsubscribe(request: Request) -> Response:
    """Leaves the campaign's topics, or erases the subscriber; `200` also when they are
    already gone (idempotent)."""
    claim = _claim(request)
    if claim is None:
        return _invalid(request)
    subscriber_id, campaign_id = claim
    body = await request.body()  # the route's max_body_size answers 413 past the limit
    channel = "one_click" if ONE_CLICK in body else "page"
    state = request.app.state
    left: list[str] = []
    staying: list[str] = []
    async with state.pool.acquire() as con:
        # Read before an erasure takes it: the answer speaks the person's language.
        lang = await q.subscriber_lang.fetchval(con, subscriber_id=subscriber_id)
        topic_ids = await _topics_of(con, campaign_id)
        if topic_ids is not None:
            who = Evidence.of(request, state.settings, "unsubscribe")
            async with con.transaction():
                if await q.lock_subscriber.fetchval(con, id=subscriber_id) is not None:
                    names = await q.topic_names.fetch(
                        con, subscriber_id=subscriber_id, topic_ids=topic_ids
                    )
                    left = [r["name"] for r in names]
                    await membership.leave(con, subscriber_id, topic_ids, who)
                    remaining = await q.topic_names.fetch(
                        con, subscriber_id=subscriber_id, topic_ids=None
                    )
                    staying = [r["name"] for r in remaining]
    if staying:
        log.info("left topics", extra={"kind": channel, "count": len(left)})
        return pages.render(request, "unsubscribed.html", left=left, staying=staying, lang=lang)
    erased = await erasure.erase(state.pool, subscriber_id=subscriber_id, cause="unsubscribe")
    if erased:
        state.metrics.unsubscribes.labels(channel).inc()
        log.info("unsubscribed", extra={"kind": channel})
    return pages.render(request, "unsubscribed.html", left=[], staying=[], lang=lang)
