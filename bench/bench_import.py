"""Importing an existing list: 1,000,000 NDJSON lines through `service.admin.importer.run` (the
endpoint's work: parsing and checking every line in a thread, chunk by chunk, while the
chunk before is COPYed into the staging table and written by one set-based statement, all
in one transaction), on its own PostgreSQL (fsync on). Half the lines carry consent
evidence, half do not (their confirmation jobs are queued); target < 60 s (issue 16).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from types import SimpleNamespace

import asyncpg

from service.admin import importer
from service.db import migrations
from service.settings import Settings

LINES = int(os.environ.get("BENCH_IMPORT_LINES", "1000000"))


def body(lines: int) -> bytes:
    out = []
    for i in range(lines):
        item: dict[str, object] = {"email": f"reader{i}@example.org", "name": f"Reader {i}"}
        if i % 2:
            item |= {"consented_at": "2024-03-01T10:00:00Z", "consent_source": "old tool"}
        out.append(json.dumps(item))
    return "\n".join(out).encode()


async def run() -> list[dict]:
    import pgserver

    load = os.getloadavg()
    data = body(LINES)
    with tempfile.TemporaryDirectory(prefix="bench-import-") as directory:
        server = pgserver.get_server(directory, cleanup_mode="delete")
        try:
            url = server.get_uri()
            con = await asyncpg.connect(url)
            await migrations.migrate(con)
            await con.close()
            settings = Settings(database_url=url, secret_keys=("k" * 40,))
            pool = await asyncpg.create_pool(url, min_size=1, max_size=2, command_timeout=3600)
            try:
                app = SimpleNamespace(state=SimpleNamespace(settings=settings, pool=pool))
                started = time.perf_counter()
                result = await importer.run(app, data)
                elapsed = time.perf_counter() - started
            finally:
                await pool.close()
        finally:
            server.cleanup()
    return [
        {
            "bench": "import",
            "name": "import NDJSON lines (parse beside COPY and one statement per chunk)",
            "lines": LINES,
            "mib": round(len(data) / 2**20, 1),
            "imported": result.imported,
            "pending": result.pending,
            "seconds": round(elapsed, 1),
            "per_second": round(LINES / elapsed),
            "target": "< 60 s " + ("met" if elapsed < 60 else "NOT met"),
            "load_avg_1m": round(load[0], 2),
        }
    ]


def main() -> list[dict]:
    return asyncio.run(run())


if __name__ == "__main__":
    for row in main():
        print(row)
