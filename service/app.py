"""The application factory: every route of the service in one list, one lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from service import db, health, pages
from service.observability import Metrics, ObservabilityMiddleware
from service.settings import Settings
from service.tokens import Tokens

log = logging.getLogger("newsletter.app")


def routes(settings: Settings) -> list[BaseRoute]:
    """Every HTTP route; the dev-only ones exist only in dev mode."""
    public: list[BaseRoute] = [
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
    ]
    if settings.dev:
        from service import devmode

        public += devmode.routes()
    return public


def create_app(settings: Settings) -> Starlette:
    """Build the app; nothing is shared between two apps built by two calls."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if settings.dev:
                from service import devmode

                await stack.enter_async_context(devmode.mail_catcher(app))
            app.state.pool = await db.create_pool(settings)
            stack.push_async_callback(app.state.pool.close)
            log.info("started")
            yield
            log.info("stopping")
        log.info("stopped")

    app = Starlette(
        routes=routes(settings),
        middleware=[Middleware(ObservabilityMiddleware, metrics=(metrics := Metrics()))],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.templates = pages.environment()
    app.state.tokens = Tokens(settings.secret_keys, settings.confirm_max_age)
    return app
