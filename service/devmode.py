"""`newsletter dev` only: the mail catcher, the demo signup page and the caught-mail viewer.

The catcher is a real SMTP server (aiosmtpd) on loopback: the app sends to it through
its normal SMTP path, so dev exercises the same code as production. Caught mail is kept
as .eml files under `.newsletter/mail/` (the last 500), so it survives a restart.
The viewer also lists confirmation emails that the address limits held back, which a
newcomer would otherwise wait for in vain.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import itertools
import os
import re
import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from service.db.queries import queries
from service.settings import Settings
from service.topics import membership
from service.web import pages, ratelimit

if TYPE_CHECKING:
    from aiosmtpd.smtp import SMTP, Envelope, Session

KEEP_MESSAGES = 500
# The sender when MAIL_FROM is unset: PUBLIC_URL's host would give newsletter@127.0.0.1.
MAIL_FROM = "Dev Newsletter <newsletter@localhost>"
_URL = re.compile(r"https?://[^\s<>\"')]+")
_HEAD = re.compile(r"<head(\s[^>]*)?>", re.IGNORECASE)
# The open-tracking pixel's URL (service/tracking/pixel.py): fetching it records an open.
_PIXEL = re.compile(r"/o/[^/]+\.gif$")
q = queries("devmode")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on `port` (a `newsletter dev` started before).

    SO_REUSEADDR as uvicorn sets it: a port left in TIME_WAIT is free, a listener is not.
    """
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class CaughtMail:
    id: int
    received: datetime
    sender: str
    recipients: list[str]
    message: email.message.EmailMessage
    links: list[str] = field(default_factory=list)

    @property
    def pixel_links(self) -> set[str]:
        """The links that are the tracking pixel: shown, not offered as links to click."""
        return {link for link in self.links if _PIXEL.search(link)}

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        return body.get_content() if body is not None else ""


class Mailbox:
    """The caught messages, newest first; kept as files in `directory` when given."""

    def __init__(self, directory: Path | None = None) -> None:
        self.messages: deque[CaughtMail] = deque(maxlen=KEEP_MESSAGES)
        self.directory = directory
        last = 0
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for path in sorted(directory.glob("*.eml"))[-KEEP_MESSAGES:]:
                mail_id = int(path.stem)
                received = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                self._keep(mail_id, received, path.read_bytes(), "", [])
                last = max(last, mail_id)
        self._ids = itertools.count(last + 1)

    def _keep(
        self, mail_id: int, received: datetime, raw: bytes, sender: str, recipients: list[str]
    ) -> CaughtMail:
        message: Any = email.message_from_bytes(raw, policy=email.policy.default)
        mail = CaughtMail(
            id=mail_id,
            received=received,
            sender=sender or str(message["From"] or ""),
            recipients=recipients or [str(message["To"] or "")],
            message=message,
        )
        text = mail.part("plain") + "\n" + mail.part("html")
        mail.links = list(dict.fromkeys(u.rstrip(".,;") for u in _URL.findall(text)))
        self.messages.appendleft(mail)
        return mail

    def add(self, envelope: Envelope) -> CaughtMail:
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        mail = self._keep(
            next(self._ids),
            datetime.now(UTC),
            raw,
            envelope.mail_from or "",
            list(envelope.rcpt_tos),
        )
        if self.directory is not None:
            path = self.directory / f"{mail.id:08d}.eml"
            path.write_bytes(raw)
            # The file's time is the received time after a restart: make it this one.
            stamp = mail.received.timestamp()
            os.utime(path, (stamp, stamp))
            for old in sorted(self.directory.glob("*.eml"))[:-KEEP_MESSAGES]:
                old.unlink(missing_ok=True)
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
    mailbox = Mailbox(Path(settings.dev_mail_dir) if settings.dev_mail_dir else None)
    app.state.mailbox = mailbox
    # Fresh-link requests the address allowance held back (service/manage/page.py notes
    # them here in dev): no row records them, and the viewer lists them with the sign-ups.
    app.state.held_links = deque(maxlen=50)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        # SMTPUTF8 as real servers offer it: an address like jörg@bücher.example is caught.
        lambda: SMTP(_Handler(mailbox), hostname="mail-catcher.localhost", enable_SMTPUTF8=True),
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
        csp=pages.CSP_WITH_ALTCHA if settings.altcha_hmac_key else pages.CSP,
        lang="en",  # dev and staging pages are English (docs/guides/languages.md)
        honeypot=settings.honeypot_field,
        tracking_mode=settings.tracking_mode,
        topic_choices=await membership.form_choices(request.app.state.pool),
    )


