"""`newsletter bounces`: the SMTP server BOUNCE_DOMAIN's MX points at.

It accepts a recipient only if it is a return path of ours with a valid token
(`{BOUNCE_LOCAL}+{token}@{BOUNCE_DOMAIN}`): every other address gets 550, so it relays
nothing and takes no mail for anyone. Messages are limited to BOUNCE_SMTP_MAX_BYTES
(552 above, RFC 1870 SIZE), idle sessions end after BOUNCE_SMTP_TIMEOUT, and a message
is acted on before the 250: when the database cannot be reached it answers 451, so the
sending system keeps the bounce and tries again later.

Sessions at once are limited (BOUNCE_SMTP_MAX_CONNECTIONS in all,
BOUNCE_SMTP_MAX_PER_PEER from one IP address): each may hold a message of
BOUNCE_SMTP_MAX_BYTES in memory, so one sender opening many connections could otherwise
exhaust the process. A connection over a limit gets `421` and is closed; a mail system
tries again later, as it does for any 4xx.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session

from service.bounces import intake, verp
from service.db import connections
from service.settings import Settings
from service.tokens import Tokens

log = logging.getLogger("newsletter.bounces")

MAX_RECIPIENTS = 20
DATABASE_ERRORS = (asyncpg.PostgresError, *connections.UNAVAILABLE)


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


class Sessions:
    """The sessions open now, in all and per peer IP (kept in memory, never logged)."""

    def __init__(self, max_total: int, max_per_peer: int) -> None:
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.total = 0
        self.per_peer: Counter[str] = Counter()

    def admit(self, peer: str) -> bool:
        if self.total >= self.max_total or self.per_peer[peer] >= self.max_per_peer:
            return False
        self.total += 1
        self.per_peer[peer] += 1
        return True

    def release(self, peer: str) -> None:
        self.total -= 1
        self.per_peer[peer] -= 1
        if self.per_peer[peer] <= 0:
            del self.per_peer[peer]


TOO_MANY = b"421 4.7.0 Too many connections, try again later\r\n"


class LimitedSMTP(SMTP):
    """aiosmtpd's SMTP session, admitted only within the `Sessions` limits."""

    def __init__(self, sessions: Sessions, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sessions = sessions
        self._peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._peer is not None or self.transport is not None:  # STARTTLS: same session
            super().connection_made(transport)
            return
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else "unknown"
        if not self._sessions.admit(peer):
            transport.write(TOO_MANY)  # type: ignore[attr-defined]
            transport.close()
            return
        self._peer = peer
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._peer is None:
            return  # refused: aiosmtpd never started this session
        self._sessions.release(self._peer)
        self._peer = None
        super().connection_lost(error)


class BounceServer:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, tokens: Tokens) -> None:
        self.handler = BounceHandler(pool, settings, tokens)
        self.settings = settings
        self.sessions = Sessions(
            settings.bounce_smtp_max_connections, settings.bounce_smtp_max_per_peer
        )
        self._server: asyncio.AbstractServer | None = None

    def _protocol(self) -> SMTP:
        return LimitedSMTP(
            self.sessions,
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


async def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Runs until SIGTERM or SIGINT, then stops taking connections and returns. `host`
    and `port` (`newsletter bounces --host H --port P`) override the settings."""
    import signal

    pool = await connections.create_pool(settings)
    server = BounceServer(pool, settings, Tokens(settings.secret_keys, settings.confirm_max_age))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        port = await server.start(host, port)
        log.info("bounce receiver listening", extra={"url": f"smtp://:{port}"})
        await stop.wait()
    finally:
        await server.stop()
        await pool.close()
