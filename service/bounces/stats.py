"""Deliverability of a campaign, from the anonymous `bounce_counts` and the campaign's
own counters: delivered, bounced (hard, soft), complaints, their rates, and warnings at
the levels mailbox providers act on.

- `sent`: emails the relay accepted; `refused`: hard bounces at send time (RCPT 5xx),
  which were never accepted; `attempted` = sent + refused.
- `delivered` = sent minus the bounces reported after acceptance.
- bounce rate = (hard + soft) / attempted; complaint rate = complaints / delivered.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from service.db.queries import queries

q = queries("bounces")

COMPLAINT_WARNING = 0.001  # 0.1 %
BOUNCE_WARNING = 0.02  # 2 %
COMPLAINT_SOURCES = (
    "Gmail asks senders to keep the spam rate below 0.1 % and never reach 0.3 % "
    "(https://support.google.com/a/answer/81126); Yahoo asks for under 0.3 % "
    "(https://senders.yahooinc.com/best-practices/)."
)
BOUNCE_SOURCES = (
    "Amazon SES puts an account under review at a 5 % bounce rate "
    "(https://docs.aws.amazon.com/ses/latest/dg/faqs-enforcement.html); 2 % leaves room "
    "to clean the list before a provider acts."
)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 5) if whole else None


async def deliverability(con: asyncpg.Connection, campaign_id: int, sent: int) -> dict[str, Any]:
    totals = {
        row["event"]: row["count"]
        for row in await q.campaign_bounces.fetch(con, campaign_id=campaign_id)
    }
    reasons = [
        dict(row) for row in await q.campaign_bounce_reasons.fetch(con, campaign_id=campaign_id)
    ]
    refused = sum(r["count"] for r in reasons if r["event"] == "hard" and r["source"] == "smtp")
    hard, soft = totals.get("hard", 0), totals.get("soft", 0)
    complaints = totals.get("complaint", 0)
    attempted = sent + refused
    delivered = max(sent - (hard - refused) - soft, 0)
    bounce_rate = _rate(hard + soft, attempted)
    complaint_rate = _rate(complaints, delivered)
    warnings = []
    if complaint_rate is not None and complaint_rate > COMPLAINT_WARNING:
        warnings.append(
            {"kind": "complaints", "threshold": COMPLAINT_WARNING, "sources": COMPLAINT_SOURCES}
        )
    if bounce_rate is not None and bounce_rate > BOUNCE_WARNING:
        warnings.append({"kind": "bounces", "threshold": BOUNCE_WARNING, "sources": BOUNCE_SOURCES})
    return {
        "delivered": delivered,
        "bounced_hard": hard,
        "bounced_soft": soft,
        "refused_at_send": refused,
        "complaints": complaints,
        "bounce_rate": bounce_rate,
        "complaint_rate": complaint_rate,
        "reasons": reasons,
        "warnings": warnings,
    }
