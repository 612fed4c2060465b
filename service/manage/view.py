"""The person's own view of what is stored about them, in words a person understands.

Built from the access export (`erasure.export_subscriber`, the same data the operator's
export and the JSON download hold), so a field added there shows up here too: known
keys get a plain-language title and column names, unknown ones their own key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.tracking.policy import personal_tracking

STATUS = {"active": "subscribed", "pending": "waiting for your confirmation"}
EVENTS = {
    "signup": "Sign-up form sent",
    "confirm": "Subscription confirmed",
    "tracking_granted": "Open tracking allowed",
    "tracking_withdrawn": "Open tracking stopped",
    "address_changed": "Address changed",
    "topic_joined": "Topic joined",
    "topic_left": "Topic left",
}
METHODS = {"button": "by pressing the button", "auto": "automatically when the page opened"}
EMAIL_KINDS = {
    "confirm": "confirmation of your subscription",
    "campaign": "newsletter",
    "welcome": "welcome to a topic",
    "manage_link": "link to this page",
    "address_confirm": "confirmation of your new address",
}

# key of the export -> (title, {column: label}); columns not listed are left out of the
# page (ids, internals) but stay in the download.
SECTIONS: dict[str, tuple[str, dict[str, str]]] = {
    "consent_events": (
        "Your consent, step by step",
        {
            "at": "When",
            "kind": "What",
            "topic": "Topic",
            "method": "How",
            "ip": "From IP address",
            "user_agent": "Browser",
            "source": "Page",
            "consent_text_version": "Text version",
        },
    ),
    "topics": (
        "The topics you receive",
        {"name": "Topic", "joined_at": "Since"},
    ),
    "opens": (
        "When you opened our emails",
        {
            "at": "When",
            "campaign_name": "Newsletter",
            "client": "Email program",
            "os": "System",
            "country": "Country",
            "ip": "IP address",
            "machine_reason": "Automatic fetch",
        },
    ),
    "deliveries": (
        "Newsletters we sent you",
        {
            "campaign_name": "Newsletter",
            "queued_at": "Queued",
            "sent_at": "Sent",
            "first_open_at": "First opened",
        },
    ),
    "queued_emails": ("Emails waiting to be sent", {"kind": "What", "run_at": "Due"}),
    "address_changes": (
        "Address change waiting for confirmation",
        {"new_email": "New address", "requested_at": "Requested"},
    ),
    "manage_links": (
        "Links to this page we emailed you",
        {"created_at": "Sent", "expires_at": "Expires", "used_at": "Opened"},
    ),
    "soft_bounces": (
        "Emails to you that came back undelivered for a while (kept a few days to tell a "
        "full mailbox from a closed one)",
        {"at": "When", "campaign_name": "Newsletter"},
    ),
    "held_refusals": (
        "Emails to you that your mail provider refused, being checked before we act on it",
        {"held_at": "When", "campaign_name": "Newsletter", "reason": "Code"},
    ),
    "rate_limits": (
        "Counters against abuse (emails to your address per day)",
        {"window_start": "Day", "hits": "Emails", "last_at": "Last"},
    ),
}


def when(value: Any) -> str:
    """An ISO time as "2026-12-02 01:55 UTC"."""
    if isinstance(value, datetime):
        value = value.isoformat()
    if isinstance(value, str) and len(value) >= 16 and value[10] == "T":
        return value[:16].replace("T", " ") + " UTC"
    return "" if value is None else str(value)


def _cell(column: str, value: Any) -> str:
    if value is None or value == "":
        return "\u2014"
    if column == "kind":
        return EVENTS.get(value) or EMAIL_KINDS.get(value) or str(value)
    if column == "method":
        return METHODS.get(value, str(value))
    if column.endswith("_at") or column in ("at", "window_start", "run_at"):
        return when(value)
    return str(value)


def subscription(
    subscriber: dict[str, Any], tracking_mode: str, withdrawn: bool = False
) -> list[tuple[str, str]]:
    """The subscriber row as label/value pairs; whether opens are measured as theirs is
    the pixel's own rule (service/tracking/policy.py), with or without consent."""
    rows = [
        ("Address", subscriber["email"]),
        ("Name", subscriber.get("name") or "\u2014"),
        ("Status", STATUS.get(subscriber["status"], subscriber["status"])),
        ("First signed up", when(subscriber.get("created_at"))),
        ("Latest sign-up form", when(subscriber.get("signup_at"))),
        ("Confirmation email sent", when(subscriber.get("confirm_sent_at")) or "\u2014"),
        ("Confirmed", when(subscriber.get("confirmed_at")) or "\u2014"),
    ]
    if subscriber.get("topics_requested"):
        rows.append(
            ("Topics asked for on the sign-up form", ", ".join(subscriber["topics_requested"]))
        )
    if tracking_mode != "off":
        measured = personal_tracking(
            tracking_mode, bool(subscriber.get("tracking_consent")), withdrawn
        )
        why = "with your consent" if tracking_mode == "consent" else "until you object"
        rows.append((f"Opens measured as yours ({why})", "yes" if measured else "no"))
        if subscriber.get("tracking_withdrawn_at"):
            rows.append(("Open tracking stopped", when(subscriber["tracking_withdrawn_at"])))
        if subscriber.get("tracking_requested"):
            rows.append(
                ("Asked on the sign-up form to have opens measured", "yes (not yet answered)")
            )
    return rows


def sections(export: dict[str, Any]) -> list[dict[str, Any]]:
    """Every list of the export as a titled table (empty ones say "None")."""
    found = []
    for key, value in export.items():
        if key == "subscriber" or not isinstance(value, list):
            continue
        title, columns = SECTIONS.get(key, (key.replace("_", " ").capitalize(), {}))
        if not columns:
            columns = {c: c.replace("_", " ") for row in value for c in row}
        found.append(
            {
                "id": key.replace("_", "-"),
                "title": title,
                "columns": list(columns.values()),
                "rows": [[_cell(c, row.get(c)) for c in columns] for row in value],
            }
        )
    return found
