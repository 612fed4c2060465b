"""Server-rendered HTML pages (jinja2, autoescaped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

# Pages carry no third-party content; scripts only from the service itself or with
# a per-response nonce.
CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=jinja2.select_autoescape(("html", "htm", "xml", "j2")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(
    request: Request,
    template: str,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    csp: str = CSP,
    **context: Any,
) -> HTMLResponse:
    env: jinja2.Environment = request.app.state.templates
    html = env.get_template(template).render(**context)
    all_headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    all_headers.update(headers or {})
    return HTMLResponse(html, status_code=status_code, headers=all_headers)
