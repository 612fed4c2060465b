"""Reference endpoints for `make bench` only, mounted when BENCH_ENDPOINTS=true (never in
production): the same pixel answer with the naive design (one awaited INSERT per
request) and with no recording at all (the framework's ceiling).
"""

from __future__ import annotations

from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from service.pixel import TokenRoute, answer, request_ip, request_user_agent
from service.queries import queries
from service.tokens import InvalidToken


class NaiveInsert:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        try:
            claim = state.tokens.verify_pixel(scope["path_params"]["token"])
        except InvalidToken:
            await answer(send, with_body=True)
            return
        try:
            await queries("pixel").naive_insert_open.execute(
                state.pool,
                subscriber_id=claim.subscriber_id,
                campaign_id=claim.campaign_id,
                ip=request_ip(scope),
                user_agent=request_user_agent(scope),
            )
        finally:
            await answer(send, with_body=True)


class Ceiling:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            scope["app"].state.tokens.verify_pixel(scope["path_params"]["token"])
        except InvalidToken:
            pass
        await answer(send, with_body=True)


def routes() -> list[BaseRoute]:
    """Matched like the pixel (TokenRoute), so that all three take the same way in."""
    return [
        TokenRoute("/bench/naive/{token}.gif", NaiveInsert(), methods=["GET"]),
        TokenRoute("/bench/ceiling/{token}.gif", Ceiling(), methods=["GET"]),
    ]
