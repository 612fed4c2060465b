"""Server-rendered HTML pages (jinja2, autoescaped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from service import i18n

# The templates and static files of every capability sit beside the packages, in service/.
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
FAVICON = STATIC_DIR / "favicon.ico"

# Pages carry no third-party content; scripts only from the service itself or with
# a per-response nonce.
CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Pages with the sign-up form when the bot check is on (ALTCHA_HMAC_KEY): the widget's
# script from the service, its challenge fetched from it, and its proof-of-work workers,
# which the widget starts from blob: URLs it makes of its own bundled code.
CSP_WITH_ALTCHA = CSP + "; script-src 'self'; connect-src 'self'; worker-src 'self' blob:"


def plural(count: int, word: str, words: str = "") -> str:
    """`word` for one, else `words` (default: `word` + "s"): "1 unsubscribe", "2 unsubscribes"."""
    return word if count == 1 else (words or word + "s")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=jinja2.select_autoescape(("html", "htm", "xml", "j2")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["plural"] = plural
    i18n.install(env)
    return env


def site_link(settings: Any) -> str:
    """Where the public pages' "back to the website" link leads, or "" for no link.

    SITE_URL when set; else the site of THANK_YOU_URL or CONFIRMED_URL (they are pages
    of the site the form is on); else the demo signup page when it is served.
    """
    if settings.site_url:
        return settings.site_url
    for url in (settings.confirmed_url, settings.thank_you_url):
        if url:
            parts = urlsplit(url)
            return f"{parts.scheme}://{parts.netloc}/"
    return "/" if settings.dev or settings.demo_page else ""


async def favicon(request: Request) -> Response:
    """Browsers ask every site for /favicon.ico; an icon instead of a 404 in every console."""
    return Response(
        FAVICON.read_bytes(),
        media_type="image/x-icon",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


def page_language(request: Request) -> str:
    """The language of a page about nobody in particular: the browser's choice among
    LANGUAGES (a page about a subscriber passes theirs to `render` as `lang`)."""
    offered = request.app.state.settings.languages
    return i18n.choose(None, request.headers.get("accept-language"), offered)


def render(
    request: Request,
    template: str,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    csp: str = CSP,
    **context: Any,
) -> HTMLResponse:
    env: jinja2.Environment = request.app.state.templates
    settings = request.app.state.settings
    context.setdefault("site_url", site_link(settings))
    # A subscriber's stored language stays theirs even if LANGUAGES shrank since.
    negotiated = context.get("lang") not in i18n.SHIPPED
    if negotiated:
        context["lang"] = page_language(request)
    html = env.get_template(template).render(**context)
    all_headers = {
        "Content-Language": context["lang"],
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    if negotiated:
        all_headers["Vary"] = "Accept-Language"
    all_headers.update(headers or {})
    return HTMLResponse(html, status_code=status_code, headers=all_headers)


def json_download(data: Any, filename: str) -> Response:
    """An access export as a JSON file to save (never cached, never sniffed as HTML)."""
    return Response(
        json.dumps(data, indent=2, default=str, ensure_ascii=False),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
