"""The application factory: every route of the service in one list, one lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from service import health
from service.admin import api, dashboard, importer, topics_api
from service.bounces import imap, signatures, webhooks
from service.campaigns import schedule
from service.db import connections
from service.events import queue as events_queue
from service.i18n import N_
from service.manage import page, unsubscribe
from service.observability import Metrics, ObservabilityMiddleware, observed, route_template
from service.outbox import events as event_sender
from service.outbox import sender
from service.privacy import retention
from service.settings import Settings
from service.signup import botcheck, confirmation, subscribe
from service.tokens import Tokens
from service.tracking import consent, pixel, recorder
from service.web import pages, ratelimit

log = logging.getLogger("newsletter.app")


class App(Starlette):
    """Starlette, with a short way in for the hot path.

    A pixel request (GET or HEAD) is matched here and handed to its raw ASGI endpoint
    with only the metrics and access-log wrapper around it, skipping Starlette's error
    and exception middleware and the route list (a third of the per-request work in the
    profile). Its scope carries the same route object, so the route template, the
    metrics and the OpenAPI comparison are unchanged; anything else takes the ordinary
    stack (which also answers a POST to the pixel with 405).
    """

    hot_routes: tuple[pixel.TokenRoute, ...] = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path = scope["path"]
            for route in self.hot_routes:
                token = route.token(path)
                if token is not None:
                    scope["app"] = self
                    scope["route"] = route
                    scope["endpoint"] = route.endpoint
                    scope["path_params"] = {"token": token}
                    await observed(route.app, self.state.metrics, scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def routes(settings: Settings) -> list[BaseRoute]:
    """Every HTTP route; the dev-only ones exist only in dev mode."""
    public: list[BaseRoute] = [
        # First: the hot path, matched before any other route's pattern is tried.
        pixel.route(),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/favicon.ico", pages.favicon, methods=["GET"]),
        *subscribe.routes(settings),
        *botcheck.routes(settings),
        *confirmation.routes(),
        Route("/unsubscribe/{token}", unsubscribe.page, methods=["GET"]),
        Route(
            "/unsubscribe/{token}",
            unsubscribe.unsubscribe,
            methods=["POST"],
            max_body_size=settings.max_body_bytes,
        ),
        Route("/tracking/{token}", consent.show, methods=["GET"]),
        Route("/tracking/{token}", consent.post, methods=["POST"]),
        *page.routes(),
        Route("/admin/api/campaigns/{campaign_id:int}/stats", api.stats_endpoint, methods=["GET"]),
        Route("/admin/api/campaigns", api.list_campaigns, methods=["GET"]),
        Route("/admin/api/campaigns", api.create_campaign, methods=["POST"]),
        Route("/admin/api/campaigns/{campaign_id:int}", api.get_campaign, methods=["GET"]),
        Route("/admin/api/campaigns/{campaign_id:int}", api.edit_campaign, methods=["PATCH"]),
        Route(
            "/admin/api/campaigns/{campaign_id:int}/preview",
            api.preview_campaign,
            methods=["GET"],
        ),
        Route("/admin/api/campaigns/{campaign_id:int}/test", api.test_campaign, methods=["POST"]),
        Route(
            "/admin/api/campaigns/{campaign_id:int}/send",
            api.send_campaign,
            methods=["POST"],
        ),
        Route(
            "/admin/api/campaigns/{campaign_id:int}/send",
            api.unschedule_campaign,
            methods=["DELETE"],
        ),
        Route(
            "/admin/api/campaigns/{campaign_id:int}/resume",
            api.resume_campaign,
            methods=["POST"],
        ),
        Route(
            "/admin/api/campaigns/{campaign_id:int}/cancel",
            api.cancel_campaign,
            methods=["POST"],
        ),
        Route(
            "/admin/api/campaigns/{campaign_id:int}/recipients",
            api.campaign_recipients,
            methods=["GET"],
        ),
        *topics_api.routes(),
        Route("/admin/api/subscribers/import", importer.import_subscribers, methods=["POST"]),
        Route("/admin/api/subscribers/{email:path}", api.export_subscriber, methods=["GET"]),
        Route("/admin/api/subscribers/{email:path}", api.erase_subscriber, methods=["DELETE"]),
        Route(
            "/admin/api/subscribers/{email:path}",
            api.correct_subscriber,
            methods=["PATCH"],
        ),
    ]
    public.append(Route("/webhooks/{provider}", webhooks.receive, methods=["POST"]))  # issue 19
    public += dashboard.routes()
    if settings.dev:
        from service import devmode

        public += devmode.routes()
    elif settings.demo_page:
        from service import devmode

        public.append(Route("/", devmode.demo, methods=["GET"]))
    return public


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """Any endpoint that meets a lost database (db.UNAVAILABLE) answers 503 + Retry-After."""
    log.warning(
        "database unavailable",
        extra={"route": route_template(request.scope), "error": exc.__class__.__name__},
    )
    headers = {"Retry-After": connections.RETRY_AFTER, "Cache-Control": "no-store"}
    if request.url.path.startswith("/admin/api/") or "json" in request.headers.get("accept", ""):
        return JSONResponse({"error": "unavailable"}, status_code=503, headers=headers)
    return pages.render(request, "unavailable.html", status_code=503, headers=headers)


# What an error page says for the usual statuses; a reason the raising code gave is added.
_ERROR_WORDS = {
    404: (
        N_("Page not found"),
        N_(
            "There is no page at this address. If you followed a link from one of our emails, "
            "it may have been cut short: try copying the whole link into the address bar."
        ),
    ),
    405: (N_("Not allowed here"), N_("This page cannot be used that way.")),
    500: (N_("Something went wrong"), N_("We could not answer this. Please try again later.")),
}


def error_page(
    request: Request, status: int, detail: str = "", headers: dict | None = None
) -> Response:
    """An error as every public page looks (JSON for the admin API and JSON clients)."""
    phrase = HTTPStatus(status).phrase
    if request.url.path.startswith("/admin/api/") or "json" in request.headers.get("accept", ""):
        return JSONResponse({"error": detail or phrase}, status_code=status, headers=headers)
    title, message = _ERROR_WORDS.get(status, (phrase, ""))
    if detail and detail != phrase:  # the raising code's own reason, e.g. /dev/mail's
        message = f"{detail[0].upper()}{detail[1:]}."
    return pages.render(request, "error.html", status, headers, title=title, message=message)


async def http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths, wrong methods and the like: an HTML page like every other public
    page, not a bare "Not Found"."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    if exc.status_code == 404 and request.url.path.rstrip("/") == "/unsubscribe":
        return await unsubscribe.no_token(request)  # a link cut short before its token
    return error_page(request, exc.status_code, exc.detail, headers)


async def database_error(request: Request, exc: Exception) -> Response:
    """Any other database error is a bug: 500, logged with its class and SQLSTATE only.

    Not the message: PostgreSQL's DETAIL can quote the row's values (an address, an IP).
    """
    log.error(
        "database error",
        extra={
            "route": route_template(request.scope),
            "error": exc.__class__.__name__,
            "sqlstate": getattr(exc, "sqlstate", None),
        },
    )
    return error_page(request, 500)


async def database_interface_error(request: Request, exc: Exception) -> Response:
    """A query on a connection the server already ended is unavailable; the rest are bugs."""
    if connections.is_unavailable(exc):
        return await database_unavailable(request, exc)
    return await database_error(request, exc)


# Looked up along the exception's class hierarchy, the most specific first: the
# unavailable classes are subclasses of PostgresError and win over the catch-all.
# TimeoutError is a query that got no answer within DB_COMMAND_TIMEOUT (nothing else in
# a request path times out): behind PgBouncer a lost database looks like that, the query
# waiting for a server connection (k8s/postgres/pooler.yaml's query_wait_timeout is longer).
EXCEPTION_HANDLERS = {
    **{error: database_unavailable for error in (*connections.UNAVAILABLE, TimeoutError)},
    asyncpg.PostgresError: database_error,
    asyncpg.InterfaceError: database_interface_error,
    HTTPException: http_error,
}


# What one process does: "all" (`newsletter serve`: every page, the pixel, the outbox
# and retention), "web" (`serve --no-worker`: no outbox, no retention) or "worker"
# (`newsletter worker`: the outbox and retention, with only health and metrics over HTTP).
ROLES = ("all", "web", "worker")


def worker_routes() -> list[BaseRoute]:
    return [
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
    ]


def create_app(settings: Settings, role: str = "all") -> Starlette:
    """Build the app; nothing is shared between two apps built by two calls."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if settings.dev:
                from service import devmode

                await stack.enter_async_context(devmode.mail_catcher(app))
            app.state.pool = await connections.create_pool(settings)
            stack.push_async_callback(connections.close_pool, app.state.pool)
            await events_queue.sync_endpoints(app.state.pool, settings)  # EVENTS_URL
            if role != "worker":
                await stack.enter_async_context(recorder.running(app))
            if role != "web":
                await stack.enter_async_context(sender.running(app))
                await stack.enter_async_context(event_sender.running(app))
                await stack.enter_async_context(imap.running(app))  # the bounce mailbox
                await stack.enter_async_context(retention.running(app))
                await stack.enter_async_context(schedule.running(app))  # scheduled sends
            else:
                app.state.outbox = app.state.events = None
            log.info("started")
            yield
            log.info("stopping")
        log.info("stopped")

    app = App(
        routes=worker_routes() if role == "worker" else routes(settings),
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(ObservabilityMiddleware, metrics=(metrics := Metrics()))],
        lifespan=lifespan,
    )
    app.hot_routes = tuple(r for r in app.routes if isinstance(r, pixel.TokenRoute))
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.templates = pages.environment()
    app.state.templates.globals["altcha"] = bool(settings.altcha_hmac_key)  # the form's widget
    app.state.tokens = Tokens(
        settings.secret_keys, settings.confirm_max_age, settings.manage_link_max_age
    )
    app.state.day_keys = ratelimit.DayKeys()
    app.state.database_probe = health.DatabaseProbe()
    app.state.sns = signatures.SnsVerifier()  # SES webhooks' certificates, cached
    return app
