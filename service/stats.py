"""Campaign statistics, read only from the anonymous aggregates.

Every number here comes from `campaigns` and `campaign_counts`, which hold no personal
data and are not touched by erasures, so the statistics of a campaign never change when
the people who opened it unsubscribe.

`unique_opens` counts the first open of each subscriber whose opens may be recorded
(TRACKING_MODE and their consent). Opens of subscribers who did not consent are counted
in `opens` (and the breakdowns) but cannot be deduplicated without keeping a per-person
mark, which is exactly what they did not consent to; `anonymous_opens` says how many
opens that concerns, so a reader can tell how complete `unique_opens` is.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.admin_auth import require_admin
from service.queries import queries


def _breakdown(rows: list[asyncpg.Record], key_name: str) -> list[dict[str, Any]]:
    items = [
        {
            key_name: row["key"],
            "opens": row["opens"],
            "machine_opens": row["machine_opens"],
            "human_opens": row["opens"] - row["machine_opens"],
            "unique_opens": row["unique_opens"],
        }
        for row in rows
    ]
    items.sort(key=lambda item: (-item["opens"], item[key_name]))
    return items


async def campaign_stats(con: asyncpg.Connection, campaign_id: int) -> dict[str, Any] | None:
    """The statistics of one campaign, or None if there is no such campaign."""
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
        "by_hour": [
            {
                "hour": int(row["key"]),
                "opens": row["opens"],
                "machine_opens": row["machine_opens"],
                "human_opens": row["opens"] - row["machine_opens"],
                "unique_opens": row["unique_opens"],
            }
            for row in hours
        ],
        "by_country": _breakdown(by_dimension.get("country", []), "country"),
        "by_client": _breakdown(by_dimension.get("client", []), "client"),
    }


@require_admin
async def stats_endpoint(request: Request) -> Response:
    """`GET /admin/api/campaigns/{id}/stats`."""
    campaign_id = request.path_params["campaign_id"]
    stats = None
    if 0 < campaign_id < 2**63:
        async with request.app.state.pool.acquire() as con:
            stats = await campaign_stats(con, campaign_id)
    if stats is None:
        return JSONResponse({"error": "not_found", "detail": "no such campaign"}, 404)
    return JSONResponse(stats, headers={"Cache-Control": "no-store"})
