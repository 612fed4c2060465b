"""Per-request metrics and access log lines, labelled by route template only.

Raw paths carry tokens, so neither metrics nor logs ever see them: the label is the
matched route's template (`/o/{token}.gif`), or `unmatched`.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("newsletter.http")

# Routes hit by machines at high rates: their access lines are written at debug level.
QUIET_ROUTES = frozenset({"/o/{token}.gif", "/healthz", "/readyz", "/metrics"})


class Metrics:
    """The service's Prometheus metrics, in a registry per app (tests build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.emails_sent = Counter("emails_sent", "Emails accepted by SMTP", ["kind"], registry=r)
        self.emails_failed = Counter(
            "emails_failed", "Email attempts that failed", ["kind", "outcome"], registry=r
        )
        # Events for other systems, by receiver host (from the settings; never a path,
        # which may hold a token) and event type.
        self.events_sent = Counter(
            "events_sent", "Events a receiver accepted (2xx)", ["receiver", "type"], registry=r
        )
        self.events_failed = Counter(
            "events_failed",
            "Event deliveries that failed (retried)",
            ["receiver", "type"],
            registry=r,
        )
        self.events_dropped = Counter(
            "events_dropped", "Events dropped undelivered", ["receiver", "reason"], registry=r
        )
        # Issue 24: what relays answer, by category only (service/bounces/send_hooks.py).
        self.send_refusals = Counter(
            "send_refusals", "Relay refusals at send time", ["category"], registry=r
        )
        self.campaign_pauses = Counter(
            "campaign_pauses",
            "Campaigns this process paused (circuit breaker)",
            ["reason"],
            registry=r,
        )
        self.campaigns_paused = Gauge(
            "campaigns_paused",
            "Campaigns paused now, by reason (from the database)",
            ["reason"],
            registry=r,
        )
        self.signups = Counter("signups", "Sign-up requests by outcome", ["outcome"], registry=r)
        self.confirmations = Counter(
            "confirmations", "Confirmations by method", ["method"], registry=r
        )
        self.unsubscribes = Counter("unsubscribes", "Erasures by channel", ["channel"], registry=r)
        self.opens_recorded = Counter(
            "pixel_opens_recorded", "Opens written to the database", ["kind"], registry=r
        )
        self.opens_dropped = Counter(
            "pixel_opens_dropped",
            "Opens lost (queue full or database down)",
            ["reason"],
            registry=r,
        )
        self.pixel_batches = Histogram(
            "pixel_batch_size",
            "Opens per group commit",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000),
            registry=r,
        )
        self.purged = Counter("purged_rows", "Rows deleted by retention", ["what"], registry=r)
        self.admin_auth = Counter(
            "admin_auth_failures",
            "Admin token checks that failed (refused) or were not made (limited)",
            ["outcome"],
            registry=r,
        )
        self._per_route: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        """Counts and times one request; the labelled children are looked up once per key
        (`labels()` costs more than the increment, and this runs for every pixel)."""
        key = (method, route, status)
        children = self._per_route.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            self._per_route[key] = children
        children[0].inc()
        children[1].observe(seconds)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await observed(self.app, self.metrics, scope, receive, send)


async def observed(
    app: ASGIApp, metrics: Metrics, scope: Scope, receive: Receive, send: Send
) -> None:
    """Runs `app` for one HTTP request and counts, times and logs it by route template."""
    start = time.perf_counter()
    status = 500

    async def send_wrapper(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, receive, send_wrapper)
    finally:
        elapsed = time.perf_counter() - start
        route = route_template(scope)
        method = scope["method"]
        metrics.request_done(method, route, status, elapsed)
        level = logging.DEBUG if route in QUIET_ROUTES and status < 500 else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "request",
                extra={
                    "route": route,
                    "method": method,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
