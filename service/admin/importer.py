"""`POST /admin/api/subscribers/import`: an existing list, one JSON object per line (NDJSON).

Each line: `email`, optional `name`, `consented_at` (ISO 8601 with a time zone) with
`consent_source` (where and how the person consented), `tracking` (they agreed to
open measurement), `topics` and `lang` (BCP 47: the language of their emails and pages). A line with consent evidence becomes an active subscriber, its
evidence recorded as a `confirm` consent event with method `import`, at `consented_at`,
with the source. A line without evidence becomes a pending subscriber who gets the
double opt-in email, as after a sign-up: a re-permission campaign, paced by giving the
confirmation jobs run times IMPORT_CONFIRM_RATE a second apart, so the outbox sends them
beside new sign-ups' confirmations and campaigns instead of before them all.

An address already on the list (active or pending) is left alone and counted as skipped,
as a sign-up leaves a subscriber alone; so is a repeat of an address earlier in the
file. An erased address is unknown to the service (erasure keeps nothing), so it is
imported like a new one. A malformed line is reported with its number and never stops
the others. The valid lines go in with COPY into a staging table (migration 112) and one set-based
statement per chunk of CHUNK_LINES lines, all in one transaction: the whole body is
imported or, on a database error, nothing of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import i18n
from service.admin.auth import require_admin
from service.db.queries import queries
from service.settings import Settings
from service.signup.fields import EMAIL_MAX, NAME_MAX, SOURCE_MAX, clean_name, has_control

log = logging.getLogger("newsletter.importer")
q = queries("importer")

FIELDS = frozenset(
    {"email", "name", "consented_at", "consent_source", "tracking", "topics", "lang"}
)
MAX_ERRORS = 1000  # reported in the answer; later ones are counted in skipped only
CHUNK_LINES = 100_000  # parsed while the chunk before is written
# A plain ASCII address whose normal form email-validator would give as it is (domain
# lower-cased): most of a list. Anything else goes through email-validator itself.
_PLAIN = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})"
)
_SPECIAL = frozenset(SPECIAL_USE_DOMAIN_NAMES)


def _special(domain: str) -> bool:
    """Whether email-validator would treat the domain as special-use (a suffix match)."""
    labels = domain.split(".")
    return any(".".join(labels[i:]) in _SPECIAL for i in range(len(labels)))


class LineError(ValueError):
    pass


@dataclass(frozen=True)
class Row:
    line: int
    email: str
    name: str | None
    consented_at: datetime | None
    source: str | None
    tracking: bool
    topic_ids: tuple[int, ...] | None = None  # None: the line named no topic
    lang: str | None = None  # one of LANGUAGES; None: the first of them


@dataclass
class Result:
    imported: int = 0
    pending: int = 0
    skipped: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def error(self, line: int, message: str) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"line": line, "error": message})


def normal_address(raw: str) -> str:
    """The address as sign-up stores it (email-validator's normal form, strict)."""
    match = _PLAIN.fullmatch(raw)
    if match and len(raw) <= 254 and len(match.group(1)) <= 253:
        domain = match.group(1).lower()
        if not _special(domain):
            return raw[: match.start(1)] + domain
    try:
        return validate_email(raw, check_deliverability=False, strict=True).normalized
    except EmailNotValidError as exc:
        raise LineError(str(exc)) from None


def _topic_ids(raw: Any, topics: Mapping[str, int]) -> tuple[int, ...] | None:
    """A line's `topics` (a list of slugs) as topic ids; an unknown slug is the line's error."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(slug, str) for slug in raw):
        raise LineError("topics must be a list of topic slugs")
    unknown = sorted({slug for slug in raw if slug not in topics})
    if unknown:
        raise LineError(f"unknown topics: {', '.join(unknown)[:200]}")
    return tuple(sorted({topics[slug] for slug in raw}))


def parse_line(
    number: int, text: bytes, settings: Settings, topics: Mapping[str, int] | None = None
) -> Row:
    try:
        item = json.loads(text)
    except (ValueError, RecursionError):
        raise LineError("not a JSON object") from None
    if not isinstance(item, dict):
        raise LineError("not a JSON object")
    unknown = sorted(set(item) - FIELDS)
    if unknown:
        raise LineError(f"unknown field {str(unknown[0])[:40]!r}")
    raw = item.get("email")
    if not isinstance(raw, str) or not raw.strip():
        raise LineError("email is required")
    if len(raw) > EMAIL_MAX:
        raise LineError("email is too long")
    email = normal_address(raw.strip())
    raw_name = item.get("name")
    if isinstance(raw_name, str) and raw_name.isascii() and raw_name.isprintable():
        name = raw_name.strip()[: NAME_MAX + 1] or None  # printable ASCII: no control character
        if name and len(name) > NAME_MAX:
            raise LineError(f"The name may have at most {NAME_MAX} characters.")
    else:
        name, problem = clean_name(raw_name)
        if problem:
            raise LineError(problem)
    consented_at, source = item.get("consented_at"), item.get("consent_source")
    if consented_at is not None:
        if not isinstance(consented_at, str):
            raise LineError("consented_at must be an ISO 8601 date and time")
        try:
            at = datetime.fromisoformat(consented_at)
        except ValueError:
            raise LineError("consented_at must be an ISO 8601 date and time") from None
        if at.tzinfo is None:
            raise LineError("consented_at needs a time zone (e.g. Z or +01:00)")
        if at > datetime.now(UTC):
            raise LineError("consented_at is in the future")
        consented_at = at
        if not isinstance(source, str) or not source.strip():
            raise LineError("consent_source is required with consented_at")
    if source is not None:
        if not isinstance(source, str):
            raise LineError("consent_source must be text")
        source = source.strip()
        if len(source) > SOURCE_MAX or not (
            (source.isascii() and source.isprintable()) or not has_control(source)
        ):
            raise LineError(f"consent_source must be one line of at most {SOURCE_MAX} characters")
    tracking = item.get("tracking", False)
    if not isinstance(tracking, bool):
        raise LineError("tracking must be true or false")
    topic_ids = _topic_ids(item.get("topics"), topics or {})
    lang = _lang(item.get("lang"), settings)
    return Row(number, email, name, consented_at, source or None, tracking, topic_ids, lang)


def _lang(raw: object, settings: Settings) -> str | None:
    """A line's `lang` (BCP 47): its language when offered (LANGUAGES), else None (the
    first offered: a list from elsewhere may name languages this service does not speak,
    which is no reason to drop the person); a value that is no language tag is an error."""
    if raw is None or raw == "":
        return None
    lang = i18n.primary(raw) if isinstance(raw, str) else None
    if lang is None:
        raise LineError("lang must be a BCP 47 language tag such as de or pt-BR")
    return lang if lang in settings.languages else None


@dataclass
class Chunk:
    """One slice of the body, parsed: its valid new rows, its bad lines, its repeats."""

    rows: list[Row] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    repeats: int = 0


def parse_chunk(
    lines: list[bytes],
    start: int,
    settings: Settings,
    seen: set[str],
    topics: Mapping[str, int] | None = None,
) -> Chunk:
    """Lines [start, start + CHUNK_LINES): first occurrence of each address in the whole
    file (`seen` carries over from the chunks before)."""
    chunk = Chunk()
    for number, text in enumerate(lines[start : start + CHUNK_LINES], start=start + 1):
        if not text.strip():
            continue
        try:
            row = parse_line(number, text, settings, topics)
        except LineError as exc:
            chunk.errors.append((number, str(exc)))
            continue
        key = row.email.lower()
        if key in seen:
            chunk.repeats += 1
            continue
        seen.add(key)
        chunk.rows.append(row)
    return chunk


STAGING_COLUMNS = (
    "import_id",
    "line",
    "email",
    "name",
    "consented_at",
    "source",
    "tracking",
    "topic_ids",
    "lang",
)


def staging_csv(import_id: uuid.UUID, rows: list[Row], personal_tracking: bool) -> bytes:
    """The rows as COPY's CSV, made in the parsing thread so that the event loop only
    streams bytes (encoding records there took the GIL from the parser at every turn).
    None is an empty field, NULL to PostgreSQL; no value here is ever an empty string
    (parse_line turns empty names and sources into None), which CSV would need quoted."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for r in rows:
        consented_at = r.consented_at.isoformat() if r.consented_at else None
        tracking = "t" if r.tracking and personal_tracking else "f"
        topic_ids = None if r.topic_ids is None else "{" + ",".join(map(str, r.topic_ids)) + "}"
        writer.writerow(
            (
                str(import_id),
                r.line,
                r.email,
                r.name,
                consented_at,
                r.source,
                tracking,
                topic_ids,
                r.lang,
            )
        )
    return out.getvalue().encode()


