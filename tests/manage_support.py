"""Helpers of the subscriber's-page tests: tokens, fresh links through the real outbox
and SMTP sink, the data page's session."""

from __future__ import annotations

import re
import struct
import time

import asyncpg
import httpx

from service import tokens as tokens_module
from service.tokens import Tokens
from tests import people, support
from tests.signup_helpers import wait_until

TOKENS = Tokens((support.TEST_KEY,), 48 * 3600)
_LINK = re.compile(r"http://newsletter\.test(/manage/(?:link|address)/[A-Za-z0-9_-]+)")
_SESSION = re.compile(r'name="session" value="([^"]+)"')


def manage_path(subscriber_id: int) -> str:
    return f"/manage/{TOKENS.manage(subscriber_id)}"


def aged_token(purpose: str, subscriber_id: int, row_id: int, age: float) -> str:
    """A row token issued `age` seconds ago (as a link mailed that long ago carries)."""
    issued = int(time.time() - age)
    return TOKENS._seal(purpose, struct.pack(">QQI", subscriber_id, row_id, issued))


def link_in(message: support.Received) -> str:
    """The path of the fresh-link or address-confirmation link in an email's text part."""
    found = _LINK.search(message.part("plain"))
    assert found, message.part("plain")
    return found.group(1)


async def fresh_link(
    client: httpx.AsyncClient,
    smtp: support.SmtpSink,
    subscriber_id: int,
    email: str,
    db: asyncpg.Connection,
) -> str:
    """Asks for a fresh link on the footer link's page; the path mailed to `email`."""
    before = len(mails_to(smtp, email))
    response = await client.post(manage_path(subscriber_id), data={"action": "send_link"})
    assert response.status_code == 200, response.text
    await _wait(lambda: len(mails_to(smtp, email)) > before)
    # The outbox worker commits the link's row just after the relay took the email.
    await wait_until(lambda: no_jobs(db, "manage_link"))
    return link_in(mails_to(smtp, email)[-1])


def mails_to(smtp: support.SmtpSink, email: str) -> list[support.Received]:
    """Messages to `email`, whatever the case of its letters (relays get it normalised)."""
    return [m for m in smtp.messages if email.lower() in (r.lower() for r in m.recipients)]


async def open_data(client: httpx.AsyncClient, link: str) -> tuple[httpx.Response, str]:
    """Opens a fresh link with the button: the data page and its session secret."""
    response = await client.post(link, data={})
    assert response.status_code == 200, response.text
    return response, session_of(response)


def session_of(response: httpx.Response) -> str:
    found = _SESSION.search(response.text)
    assert found, "no session in the page"
    return found.group(1)


async def act(client: httpx.AsyncClient, session: str, action: str, **fields: str):
    return await client.post("/manage/me", data={"session": session, "action": action, **fields})


async def _wait(check, timeout: float = 10.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "no email arrived"
        await asyncio.sleep(0.02)


MANAGE_LINK = tokens_module.MANAGE_LINK
ADDRESS_CONFIRM = tokens_module.ADDRESS_CONFIRM


async def no_jobs(db: asyncpg.Connection, kind: str) -> bool:
    return not await db.fetchval("SELECT count(*) FROM outbox WHERE kind = $1", kind)


async def arranged_person(db: asyncpg.Connection, email: str, tag: str) -> people.Person:
    """A subscriber with everything the service can hold (people.add_person), whose
    arranged rate-limit row is an email sent an hour ago, so one more may go now."""
    campaign = await people.add_campaign(db)
    person = await people.add_person(db, None, email, tag, campaign)
    await db.execute("UPDATE rate_limits SET last_at = now() - interval '1 hour'")
    return person
