"""Topics as the operator manages them: checked fields, created, changed, deleted.

A topic's welcome message is a campaign of its own (sql/142_topics.sql), so that it has
the pixel, footer, headers and statistics of every campaign; the admin API checks its
templates with the campaign's rules and hands them here clean.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from service.db.queries import queries

q = queries("topics")

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
NAME_MAX = 200
DESCRIPTION_MAX = 2000
FIELDS = ("slug", "name", "description", "default", "welcome")


def _text(value: Any, max_len: int, *, required: bool, single_line: bool) -> tuple[Any, str]:
    """(clean value, error message or '')."""
    if value is None:
        return None, "is required" if required else ""
    if not isinstance(value, str):
        return None, "must be a string"
    value = value.strip()
    if required and not value:
        return None, "must not be empty"
    if len(value) > max_len:
        return None, f"must be at most {max_len} characters"
    if "\x00" in value or (single_line and any(c in value for c in "\r\n")):
        return None, "must be a single line of text"
    return value, ""


def validate_topic(payload: Any, *, creating: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """Clean fields (without `welcome`, which the caller checks as a campaign) and one
    message per bad field. Creating needs `slug` and `name`; a change may not rename the
    slug (it is the topic's name in links, forms and List-Id)."""
    if not isinstance(payload, dict):
        return {}, {"body": "must be a JSON object"}
    errors = {str(k)[:50]: "unknown field" for k in payload if k not in FIELDS}
    clean: dict[str, Any] = {}
    if creating:
        slug = payload.get("slug")
        if not isinstance(slug, str) or not SLUG.fullmatch(slug):
            errors["slug"] = "must be 1-63 lower-case letters, digits or dashes"
        else:
            clean["slug"] = slug
    elif "slug" in payload:
        errors["slug"] = "cannot be changed"
    if creating or "name" in payload:
        clean["name"], error = _text(payload.get("name"), NAME_MAX, required=True, single_line=True)
        if error:
            errors["name"] = error
    if creating or "description" in payload:
        description, error = _text(
            payload.get("description"), DESCRIPTION_MAX, required=False, single_line=False
        )
        clean["description"] = description or ""
        if error:
            errors["description"] = error
    if creating or "default" in payload:
        default = payload.get("default", False)
        if not isinstance(default, bool):
            errors["default"] = "must be true or false"
        clean["is_default"] = default is True
    return clean, errors


def topic_json(row: asyncpg.Record) -> dict[str, Any]:
    """A topic as the admin API shows it."""
    welcome = None
    if row["welcome_campaign_id"] is not None:
        welcome = {
            "campaign_id": row["welcome_campaign_id"],
            "subject": row["welcome_subject"],
            "html": row["welcome_html"],
            "text": row["welcome_text"],
        }
    return {
        "slug": row["slug"],
        "name": row["name"],
        "description": row["description"],
        "default": row["is_default"],
        "subscribers": row["subscribers"],
        "welcome": welcome,
    }


async def create(
    con: asyncpg.Connection, clean: dict[str, Any], welcome: dict[str, str] | None
) -> int | None:
    """The new topic's id, or None when the slug is taken."""
    async with con.transaction():
        topic_id = await q.insert_topic.fetchval(
            con,
            slug=clean["slug"],
            name=clean["name"],
            description=clean["description"],
            is_default=clean["is_default"],
        )
        if topic_id is not None and welcome is not None:
            await _set_welcome(con, topic_id, None, clean["slug"], welcome)
        return topic_id


async def update(
    con: asyncpg.Connection, slug: str, clean: dict[str, Any], welcome: dict[str, str] | None
) -> bool:
    """Changes the fields given; False when there is no such topic."""
    async with con.transaction():
        row = await q.update_topic.fetchrow(
            con,
            slug=slug,
            name=clean.get("name"),
            description=clean.get("description"),
            is_default=clean.get("is_default"),
        )
        if row is None:
            return False
        if welcome is not None:
            await _set_welcome(con, row["id"], row["welcome_campaign_id"], slug, welcome)
        return True


async def _set_welcome(
    con: asyncpg.Connection,
    topic_id: int,
    campaign_id: int | None,
    slug: str,
    welcome: dict[str, str],
) -> None:
    if campaign_id is not None:
        await q.update_welcome.execute(con, id=campaign_id, **welcome)
        return
    campaign_id = await q.insert_welcome.fetchval(
        con, name=f"Welcome: {slug}", topic_id=topic_id, **welcome
    )
    await q.set_welcome.execute(con, topic_id=topic_id, campaign_id=campaign_id)


async def delete(con: asyncpg.Connection, slug: str) -> bool:
    return await q.delete_topic.fetchval(con, slug=slug) is not None
