"""`GET`/`POST /unsubscribe/{token}`: the footer link and RFC 8058 one-click.

`GET` only shows a page whose button POSTs: spam filters and link scanners fetch every
URI in a mail, and must not unsubscribe anyone. `POST` erases at once, whatever the body
(the mail client's `List-Unsubscribe=One-Click`, form-urlencoded or multipart, the
page's empty form, or nothing at all), answers `200` with a short page and never a
redirect (many clients turn a redirected POST into a GET). The token alone identifies
the subscriber: no cookie, no login, and it never expires.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from service.privacy import erasure
from service.web import pages, token_path

log = logging.getLogger("newsletter.unsubscribe")

ONE_CLICK = b"List-Unsubscribe=One-Click"


def _subscriber_id(request: Request) -> int | None:
    return token_path.verified(request, request.app.state.tokens.verify_unsubscribe)


def _invalid(request: Request) -> Response:
    return pages.render(request, "unsubscribe_invalid.html", status_code=400)


async def page(request: Request) -> Response:
    """The confirmation page; changes nothing."""
    subscriber_id = _subscriber_id(request)
    if subscriber_id is None:
        return _invalid(request)
    async with request.app.state.pool.acquire() as con:
        exists = await erasure.q.subscriber_email.fetchval(con, id=subscriber_id) is not None
    return pages.render(request, "unsubscribe.html" if exists else "unsubscribed.html")


async def unsubscribe(request: Request) -> Response:
    """Erases the subscriber; `200` also when they are already gone (idempotent)."""
    subscriber_id = _subscriber_id(request)
    if subscriber_id is None:
        return _invalid(request)
    body = await request.body()  # the route's max_body_size answers 413 past the limit
    channel = "one_click" if ONE_CLICK in body else "page"
    erased = await erasure.erase(request.app.state.pool, subscriber_id=subscriber_id)
    if erased:
        request.app.state.metrics.unsubscribes.labels(channel).inc()
        log.info("unsubscribed", extra={"kind": channel})
    return pages.render(request, "unsubscribed.html")
