"""`newsletter dev` only: the mail catcher, the demo signup page and the caught-mail viewer.

The catcher is a real SMTP server (aiosmtpd) on loopback: the app sends to it through
its normal SMTP path, so dev exercises the same code as production.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import itertools
import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from service import pages

if TYPE_CHECKING:
    from aiosmtpd.smtp import SMTP, Envelope, Session

KEEP_MESSAGES = 500
_URL = re.compile(r"https?://[^\s<>\"')]+")


@dataclass
class CaughtMail:
    id: int
    received: datetime
    sender: str
    recipients: list[str]
    message: email.message.EmailMessage
    links: list[str] = field(default_factory=list)

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        return body.get_content() if body is not None else ""


class Mailbox:
    """The caught messages, newest first, in memory (dev only)."""

    def __init__(self) -> None:
        self.messages: deque[CaughtMail] = deque(maxlen=KEEP_MESSAGES)
        self._ids = itertools.count(1)

    def add(self, envelope: Envelope) -> CaughtMail:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        mail = CaughtMail(
            id=next(self._ids),
            received=datetime.now(UTC),
            sender=envelope.mail_from,
            recipients=list(envelope.rcpt_tos),
            message=message,  # type: ignore[arg-type]
        )
        text = mail.part("plain") + "\n" + mail.part("html")
        mail.links = list(dict.fromkeys(u.rstrip(".,;") for u in _URL.findall(text)))
        self.messages.appendleft(mail)
        return mail

    def get(self, mail_id: int) -> CaughtMail | None:
        return next((m for m in self.messages if m.id == mail_id), None)


class _Handler:
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.mailbox.add(envelope)
        return "250 Message accepted for delivery"


@contextlib.asynccontextmanager
async def mail_catcher(app: Starlette) -> AsyncIterator[Mailbox]:
    import asyncio

    from aiosmtpd.smtp import SMTP  # the `dev` extra; production never imports it

    settings = app.state.settings
    mailbox = Mailbox()
    app.state.mailbox = mailbox
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(_Handler(mailbox), hostname="mail-catcher.localhost"),
        host="127.0.0.1",
        port=settings.smtp.port,
    )
    try:
        yield mailbox
    finally:
        server.close()
        await server.wait_closed()


async def demo(request: Request) -> Response:
    settings = request.app.state.settings
    return pages.render(
        request,
        "demo.html",
        honeypot=settings.honeypot_field,
        tracking_mode=settings.tracking_mode,
    )


async def mail_list(request: Request) -> Response:
    return pages.render(request, "dev_mail.html", messages=list(request.app.state.mailbox.messages))


def _mail(request: Request) -> CaughtMail:
    mail = request.app.state.mailbox.get(request.path_params["mail_id"])
    if mail is None:
        raise HTTPException(404, "no such message (the catcher keeps them in memory only)")
    return mail


async def mail_item(request: Request) -> Response:
    mail = _mail(request)
    headers: list[tuple[str, Any]] = list(mail.message.items())
    return pages.render(
        request,
        "dev_mail_item.html",
        mail=mail,
        mail_headers=headers,
        text=mail.part("plain"),
        has_html=bool(mail.part("html")),
        csp=pages.CSP.replace("default-src 'none'", "default-src 'none'; frame-src 'self'"),
    )


async def mail_html(request: Request) -> Response:
    """The HTML part as the recipient's mail client would load it (images included)."""
    mail = _mail(request)
    return HTMLResponse(
        mail.part("html"),
        headers={
            "Content-Security-Policy": "sandbox allow-popups allow-top-navigation-by-user-activation;"
            " default-src 'none'; img-src * data:; style-src 'unsafe-inline'",
            "Cache-Control": "no-store",
        },
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/", demo, methods=["GET"]),
        Route("/dev/mail", mail_list, methods=["GET"]),
        Route("/dev/mail/{mail_id:int}", mail_item, methods=["GET"]),
        Route("/dev/mail/{mail_id:int}/html", mail_html, methods=["GET"]),
    ]
