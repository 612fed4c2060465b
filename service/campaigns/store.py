"""Campaigns: the operator's templates, checked when stored, and queueing a send.

A campaign is stored once and rendered per recipient when its email is sent (see
`service.campaigns.mail`), so queueing is one `INSERT … SELECT`: 100,000 subscribers
queue in about a second, and nobody is mailed twice because `deliveries` has one row per
(campaign, subscriber).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import asyncpg
import jinja2
from jinja2.sandbox import SandboxedEnvironment

from service import i18n
from service.db.connections import LONG_COMMAND_TIMEOUT
from service.db.queries import queries
from service.topics import membership

q = queries("campaigns")

# Field -> (maximum length in characters, single line?)
FIELDS: dict[str, tuple[int, bool]] = {
    "name": (200, True),
    "subject": (300, True),
    "html": (500_000, False),
    "text": (200_000, False),
}
MAX_REQUEST_BYTES = 1_048_576


@dataclass(frozen=True)
class Variable:
    name: str
    meaning: str  # shown beside the dashboard's campaign form
    sample: str  # the value the check at creation and a sample preview render with


# The variables an operator's template may use: the one list the renderer fills
# (`service.campaigns.mail.template_variables`), the check at creation renders against
# (the samples) and the dashboard shows beside the campaign form.
VARIABLES: tuple[Variable, ...] = (
    Variable("name", "the subscriber's name, empty when they gave none", "Ada Lovelace"),
    Variable("email", "the subscriber's address", "ada@example.com"),
    Variable(
        "unsubscribe_url",
        "their unsubscribe link (the footer has it already)",
        "https://news.example.com/unsubscribe/sample",
    ),
    Variable(
        "manage_url",
        "their page to manage the subscription (the footer has it already)",
        "https://news.example.com/manage/sample",
    ),
    Variable(
        "tracking_url",
        "their link to withdraw from open tracking; empty where tracking does not apply",
        "https://news.example.com/tracking/sample",
    ),
    Variable("public_url", "the service's PUBLIC_URL", "https://news.example.com"),
)
SAMPLE_VARIABLES: dict[str, Any] = {v.name: v.sample for v in VARIABLES}
# The fields an edit may change (PATCH): those creation takes. One more creation field
# is one more name here and one more line in update_campaign (sql/queries/campaigns.sql).
EDITABLE = (*FIELDS, "topics", "translations")


@functools.cache
def template_environment(html: bool) -> SandboxedEnvironment:
    """The operator's templates run sandboxed (no attribute access to internals); HTML
    is autoescaped so a subscriber's name cannot inject markup; an unknown variable is
    an error instead of silently empty text."""
    return SandboxedEnvironment(
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


@functools.lru_cache(maxsize=64)
def compile_template(source: str, html: bool) -> jinja2.Template:
    """Compiled once per source text: a 10,000-recipient send renders, never re-parses."""
    return template_environment(html).from_string(source)


def _template_error(source: str, html: bool) -> str | None:
    try:
        compile_template(source, html).render(**SAMPLE_VARIABLES)
    except jinja2.TemplateSyntaxError as exc:
        return f"template error on line {exc.lineno}: {exc.message}"
    except jinja2.UndefinedError as exc:
        known = ", ".join(sorted(SAMPLE_VARIABLES))
        return f"template error: {exc.message} (variables: {known})"
    except jinja2.TemplateError as exc:  # sandbox violations and other render errors
        return f"template error: {exc.message or exc.__class__.__name__}"
    except Exception as exc:  # e.g. a ZeroDivisionError in an expression
        return f"template error: {exc.__class__.__name__}"
    return None


def validate_campaign(payload: Any, partial: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """Clean values and one message per bad field (empty when the campaign is good).
    `partial` (an edit): only the fields present are checked, and at least one must be."""
    if not isinstance(payload, dict):
        return {}, {"body": "must be a JSON object with name, subject, html and text"}
    errors: dict[str, str] = {}
    clean: dict[str, str] = {}
    for field in sorted(set(payload) - set(EDITABLE)):
        errors[str(field)[:50]] = "unknown field"
    if partial and not errors and not payload:
        errors["body"] = f"name at least one of {', '.join(EDITABLE)}"
    for field, (max_len, single_line) in FIELDS.items():
        if partial and field not in payload:
            continue
        value = payload.get(field)
        if value is None:
            errors[field] = "is required"
        elif not isinstance(value, str):
            errors[field] = "must be a string"
        elif not value.strip():
            errors[field] = "must not be empty"
        elif len(value) > max_len:
            errors[field] = f"must be at most {max_len} characters"
        elif "\x00" in value:
            errors[field] = "must not contain NUL characters"
        elif single_line and any(c in value for c in "\r\n"):
            errors[field] = "must be a single line"
        else:
            clean[field] = value.strip() if single_line else value
    for field, html in (("subject", False), ("html", True), ("text", False)):
        if field in clean and (message := _template_error(clean[field], html)):
            errors[field] = message
            del clean[field]
    return clean, errors


async def campaign_topics(con: asyncpg.Connection, payload: Any) -> tuple[list[int] | None, str]:
    """The topic ids a campaign payload names (`topics`: a list of slugs), None for none
    (the campaign goes to everyone), and the field's error message or ''."""
    slugs = payload.get("topics") if isinstance(payload, dict) else None
    if slugs is None:
        return None, ""
    if (
        not isinstance(slugs, list)
        or not slugs
        or len(slugs) > membership.SLUGS_MAX
        or not all(isinstance(slug, str) for slug in slugs)
    ):
        return None, f"must be a list of 1 to {membership.SLUGS_MAX} topic slugs"
    try:
        return await membership.resolve(con, slugs), ""
    except membership.UnknownTopics as exc:
        return None, f"unknown topics: {exc}"


