"""Campaign statistics, read only from the anonymous aggregates.

Every number here comes from `campaigns` and `campaign_counts`, which hold no personal
data and are not touched by erasures, so the statistics of a campaign never change when
the people who opened it unsubscribe.

`unique_opens` counts the first open *by the person* of each subscriber whose opens may be
recorded (TRACKING_MODE and their consent): a machine open (image proxy prefetch, scanner,
headless preview) never makes or spends one, so `unique_open_rate` counts people. Opens of subscribers who did not consent are counted
in `opens` (and the breakdowns) but cannot be deduplicated without keeping a per-person
mark, which is exactly what they did not consent to; `anonymous_opens` says how many
opens that concerns, so a reader can tell how complete `unique_opens` is.

No breakdown (country, client, hour) shows a bucket of fewer than STATS_MIN_BUCKET
opens: in a small list "1 open from Iceland at hour 37" can name a person to anyone who
knows the readers, although nothing personal is stored. Such buckets are merged into one
`other` bucket; totals stay exact. (The same idea as the minimum group sizes that
statistical offices and privacy-preserving analytics apply before publishing counts.)
"""

from __future__ import annotations

from typing import Any

import asyncpg

from service.bounces import stats as bounce_stats
from service.db.queries import queries

OTHER = "other"
_COUNTS = ("opens", "machine_opens", "human_opens", "unique_opens")


def _bucket(key_name: str, key: Any, opens: int, machine: int, unique: int) -> dict[str, Any]:
    return {
        key_name: key,
        "opens": opens,
        "machine_opens": machine,
        "human_opens": opens - machine,
        "unique_opens": unique,
    }


def merge_small(items: list[dict[str, Any]], key_name: str, minimum: int) -> list[dict[str, Any]]:
    """`items` without the buckets under `minimum` opens, plus one `other` bucket that
    adds them up (and any bucket already named `other`)."""
    kept = [i for i in items if i["opens"] >= minimum and i[key_name] != OTHER]
    merged = [i for i in items if i["opens"] < minimum or i[key_name] == OTHER]
    if merged:
        other = {key_name: OTHER, **{c: sum(i[c] for i in merged) for c in _COUNTS}}
        kept.append(other)
    return kept


def _breakdown(rows: list[asyncpg.Record], key_name: str, minimum: int) -> list[dict[str, Any]]:
    items = [
        _bucket(key_name, row["key"], row["opens"], row["machine_opens"], row["unique_opens"])
        for row in rows
    ]
    items.sort(key=lambda item: (-item["opens"], item[key_name]))
    return merge_small(items, key_name, minimum)


async def campaign_stats(
    con: asyncpg.Connection, campaign_id: int, min_bucket: int = 5
) -> dict[str, Any] | None:
    """The statistics of one campaign, or None if there is no such campaign; breakdown
    buckets under `min_bucket` opens merged into `other`."""
    q = queries("stats")
    campaign = await q.campaign.fetchrow(con, campaign_id=campaign_id)
    if campaign is None:
        return None
    by_dimension: dict[str, list[asyncpg.Record]] = {}
    for row in await q.counts.fetch(con, campaign_id=campaign_id):
        by_dimension.setdefault(row["dimension"], []).append(row)
    total = (by_dimension.get("total") or [None])[0]
    opens = total["opens"] if total else 0
    machine = total["machine_opens"] if total else 0
    unique = total["unique_opens"] if total else 0
    tracking = {row["key"]: row["opens"] for row in by_dimension.get("tracking", [])}
    hours = sorted(by_dimension.get("hour", []), key=lambda row: int(row["key"]))
    sent = campaign["sent"]
    return {
        "id": campaign["id"],
        "name": campaign["name"],
        "first_sent_at": campaign["first_sent_at"].isoformat()
        if campaign["first_sent_at"]
        else None,
        "recipients": campaign["recipients"],
        "sent": sent,
        "failed": campaign["failed"],
        "opens": opens,
        "unique_opens": unique,
        "machine_opens": machine,
        "human_opens": opens - machine,
        "personal_opens": tracking.get("personal", 0),
        "anonymous_opens": tracking.get("anonymous", 0),
        "unique_open_rate": round(unique / sent, 4) if sent else None,
        "machine_reasons": {row["key"]: row["opens"] for row in by_dimension.get("reason", [])},
        "by_hour": merge_small(
            [
                _bucket(
                    "hour", int(row["key"]), row["opens"], row["machine_opens"], row["unique_opens"]
                )
                for row in hours
            ],
            "hour",
            min_bucket,
        ),
        "by_country": _breakdown(by_dimension.get("country", []), "country", min_bucket),
        "by_client": _breakdown(by_dimension.get("client", []), "client", min_bucket),
        "min_bucket": min_bucket,
        # issue 19: delivered, bounces, complaints, rates and warnings
        "deliverability": await bounce_stats.deliverability(con, campaign_id, sent),
        # issue 24: the circuit breaker's pause and the relay's refusals by category
        "paused": {
            "at": campaign["paused_at"].isoformat(),
            "reason": campaign["paused_reason"],
        }
        if campaign["paused_at"]
        else None,
        "refusals": [dict(row) for row in await q.refusals.fetch(con, campaign_id=campaign_id)],
    }
