"""A small closed-loop HTTP/1.1 load generator, used when `wrk` is not installed.

`python -m bench.loadgen URL_PREFIX PATHS_FILE SECONDS CONNECTIONS` keeps CONNECTIONS
keep-alive connections busy for SECONDS, cycling through the paths (one per line), and
prints one JSON line: requests, errors, rps, p50_ms, p99_ms. Runs in its own process so
it never shares the service's event loop; uvloop when available.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

USER_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "Mozilla/5.0",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.4266; Pro)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
)


async def _worker(
    host: str, port: int, paths: list[str], offset: int, stop_at: float, latencies: list[float]
) -> int:
    errors = 0
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while time.perf_counter() < stop_at:
            path = paths[i % len(paths)]
            ua = USER_AGENTS[i % len(USER_AGENTS)]
            i += 7
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {ua}\r\n\r\n"
            started = time.perf_counter()
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()
    return errors


async def run(prefix: str, paths: list[str], seconds: float, connections: int) -> dict:
    parts = urlsplit(prefix)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            _worker(parts.hostname or "127.0.0.1", parts.port or 80, paths, n, stop_at, latencies)
            for n in range(connections)
        ),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - started
    errors = sum(r if isinstance(r, int) else 1 for r in results)
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000, 2)

    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": pct(0.50) if latencies else None,
        "p99_ms": pct(0.99) if latencies else None,
    }


def main(argv: list[str]) -> int:
    prefix, paths_file, seconds, connections = argv
    with open(paths_file, encoding="ascii") as handle:
        paths = [line.strip() for line in handle if line.strip()]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(prefix, paths, float(seconds), int(connections)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
