"""Rendering of dashboard pages: the admin templates under a stricter CSP than the public pages."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from service.web import pages

# No script at all, styles only from the service's own stylesheet (no inline style),
# charts are inline SVG (markup, not script).
CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def page(
    request: Request,
    template: str,
    *,
    csrf: str = "",
    status_code: int = 200,
    csp: str = CSP,
    **context: Any,
) -> HTMLResponse:
    return pages.render(
        request,
        f"admin/{template}",
        status_code=status_code,
        csp=csp,
        headers={"X-Frame-Options": "DENY"},
        csrf=csrf,
        signed_in=bool(csrf),
        path=request.url.path,
        lang="en",  # the dashboard is in English only (docs/guides/languages.md)
        **context,
    )


def problem(request: Request, status: int, message: str, *, csrf: str = "") -> HTMLResponse:
    """An error page that says what happened and what to do."""
    return page(request, "problem.html", csrf=csrf, status_code=status, message=message)
