"""Bearer-token check for `/admin/api/*`, in constant time."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Endpoint = Callable[[Request], Awaitable[Response]]


def token_is_valid(presented: str, tokens: tuple[str, ...]) -> bool:
    """Compares against every configured token so timing says nothing about which matched."""
    presented_bytes = presented.encode()
    valid = False
    for token in tokens:
        valid |= hmac.compare_digest(presented_bytes, token.encode())
    return valid


def bearer(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def require_admin(endpoint: Endpoint) -> Endpoint:
    """Decorator for admin API endpoints: `401` unless a valid bearer token is presented."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        presented = bearer(request)
        tokens = request.app.state.settings.admin_tokens
        if presented is None or not tokens or not token_is_valid(presented, tokens):
            return JSONResponse(
                {"error": "unauthorized", "detail": "a valid admin bearer token is required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="newsletter-admin"'},
            )
        return await endpoint(request)

    return guarded