def read_chunk(
    lines: list[bytes],
    start: int,
    settings: Settings,
    seen: set[str],
    topics: Mapping[str, int] | None = None,
) -> tuple[Chunk, uuid.UUID, bytes]:
    """A chunk parsed and made ready to COPY (see run)."""
    chunk = parse_chunk(lines, start, settings, seen, topics)
    import_id = uuid.uuid4()
    return chunk, import_id, staging_csv(import_id, chunk.rows, settings.tracking_mode == "consent")


class Writer:
    """Writes chunks in one transaction: COPY into the staging table, then the subscribers,
    their evidence and the confirmation jobs in one statement, and the staged rows deleted
    again before the next chunk (nothing staged is ever committed)."""

    def __init__(self, con: Any, settings: Settings, default_topics: list[int]) -> None:
        self.con, self.settings = con, settings
        self.default_topics = default_topics  # joined by an active line naming no topic
        self.pending = 0  # confirmation jobs queued so far: the pacing goes on from there

    async def store(self, import_id: uuid.UUID, staged: bytes, rows: int, result: Result) -> None:
        con = self.con
        await con.copy_to_table(
            "import_staging", source=io.BytesIO(staged), columns=STAGING_COLUMNS, format="csv"
        )
        # The planner's row counts for the joins. ANALYZE also takes the staging table's
        # SHARE UPDATE EXCLUSIVE lock, which conflicts with itself, until the commit: imports
        # run their inserts one after another, so two lists with addresses in common, in
        # different orders, never wait for each other's rows (a deadlock).
        await con.execute("ANALYZE import_staging")
        counts = await q.import_staged.fetchrow(
            con,
            import_id=import_id,
            consent_text_version=self.settings.consent_text_version,
            rate=self.settings.import_confirm_rate,
            paced_before=self.pending,
            default_topic_ids=self.default_topics,
        )
        await q.clear_staging.execute(con, import_id=import_id)
        self.pending += counts["pending"]
        result.imported += counts["imported"]
        result.pending += counts["pending"]
        result.skipped += rows - counts["imported"] - counts["pending"]


