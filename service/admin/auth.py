"""Admin token checks for `/admin/api/*` and the dashboard's sign-in: in constant time,
and limited per client IP across replicas.

A client whose failed attempts in the current ADMIN_AUTH_WINDOW reached
ADMIN_AUTH_FAILURES gets `429` with `Retry-After` until the window ends, before its
token is even compared, so a right guess after the limit looks like a wrong one. The
count lives in PostgreSQL (`rate_limits`, scope `admin`, keyed like every rate limit by
an HMAC of the IP under the day's key), so every replica enforces the same limit.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.web import clientinfo, ratelimit

Endpoint = Callable[[Request], Awaitable[Response]]
_NO_ADDRESS = "0.0.0.0"  # clients without an address share one count


@dataclass(frozen=True, slots=True)
class Attempt:
    """What presenting an admin token came to: admitted, refused, or `locked_for`
    seconds of lockout (the token was not even compared). Its truth is `admitted`
    alone, so `if attempt:` never lets a locked-out client in."""

    admitted: bool
    locked_for: int | None = None

    def __bool__(self) -> bool:
        return self.admitted


ADMITTED = Attempt(True)
REFUSED = Attempt(False)


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


async def check_token(request: Request, presented: str | None) -> Attempt:
    """Admitted for a valid token; refused for a wrong one (counted as a failure); or
    locked out, with the seconds to wait, when this client has failed too often."""
    state = request.app.state
    settings = state.settings
    ip = clientinfo.client_ip(request) or _NO_ADDRESS
    async with state.pool.acquire() as con:
        day_key = await state.day_keys.today(con)
        verdict = await ratelimit.admin_verdict(con, settings, day_key, ip)
        if not verdict.allowed:
            state.metrics.admin_auth.labels("limited").inc()
            return Attempt(False, verdict.retry_after)
        tokens = settings.admin_tokens
        if presented is not None and tokens and token_is_valid(presented, tokens):
            return ADMITTED
        await ratelimit.admin_failed(con, settings, day_key, ip)
    state.metrics.admin_auth.labels("refused").inc()
    return REFUSED


def require_admin(endpoint: Endpoint) -> Endpoint:
    """Decorator for admin API endpoints: `401` unless a valid bearer token is presented,
    `429` after too many failures from the client."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        attempt = await check_token(request, bearer(request))
        if attempt:
            return await endpoint(request)
        if attempt.locked_for is None:
            return JSONResponse(
                {"error": "unauthorized", "detail": "a valid admin bearer token is required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="newsletter-admin"'},
            )
        return JSONResponse(
            {"error": "too_many_attempts", "detail": "too many failed admin sign-ins"},
            status_code=429,
            headers={"Retry-After": str(attempt.locked_for)},
        )

    return guarded
