"""A token read from a link's path (`/confirm/{token}`, `/manage/{token}`, …): one length
limit and one way to refuse it.

The limit is `tokens.MAX_LENGTH`, the one the token formats are checked against: an
oversized path is refused before any decoding. A refused token is logged by reason
(`InvalidToken.reason`, never the token) and the route answers its "invalid link" page.
The pixel (`tracking/pixel.py`) is a raw ASGI endpoint that answers an image whatever the
token; `Tokens.verify_pixel` applies the same limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from starlette.requests import Request

from service.tokens import MAX_LENGTH, InvalidToken

log = logging.getLogger("newsletter.tokens")

T = TypeVar("T")

__all__ = ["MAX_LENGTH", "read", "verified"]


def read(request: Request) -> str | None:
    """The path's token, or None when it is longer than any token the service issues."""
    token = request.path_params["token"]
    return token if len(token) <= MAX_LENGTH else None


def verified(request: Request, verify: Callable[[str], T]) -> T | None:
    """What the path's token names per `verify` (a `Tokens.verify_…` method), or None for
    a token that is oversized or does not verify."""
    token = read(request)
    if token is None:
        log.info("token refused", extra={"reason": "oversized", "route": _route(request)})
        return None
    try:
        return verify(token)
    except InvalidToken as exc:
        log.info("token refused", extra={"reason": exc.reason, "route": _route(request)})
        return None


def _route(request: Request) -> str:
    """The route's first path segment (`confirm`, `manage`, …): never the token."""
    return request.url.path.split("/")[1]
