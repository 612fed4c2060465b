"""`newsletter serve` with two reference endpoints beside the pixel, for the pixel bench only.

- `/bench/naive/{token}.gif`: the same answer with the naive design, one awaited INSERT
  per request (bench/reference.sql);
- `/bench/ceiling/{token}.gif`: verifies the token and records nothing (the framework's
  ceiling).

The production package has no switch that mounts them: this module wraps the service's
own `create_app` and then runs the unchanged `serve` command, so the three endpoints run
in the same process, with the same settings, uvicorn options and way in (TokenRoute).

    python -m bench.reference_server serve --host 127.0.0.1 --port 8001 --no-migrate
"""

from __future__ import annotations

import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from service import app as app_module
from service.cli import main
from service.db.queries import parse
from service.settings import Settings
from service.tokens import InvalidToken
from service.tracking.pixel import TokenRoute, answer, request_ip, request_user_agent

QUERIES = parse((Path(__file__).parent / "reference.sql").read_text(), "reference.sql")


class NaiveInsert:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        try:
            claim = state.tokens.verify_pixel(scope["path_params"]["token"])
        except InvalidToken:
            await answer(send, with_body=True)
            return
        try:
            await QUERIES["naive_insert_open"].execute(
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


def create_app(settings: Settings, role: str = "all") -> Starlette:
    """The service's app, with the reference routes matched like the pixel."""
    app = _create_service_app(settings, role)
    references = [
        TokenRoute("/bench/naive/{token}.gif", NaiveInsert(), methods=["GET"]),
        TokenRoute("/bench/ceiling/{token}.gif", Ceiling(), methods=["GET"]),
    ]
    app.router.routes[1:1] = references
    app.hot_routes = (*app.hot_routes, *references)
    return app


_create_service_app = app_module.create_app

if __name__ == "__main__":
    # `serve` imports create_app from service.app when it starts the server.
    app_module.create_app = create_app
    sys.exit(main(sys.argv[1:]))
