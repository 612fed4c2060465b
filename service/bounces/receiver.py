"""`newsletter bounces`: the SMTP server BOUNCE_DOMAIN's MX points at.

It accepts a recipient only if it is a return path of ours with a valid token
(`{BOUNCE_LOCAL}+{token}@{BOUNCE_DOMAIN}`): every other address gets 550, so it relays
nothing and takes no mail for anyone. Messages are limited to BOUNCE_SMTP_MAX_BYTES
(552 above, RFC 1870 SIZE), idle sessions end after BOUNCE_SMTP_TIMEOUT, and a message
is acted on before the 250: when the database cannot be reached it answers 451, so the
sending system keeps the bounce and tries again later.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session

from service import db
from service.bounces import intake, verp
from service.settings import Settings
from service.tokens import Tokens

log = logging.getLogger("newsletter.bounces")

MAX_RECIPIENTS = 20
DATABASE_ERRORS = (asyncpg.PostgresError, *db.UNAVAILABLE)


class BounceHandler:
    """aiosmtpd's handler hooks: RCPT checks the token, DATA processes the message."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, tokens: Tokens) -> None:
        self.pool = pool
        self.settings = settings
        self.tokens = tokens

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        if verp.delivery_of(self.settings, self.tokens, address) is None:
            return "550 5.1.1 No such recipient here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if not isinstance(raw, bytes):
            raw = str(raw).encode("utf-8", "surrogateescape")
        deliveries = []
        for address in envelope.rcpt_tos:
            delivery = verp.delivery_of(self.settings, self.tokens, address)
            if delivery is not None and delivery not in deliveries:
                deliveries.append(delivery)
        try:
            report, outcomes = await intake.process(
                self.pool, self.settings, self.tokens, raw, deliveries
            )
        except DATABASE_ERRORS as exc:
            log.warning("bounce deferred: database", extra={"error": exc.__class__.__name__})
            return "451 4.3.0 Temporary failure, try again later"
        except Exception as exc:  # a message that breaks the parser will not mend: take it
            log.error("bounce not processed", extra={"error": exc.__class__.__name__})
            return "250 2.6.0 Accepted"
        log.info(
            "bounce received",
            extra={
                "kind": report.event,
                "reason": report.reason,
                "source": report.source,
                "count": len(outcomes),
            },
        )
        return "250 2.0.0 OK"


class BounceServer:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, tokens: Tokens) -> None:
        self.handler = BounceHandler(pool, settings, tokens)
        self.settings = settings
        self._server: asyncio.AbstractServer | None = None

    def _protocol(self) -> SMTP:
        return SMTP(
            self.handler,
            hostname=self.settings.bounce_domain or None,
            data_size_limit=self.settings.bounce_smtp_max_bytes,
            timeout=self.settings.bounce_smtp_timeout,
            decode_data=False,
            enable_SMTPUTF8=True,
            ident="newsletter bounces",
        )

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Listens; returns the port (0 asks for a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            host=host or self.settings.bounce_smtp_host,
            port=self.settings.bounce_smtp_port if port is None else port,
        )
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then stops taking connections and returns."""
    import signal

    pool = await db.create_pool(settings)
    server = BounceServer(pool, settings, Tokens(settings.secret_keys, settings.confirm_max_age))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        port = await server.start()
        log.info("bounce receiver listening", extra={"url": f"smtp://:{port}"})
        await stop.wait()
    finally:
        await server.stop()
        await pool.close()
