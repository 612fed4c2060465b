"""The dashboard's subscriber list: keyset pages in address order, a status filter and an
address prefix search, each row leading to the look-up (the person's data, the JSON
download) and to the erase action.

Filters and the page cursor travel in posted forms, never in a URL: an address prefix
and the cursor (the last address shown) are personal data, and URLs end up in logs.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.admin.dashboard.auth import Session, signed_in
from service.admin.dashboard.render import page, problem
from service.admin.dashboard.views import form_or_problem
from service.db.queries import queries

q = queries("subscriber_list")

PAGE_SIZE = 50
STATUSES = ("active", "pending")
MAX_ID = 2**63 - 1


LAST_CODE_POINT = chr(0x10FFFF)
SURROGATES = range(0xD800, 0xE000)  # not characters: PostgreSQL text never holds them


def prefix_successor(prefix: str) -> str | None:
    """The first key past every key starting with `prefix`, in code point order (the "C"
    collation of UTF-8 text); None when nothing comes after them (no prefix, or only
    the last code point). `%`, `_` and `\\` are plain characters here."""
    kept = prefix.rstrip(LAST_CODE_POINT)
    if not kept:
        return None
    following = ord(kept[-1]) + 1
    if following in SURROGATES:
        following = SURROGATES.stop
    return kept[:-1] + chr(following)


def search_bounds(prefix: str, after_key: str, after_id: int) -> tuple[str, int, str | None]:
    """A page's start (exclusive) and end for a prefix search: the cursor, raised to the
    prefix when it lies before it (ids start at 1, so `(prefix, 0)` comes before every
    match), and the prefix's successor."""
    if after_key < prefix:
        after_key, after_id = prefix, 0
    return after_key, after_id, prefix_successor(prefix)


def _filters(form: dict[str, str]) -> dict[str, Any] | str:
    """The list's filters and cursor from a posted form, or what is wrong with them."""
    status = form.get("status", "")
    if status not in ("", *STATUSES):
        return "Choose a status from the list."
    prefix = form.get("prefix", "").strip().lower()
    if len(prefix) > 320 or any(ord(c) < 32 or c == "\x7f" for c in prefix):
        return "The search must be at most 320 characters, without control characters."
    after_key = form.get("after_key", "")
    after_id = form.get("after_id", "0") or "0"
    if len(after_key) > 320 or not after_id.isdigit() or int(after_id) > MAX_ID:
        return "That page does not exist. Start again from the first page."
    return {
        "status": status,
        "prefix": prefix,
        "after_key": after_key.lower(),
        "after_id": int(after_id),
    }


# One statement per combination of filters, each bounded by an index in a generic plan
# too (sql/queries/subscriber_list.sql): (one status?, a prefix?) -> statement.
STATEMENTS = {
    (False, False): q.list_subscribers,
    (True, False): q.list_subscribers_in_status,
    (False, True): q.search_subscribers,
    (True, True): q.search_subscribers_in_status,
}


async def fetch_page(con: Any, filters: dict[str, Any], limit: int) -> list[Any]:
    """Up to `limit` rows after the filters' cursor, in address order."""
    after_key, after_id, below = search_bounds(
        filters["prefix"], filters["after_key"], filters["after_id"]
    )
    page_of: dict[str, Any] = {"after_key": after_key, "after_id": after_id, "limit": limit}
    if below is not None:  # else no prefix, or nothing can follow it: no end
        page_of["below"] = below
    if filters["status"]:
        page_of["status"] = filters["status"]
    statement = STATEMENTS[bool(filters["status"]), below is not None]
    return await statement.fetch(con, **page_of)


async def _page(request: Request, session: Session, filters: dict[str, Any]) -> Response:
    async with request.app.state.pool.acquire() as con:
        rows = await fetch_page(con, filters, PAGE_SIZE + 1)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return page(
        request,
        "subscriber_list.html",
        csrf=session.csrf,
        rows=rows,
        more=more,
        next_key=rows[-1]["sort_key"] if more else "",
        next_id=rows[-1]["id"] if more else 0,
        first_page=not filters["after_key"] and not filters["after_id"],
        statuses=STATUSES,
        **{k: filters[k] for k in ("status", "prefix")},
    )


@signed_in
async def list_get(request: Request, session: Session) -> Response:
    return await _page(
        request, session, {"status": "", "prefix": "", "after_key": "", "after_id": 0}
    )


@signed_in
async def list_post(request: Request, session: Session) -> Response:
    form = await form_or_problem(request, session)
    if isinstance(form, Response):
        return form
    filters = _filters(form)
    if isinstance(filters, str):
        return problem(request, 400, filters, csrf=session.csrf)
    return await _page(request, session, filters)