def validate_translations(raw: Any) -> tuple[dict[str, dict[str, str]] | None, dict[str, str]]:
    """A campaign's `translations` (`{"de": {"subject", "html", "text"}}`, keys BCP 47 tags
    of shipped languages, stored by their primary subtag), each variant checked as the
    campaign's own templates are; None when absent. Errors are keyed
    `translations.{tag}.{field}`."""
    if raw is None:
        return None, {}
    if not isinstance(raw, dict) or len(raw) > len(i18n.SHIPPED):
        return None, {"translations": "must be an object of language tag -> {subject, html, text}"}
    clean: dict[str, dict[str, str]] = {}
    errors: dict[str, str] = {}
    for tag, variant in raw.items():
        where = f"translations.{str(tag)[:20]}"
        lang = i18n.primary(tag)
        if lang is None or lang not in i18n.SHIPPED:
            errors[where] = f"must be a language tag of {', '.join(i18n.SHIPPED)}"
            continue
        if lang in clean:
            errors[where] = f"names {lang} a second time"
            continue
        if not isinstance(variant, dict):
            errors[where] = "must be an object with subject, html and text"
            continue
        for field in sorted(set(variant) - {"subject", "html", "text"}):
            errors[f"{where}.{str(field)[:50]}"] = "unknown field"
        # The campaign's own rules for each field; the name is the campaign's.
        values, problems = validate_campaign({**variant, "name": "-"})
        errors.update({f"{where}.{field}": message for field, message in problems.items()})
        if not problems:
            clean[lang] = {field: values[field] for field in ("subject", "html", "text")}
    return (clean or None), errors


async def create_campaign(
    con: asyncpg.Connection,
    *,
    name: str,
    subject: str,
    html: str,
    text: str,
    topic_ids: list[int] | None = None,
    translations: dict[str, dict[str, str]] | None = None,
) -> int:
    return await q.insert_campaign.fetchval(
        con,
        name=name,
        subject=subject,
        html=html,
        text=text,
        topic_ids=topic_ids,
        translations=None if translations is None else json.dumps(translations),
    )


