"""The person's own view of what is stored about them, in words a person understands.

Built from the access export (`erasure.export_subscriber`, the same data the operator's
export and the JSON download hold), so a field added there shows up here too: known
keys get a plain-language title and column names, unknown ones their own key.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from service import i18n
from service.i18n import N_
from service.tracking.policy import personal_tracking

STATUS = {"active": N_("subscribed"), "pending": N_("waiting for your confirmation")}
EVENTS = {
    "signup": N_("Sign-up form sent"),
    "confirm": N_("Subscription confirmed"),
    "tracking_granted": N_("Open tracking allowed"),
    "tracking_withdrawn": N_("Open tracking stopped"),
    "address_changed": N_("Address changed"),
    "topic_joined": N_("Topic joined"),
    "topic_left": N_("Topic left"),
}
METHODS = {"button": N_("by pressing the button"), "auto": N_("automatically when the page opened")}
EMAIL_KINDS = {
    "confirm": N_("confirmation of your subscription"),
    "campaign": N_("newsletter"),
    "welcome": N_("welcome to a topic"),
    "manage_link": N_("link to this page"),
    "address_confirm": N_("confirmation of your new address"),
}

# key of the export -> (title, {column: label}); columns not listed are left out of the
# page (ids, internals) but stay in the download.
SECTIONS: dict[str, tuple[str, dict[str, str]]] = {
    "consent_events": (
        N_("Your consent, step by step"),
        {
            "at": N_("When"),
            "kind": N_("What"),
            "topic": N_("Topic"),
            "method": N_("How"),
            "ip": N_("From IP address"),
            "user_agent": N_("Browser"),
            "source": N_("Page"),
            "consent_text_version": N_("Text version"),
        },
    ),
    "topics": (
        N_("The topics you receive"),
        {"name": N_("Topic"), "joined_at": N_("Since")},
    ),
    "opens": (
        N_("When you opened our emails"),
        {
            "at": N_("When"),
            "campaign_name": N_("Newsletter"),
            "client": N_("Email program"),
            "os": N_("System"),
            "country": N_("Country"),
            "ip": N_("IP address"),
            "machine_reason": N_("Automatic fetch"),
        },
    ),
    "deliveries": (
        N_("Newsletters we sent you"),
        {
            "campaign_name": N_("Newsletter"),
            "queued_at": N_("Queued"),
            "sent_at": N_("Sent"),
            "first_open_at": N_("First opened"),
        },
    ),
    "queued_emails": (N_("Emails waiting to be sent"), {"kind": N_("What"), "run_at": N_("Due")}),
    "address_changes": (
        N_("Address change waiting for confirmation"),
        {"new_email": N_("New address"), "requested_at": N_("Requested")},
    ),
    "manage_links": (
        N_("Links to this page we emailed you"),
        {"created_at": N_("Sent"), "expires_at": N_("Expires"), "used_at": N_("Opened")},
    ),
    "soft_bounces": (
        N_(
            "Emails to you that came back undelivered for a while (kept a few days to tell a "
            "full mailbox from a closed one)"
        ),
        {"at": N_("When"), "campaign_name": N_("Newsletter")},
    ),
    "held_refusals": (
        N_("Emails to you that your mail provider refused, being checked before we act on it"),
        {"held_at": N_("When"), "campaign_name": N_("Newsletter"), "reason": N_("Code")},
    ),
    "rate_limits": (
        N_("Counters against abuse (emails to your address per day)"),
        {"window_start": N_("Day"), "hits": N_("Emails"), "last_at": N_("Last")},
    ),
}


def when(value: Any) -> str:
    """An ISO time as "2026-12-02 01:55 UTC"."""
    if isinstance(value, datetime):
        value = value.isoformat()
    if isinstance(value, str) and len(value) >= 16 and value[10] == "T":
        return value[:16].replace("T", " ") + " UTC"
    return "" if value is None else str(value)


def _cell(column: str, value: Any, lang: str | None = None) -> str:
    if value is None or value == "":
        return "\u2014"
    if column == "kind":
        word = EVENTS.get(value) or EMAIL_KINDS.get(value)
        return i18n.gettext(lang, word) if word else str(value)
    if column == "method":
        return i18n.gettext(lang, METHODS[value]) if value in METHODS else str(value)
    if column.endswith("_at") or column in ("at", "window_start", "run_at"):
        return when(value)
    return str(value)


def subscription(
    subscriber: dict[str, Any],
    tracking_mode: str,
    withdrawn: bool = False,
    lang: str | None = None,
    language_name: str = "",
) -> list[tuple[str, str]]:
    """The subscriber row as label/value pairs in `lang`; whether opens are measured as
    theirs is the pixel's own rule (service/tracking/policy.py), with or without consent."""
    _ = functools.partial(i18n.gettext, lang)
    status = subscriber["status"]
    rows = [
        (_("Address"), subscriber["email"]),
        (_("Name"), subscriber.get("name") or "\u2014"),
        (_("Status"), _(STATUS[status]) if status in STATUS else status),
        (_("First signed up"), when(subscriber.get("created_at"))),
        (_("Latest sign-up form"), when(subscriber.get("signup_at"))),
        (_("Confirmation email sent"), when(subscriber.get("confirm_sent_at")) or "\u2014"),
        (_("Confirmed"), when(subscriber.get("confirmed_at")) or "\u2014"),
    ]
    if language_name:
        rows.append((_("Language"), language_name))
    if subscriber.get("topics_requested"):
        rows.append(
            (_("Topics asked for on the sign-up form"), ", ".join(subscriber["topics_requested"]))
        )
    if tracking_mode != "off":
        measured = personal_tracking(
            tracking_mode, bool(subscriber.get("tracking_consent")), withdrawn
        )
        label = (
            _("Opens measured as yours (with your consent)")
            if tracking_mode == "consent"
            else _("Opens measured as yours (until you object)")
        )
        rows.append((label, _("yes") if measured else _("no")))
        if subscriber.get("tracking_withdrawn_at"):
            rows.append((_("Open tracking stopped"), when(subscriber["tracking_withdrawn_at"])))
        if subscriber.get("tracking_requested"):
            rows.append(
                (
                    _("Asked on the sign-up form to have opens measured"),
                    _("yes (not yet answered)"),
                )
            )
    return rows


def sections(export: dict[str, Any], lang: str | None = None) -> list[dict[str, Any]]:
    """Every list of the export as a titled table in `lang` (empty ones say "None")."""
    found = []
    for key, value in export.items():
        if key == "subscriber" or not isinstance(value, list):
            continue
        title, columns = SECTIONS.get(key, (key.replace("_", " ").capitalize(), {}))
        if key in SECTIONS:
            title = i18n.gettext(lang, title)
            columns = {c: i18n.gettext(lang, label) for c, label in columns.items()}
        if not columns:
            columns = {c: c.replace("_", " ") for row in value for c in row}
        found.append(
            {
                "id": key.replace("_", "-"),
                "title": title,
                "columns": list(columns.values()),
                "rows": [[_cell(c, row.get(c), lang) for c in columns] for row in value],
            }
        )
    return found
