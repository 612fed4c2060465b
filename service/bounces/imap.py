"""The bounce mailbox (BOUNCE_IMAP_URL): for relays that return bounces to an existing
mailbox, polled by the worker every BOUNCE_IMAP_INTERVAL.

Messages are read with `BODY.PEEK[]`, which sets no flag. A message is deleted (and
expunged) only once it was matched to an email of ours and acted on (service/bounces/
intake.py: with BOUNCE_DOMAIN, by a return-path token in its envelope-recipient headers
or `To:`); everything else (mail for people, auto-replies, bounces of other mail, a
report without a token whatever addresses it names, what no detector recognises) stays
exactly as it was, unread. Bounces hold the dead address, so the ones processed
are not kept. Within one process the highest UID seen is remembered (per UIDVALIDITY),
so mail left alone is read once per process, not on every poll. One replica polls at a
time (a PostgreSQL advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aioimaplib
import asyncpg
from starlette.applications import Starlette

from service import background
from service.bounces import intake
from service.db.queries import queries
from service.settings import Settings
from service.tokens import Tokens

log = logging.getLogger("newsletter.bounces")
q = queries("bounces")

BATCH = 200  # messages read per poll at most
_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_FETCHED_UID = re.compile(rb"UID (\d+)")


class MailboxError(Exception):
    """The server refused a command; the poll ends and is tried again later."""


@dataclass(frozen=True)
class Mailbox:
    host: str
    port: int
    tls: bool
    user: str
    password: str
    folder: str

    @classmethod
    def from_url(cls, url: str) -> Mailbox:
        parts = urlsplit(url)
        tls = parts.scheme == "imaps"
        return cls(
            host=parts.hostname or "",
            port=parts.port or (993 if tls else 143),
            tls=tls,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            folder=unquote(parts.path.lstrip("/")) or "INBOX",
        )


def _ok(response: aioimaplib.Response, command: str) -> aioimaplib.Response:
    if response.result != "OK":
        raise MailboxError(command)
    return response


def _close(client: aioimaplib.IMAP4) -> None:
    transport = getattr(client.protocol, "transport", None)
    if transport is not None:
        transport.close()


class MailboxPoller:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, tokens: Tokens) -> None:
        self.pool = pool
        self.settings = settings
        self.tokens = tokens
        self.mailbox = Mailbox.from_url(settings.bounce_imap_url)
        self._validity: bytes | None = None
        self._next_uid = 1

    async def _connect(self) -> aioimaplib.IMAP4:
        box = self.mailbox
        if box.tls:
            client = aioimaplib.IMAP4_SSL(
                box.host, box.port, timeout=30, ssl_context=ssl.create_default_context()
            )
        else:
            client = aioimaplib.IMAP4(box.host, box.port, timeout=30)
        try:
            await client.wait_hello_from_server()
            _ok(await client.login(box.user, box.password), "LOGIN")
        except BaseException:
            _close(client)
            raise
        return client

    async def poll_once(self) -> dict[str, int]:
        """Reads the new messages once: {'read': n, 'processed': n, 'left': n}."""
        counts = {"read": 0, "processed": 0, "left": 0}
        async with self.pool.acquire() as con, con.transaction():
            if not await q.mailbox_lock.fetchval(con):
                return counts  # another replica is polling
            client = await self._connect()
            try:
                await self._poll(client, counts)
            finally:
                with contextlib.suppress(Exception):
                    await client.logout()
                _close(client)
        return counts

    async def _poll(self, client: aioimaplib.IMAP4, counts: dict[str, int]) -> None:
        selected = _ok(await client.select(self.mailbox.folder), "SELECT")
        validity = next(
            (m.group(1) for line in selected.lines if (m := _UIDVALIDITY.search(bytes(line)))),
            None,
        )
        if validity != self._validity:  # a new mailbox, or its UIDs were renumbered
            self._validity, self._next_uid = validity, 1
        found = _ok(await client.uid_search(f"UID {self._next_uid}:*", charset=None), "SEARCH")
        uids = sorted(
            int(n) for line in found.lines[:1] for n in bytes(line).split() if n.isdigit()
        )
        uids = [uid for uid in uids if uid >= self._next_uid][:BATCH]
        done = []
        for uid in uids:
            counts["read"] += 1
            raw = await self._fetch(client, uid)
            self._next_uid = uid + 1
            if raw is None:
                counts["left"] += 1
                continue
            _report, outcomes = await intake.process(self.pool, self.settings, self.tokens, raw)
            if outcomes:
                done.append(uid)
                counts["processed"] += 1
            else:
                counts["left"] += 1
        if done:
            message_set = ",".join(str(uid) for uid in done)
            _ok(await client.uid("store", message_set, "+FLAGS.SILENT", r"(\Deleted)"), "STORE")
            if client.has_capability("UIDPLUS"):
                _ok(await client.uid("expunge", message_set), "EXPUNGE")
            else:  # also expunges what someone else marked deleted: that was their intent
                _ok(await client.expunge(), "EXPUNGE")

    async def _fetch(self, client: aioimaplib.IMAP4, uid: int) -> bytes | None:
        response = _ok(await client.uid("fetch", str(uid), "(UID BODY.PEEK[])"), "FETCH")
        for index, line in enumerate(response.lines):
            if isinstance(line, bytearray) and index > 0:
                header = bytes(response.lines[index - 1])
                match = _FETCHED_UID.search(header)
                if match is None or int(match.group(1)) == uid:
                    return bytes(line)
        return None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                counts = await self.poll_once()
                if counts["read"]:
                    log.info("bounce mailbox read", extra={"count": counts["processed"]})
            except Exception as exc:  # the server, the network or the database: next time
                log.warning("bounce mailbox poll failed", extra={"error": exc.__class__.__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.bounce_imap_interval)


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[None]:
    """Polls the bounce mailbox for the app's lifetime, when BOUNCE_IMAP_URL is set."""
    settings = app.state.settings
    if not settings.bounce_imap_url:
        yield
        return
    stop = asyncio.Event()
    poller = MailboxPoller(app.state.pool, settings, app.state.tokens)
    task = asyncio.create_task(poller.run(stop), name="bounce-mailbox")
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait({task}, timeout=10)  # a poll in flight finishes
        await background.stop(task)
