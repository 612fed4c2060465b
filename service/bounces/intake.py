"""One returned message, from the SMTP receiver or the mailbox: parsed, matched to the
email it is about, acted on."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import asyncpg

from service.bounces import actions, verp
from service.bounces.parse import IGNORE, Report, parse
from service.settings import Settings
from service.tokens import Tokens


def _date(raw: bytes) -> datetime | None:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("latin-1")
    for line in head.splitlines():
        if line.lower().startswith("date:"):
            try:
                when = parsedate_to_datetime(line[5:].strip())
                return when if when.tzinfo else when.replace(tzinfo=UTC)
            except (TypeError, ValueError):
                return None
    return None


async def targets(
    pool: asyncpg.Pool,
    settings: Settings,
    tokens: Tokens,
    raw: bytes,
    report: Report,
    deliveries: list[verp.Delivery] | None = None,
) -> list[actions.Target]:
    """The emails a message is about: the return paths it was sent to (`deliveries`, the
    SMTP receiver's envelope), else return paths quoted in it, else (no VERP) the
    addresses the report names, matched to what was sent to them before its Date."""
    found = deliveries or verp.deliveries_in(settings, tokens, raw.decode("latin-1"))
    if found:
        return [actions.Target(sid, cid) for sid, cid in found]
    at = _date(raw)
    result = []
    async with pool.acquire() as con:
        for address in report.recipients:
            target = await actions.target_by_address(con, address, at)
            if target is not None and target not in result:
                result.append(target)
    return result


async def process(
    pool: asyncpg.Pool,
    settings: Settings,
    tokens: Tokens,
    raw: bytes,
    deliveries: list[verp.Delivery] | None = None,
) -> tuple[Report, list[str]]:
    """The report and one outcome per email it is about ([] when it is not a bounce or
    names nobody we sent to)."""
    # Up to ~10 ms of CPU for a message every detector reads (bench/bench_bounces.py):
    # off the event loop, so the receiver keeps answering other sessions meanwhile.
    report = await asyncio.to_thread(parse, raw)
    if report.event == IGNORE:
        return report, []
    outcomes = []
    for target in await targets(pool, settings, tokens, raw, report, deliveries):
        outcomes.append(
            await actions.apply(pool, settings, target, report.event, report.source, report.reason)
        )
    return report, outcomes