async def count_recipients(con: asyncpg.Connection, campaign_id: int | None = None) -> int:
    """Who a send would mail now: the active subscribers (of the campaign's topics, when
    it names some)."""
    if campaign_id is not None and await q.campaign_has_topics.fetchval(con, id=campaign_id):
        return await q.count_topic_recipients.fetchval(con, campaign_id=campaign_id)
    return await q.count_active.fetchval(con)


class CampaignNotFound(LookupError):
    pass


class WelcomeCampaign(Exception):
    """A topic's welcome message: the welcome mechanism sends it, to each person once as
    they join its topic (service/topics/membership.py), never a send to a list."""


async def queue_send(con: asyncpg.Connection, campaign_id: int) -> int:
    """Queue one email per active subscriber not mailed this campaign yet; returns how many.

    Raises CampaignNotFound, WelcomeCampaign (a topic's welcome is never a list send).
    Sends of the same campaign are serialised by an advisory lock, so two concurrent sends
    still queue each subscriber once; a subscriber erased while the statement runs is
    passed over (sql/queries/campaigns.sql, queue_campaign).
    Waiting for that lock and queueing a large list may outlast DB_COMMAND_TIMEOUT (the
    API's and the dashboard's pooled connections): those statements get the long timeout.
    """
    long = LONG_COMMAND_TIMEOUT
    async with con.transaction():
        welcome = await q.campaign_is_welcome.fetchval(con, id=campaign_id)
        if welcome is None:
            raise CampaignNotFound(campaign_id)
        if welcome:
            raise WelcomeCampaign(campaign_id)
        await q.lock_campaign_send.execute(con, time_limit=long, id=campaign_id)
        # A campaign naming topics: their subscribers only (each once); else everyone.
        topics = await q.campaign_has_topics.fetchval(con, id=campaign_id)
        queue = q.queue_topic_campaign if topics else q.queue_campaign
        queued = await queue.fetchval(con, time_limit=long, campaign_id=campaign_id)
        await q.add_recipients.execute(con, time_limit=long, campaign_id=campaign_id, queued=queued)
        if queued:
            await q.notify_outbox.execute(con)
        return queued


class SendStarted(Exception):
    """The campaign's first send has started (a recipient was queued): it stays as sent."""


async def update_campaign(
    con: asyncpg.Connection,
    campaign_id: int,
    changes: dict[str, Any],
) -> None:
    """Changes the fields named in `changes` (validated; `topics` as topic ids, None for
    everyone) until the first send starts. Raises CampaignNotFound, WelcomeCampaign
    (edited through its topic), SendStarted.

    The edit holds the send lock (`lock_campaign_send`, the lock of `queue_send` and of a
    scheduled send's claim) and then updates the row only while `first_sent_at` is
    unset, so an edit and a send of the same moment are ordered: the send queues the
    edited campaign, or the edit finds the send started. A scheduled send that has not
    started yet is edited (it sends what the campaign holds when it starts)."""
    async with con.transaction():
        await q.lock_campaign_send.execute(con, time_limit=LONG_COMMAND_TIMEOUT, id=campaign_id)
        values = {field: changes.get(field) for field in FIELDS}
        translations = changes.get("translations")
        updated = await q.update_campaign.fetchval(
            con,
            id=campaign_id,
            fields=sorted(changes),
            topic_ids=changes.get("topics"),
            translations=None if translations is None else json.dumps(translations),
            **values,
        )
        if updated is not None:
            return
        state = await q.edit_state.fetchrow(con, id=campaign_id)
    if state is None:
        raise CampaignNotFound(campaign_id)
    if state["welcome"]:
        raise WelcomeCampaign(campaign_id)
    raise SendStarted(campaign_id)


def campaign_json(row: asyncpg.Record) -> dict[str, Any]:
    """A campaign row as the admin API shows it (timestamps in ISO 8601)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        out[key] = value.isoformat() if hasattr(value, "isoformat") else value
    return out
