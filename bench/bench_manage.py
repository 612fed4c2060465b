"""`POST /manage` (the form for people who lost their emails): does the time of the answer
tell a subscribed address from an unknown one?

Both kinds are asked in alternating order (which comes first alternates too) through the real app (ASGI, in-process) on its
own embedded PostgreSQL, each request with an address of its own (so every subscribed
one queues its email job), with SIGNUP_MIN_DURATION at 0 (the raw difference) and at its
default 100 ms (the padding sign-up uses too). Reports medians, p90 and the ratio of
subscribed to unknown. The relay is unreachable: the jobs stay queued, nothing is sent.

    python -m bench bench_manage
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

import asyncpg
import httpx

from service.app import create_app
from service.db import migrations
from service.settings import Settings

KEY = "bench-secret-key-0123456789-abcdefghijklmnop"
PER_KIND = 300


async def measure(url: str, min_duration: float, offset: int) -> list[dict]:
    settings = Settings(
        database_url=url,
        smtp_url="smtp://127.0.0.1:9",
        public_url="http://bench.test",
        secret_keys=(KEY,),
        signup_min_duration=min_duration,
        rate_signup_per_ip_hour=1_000_000,
        rate_confirm_min_interval=0.0,
        outbox_poll_interval=3600.0,
        purge_interval=86400.0,
        log_level="error",  # the relay is down on purpose: its warnings are noise here
    )
    app = create_app(settings)
    times: dict[str, list[float]] = {"subscribed": [], "unknown": []}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench.test") as client:
            for n in range(offset, offset + PER_KIND):
                order = ("subscribed", "unknown") if n % 2 else ("unknown", "subscribed")
                for kind in order:
                    # The outbox worker (same process) handles the job a subscribed
                    # address queued: let it finish outside the timed part.
                    await asyncio.sleep(0.03)
                    email = f"{'known' if kind == 'subscribed' else 'nobody'}{n}@example.org"
                    started = time.perf_counter()
                    response = await client.post("/manage", data={"email": email})
                    times[kind].append(time.perf_counter() - started)
                    assert response.status_code == 200, response.status_code
    rows = []
    for kind, values in times.items():
        values.sort()
        rows.append(
            {
                "bench": "manage",
                "name": f"POST /manage {kind}, SIGNUP_MIN_DURATION={min_duration * 1000:g}ms",
                "median_ms": round(statistics.median(values) * 1000, 2),
                "p90_ms": round(values[int(len(values) * 0.9)] * 1000, 2),
            }
        )
    rows[0]["ratio_subscribed_to_unknown"] = round(rows[0]["median_ms"] / rows[1]["median_ms"], 3)
    return rows


async def run() -> list[dict]:
    import pgserver

    with tempfile.TemporaryDirectory(prefix="bench-manage-") as directory:
        server = pgserver.get_server(directory, cleanup_mode="delete")
        try:
            url = server.get_uri()
            con = await asyncpg.connect(url)
            try:
                await migrations.migrate(con)
                await con.execute(
                    "INSERT INTO subscribers (email, status, confirmed_at)"
                    " SELECT 'known' || n || '@example.org', 'active', now()"
                    " FROM generate_series(0, $1) AS n",
                    2 * PER_KIND,
                )
            finally:
                await con.close()
            rows = await measure(url, 0.0, 0)
            rows += await measure(url, 0.1, PER_KIND)
        finally:
            server.cleanup()
    return rows


def main() -> list[dict]:
    return asyncio.run(run())


if __name__ == "__main__":
    for row in main():
        print(row)