async def run(app: Any, body: bytes) -> Result:
    """One import (the API's and the dashboard's), all of it or nothing, in one transaction.

    Parsing is Python's work and writing PostgreSQL's: each chunk is parsed in a thread
    while the one before is being written, so the two overlap (and the event loop, which
    serves every other request of this process, is never held for a whole body)."""
    settings: Settings = app.state.settings
    result = Result()
    lines = body.split(b"\n")
    seen: set[str] = set()
    starts = range(0, len(lines), CHUNK_LINES)
    async with app.state.pool.acquire() as con:
        rows = await q.topics.fetch(con)
    topics = {row["slug"]: row["id"] for row in rows}
    default_topics = [row["id"] for row in rows if row["is_default"]]
    parsing = asyncio.ensure_future(asyncio.to_thread(read_chunk, lines, 0, settings, seen, topics))
    try:
        async with contextlib.AsyncExitStack() as stack:
            writer: Writer | None = None
            for start in starts:
                chunk, import_id, staged = await parsing
                if start + CHUNK_LINES < len(lines):
                    parsing = asyncio.ensure_future(
                        asyncio.to_thread(
                            read_chunk, lines, start + CHUNK_LINES, settings, seen, topics
                        )
                    )
                for number, message in chunk.errors:
                    result.error(number, message)
                result.skipped += chunk.repeats
                if not chunk.rows:
                    continue
                if writer is None:
                    con = await stack.enter_async_context(app.state.pool.acquire())
                    await stack.enter_async_context(con.transaction())
                    writer = Writer(con, settings, default_topics)
                await writer.store(import_id, staged, len(chunk.rows), result)
    finally:
        if not parsing.done():  # a failed write: let the parse in flight finish, unread
            await asyncio.wait([parsing])
    log.info(
        "subscribers imported",
        extra={"imported": result.imported, "pending": result.pending, "skipped": result.skipped},
    )
    return result


@require_admin
async def import_subscribers(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    limit = settings.import_max_bytes
    declared = request.headers.get("content-length", "")
    too_large = JSONResponse(
        {"error": "too_large", "detail": f"the body must be at most {limit} bytes"},
        status_code=413,
        headers={"Cache-Control": "no-store"},
    )
    if declared and (not declared.isdigit() or int(declared) > limit):
        return too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return too_large
    result = await run(request.app, bytes(body))
    return JSONResponse(
        {
            "imported": result.imported,
            "pending": result.pending,
            "skipped": result.skipped,
            "errors": result.errors,
        },
        headers={"Cache-Control": "no-store"},
    )