@dataclass(frozen=True)
class HeldBack:
    email: str
    signup_at: datetime
    reason: str
    next_at: datetime | None


def _why(settings: Settings, allowance: Any, signup_at: datetime) -> tuple[str, datetime | None]:
    """Which address limit held the email back, and until when, in words: the verdict is
    the database's own (`email_allowance_refusal`, the rule every claim applies). A claim
    made at the sign-up itself (the same `now()`) means the limits let the email go and
    sending it failed: no limit is blamed for that."""
    if allowance is not None and allowance["last_at"] >= signup_at:
        return (
            "the address limits let it go, but the mail server did not accept it "
            "(see the log for the outbox's reason)",
            None,
        )
    refusal = None if allowance is None else allowance["refusal"]
    if refusal == "per_day":
        return (
            f"{allowance['hits']} confirmation emails went to this address today, the most "
            f"RATE_CONFIRM_PER_DAY allows",
            allowance["window_start"] + timedelta(days=1),
        )
    if refusal == "min_interval":
        minutes = settings.rate_confirm_min_interval / 60
        return (
            f"the previous confirmation email went to this address less than {minutes:g} "
            "minutes before (RATE_CONFIRM_MIN_INTERVAL)",
            allowance["last_at"] + timedelta(seconds=settings.rate_confirm_min_interval),
        )
    return "no address limit applies: the email was not sent (see the log)", None


async def _address_keys(con: Any, settings: Settings, email: str) -> list[bytes]:
    """The keys the address's rate_limits rows can have, as service/web/ratelimit.py makes them."""
    return await ratelimit.address_keys(con, email)


async def held_back(request: Request) -> list[HeldBack]:
    """Pending sign-ups whose latest request got no email, with the limit that held it."""
    settings: Settings = request.app.state.settings
    today = int(time.time()) // ratelimit.DAY * ratelimit.DAY
    found = []
    async with request.app.state.pool.acquire() as con:
        for row in await q.held_back_confirmations.fetch(con):
            keys = await _address_keys(con, settings, row["email"])
            allowance = await q.address_allowance.fetchrow(
                con,
                keys=keys,
                window_start=today,
                per_day=settings.rate_confirm_per_day,
                min_interval=settings.rate_confirm_min_interval,
                signup_at=row["signup_at"],
            )
            reason, next_at = _why(settings, allowance, row["signup_at"])
            found.append(HeldBack(row["email"], row["signup_at"], reason, next_at))
    return found


async def mail_list(request: Request) -> Response:
    return pages.render(
        request,
        "dev_mail.html",
        lang="en",
        messages=list(request.app.state.mailbox.messages),
        held=await held_back(request),
        held_links=list(request.app.state.held_links),
        kept_in=request.app.state.settings.dev_mail_dir,
    )


def _mail(request: Request) -> CaughtMail:
    mail = request.app.state.mailbox.get(request.path_params["mail_id"])
    if mail is None:
        raise HTTPException(404, "no such message (the catcher keeps the last 500)")
    return mail


async def mail_item(request: Request) -> Response:
    mail = _mail(request)
    headers: list[tuple[str, Any]] = list(mail.message.items())
    return pages.render(
        request,
        "dev_mail_item.html",
        lang="en",
        mail=mail,
        mail_headers=headers,
        text=mail.part("plain"),
        has_html=bool(mail.part("html")),
        csp=pages.CSP.replace("default-src 'none'", "default-src 'none'; frame-src 'self'"),
    )


def open_links_on_top(html: str) -> str:
    """Links in the preview open the page itself, not inside the sandboxed frame (whose
    target pages refuse to be framed: frame-ancestors 'none')."""
    base = '<base target="_top">'
    head = _HEAD.search(html)
    if head is None:
        return base + html
    return html[: head.end()] + base + html[head.end() :]


async def mail_html(request: Request) -> Response:
    """The HTML part as the recipient's mail client would load it (images included)."""
    mail = _mail(request)
    return HTMLResponse(
        open_links_on_top(mail.part("html")),
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
