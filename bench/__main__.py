"""`make bench`: runs every `bench/bench_*.py` module's `main()` in one go.

Each `main()` returns a list of result rows (dicts with at least `bench` and `name`);
they are printed as a table and written to `bench/results.json` (a run of some benches,
`python -m bench bench_send bench_import`, replaces only their rows there).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _table(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines.append("  ".join("-" * widths[c] for c in columns))
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    only = {arg for arg in argv if not arg.startswith("--")}  # flags are read by the benches
    results: dict[str, list[dict]] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules([str(HERE)])):
        if not module.startswith("bench_") or (only and module not in only):
            continue
        started = time.monotonic()
        rows = importlib.import_module(f"bench.{module}").main()
        results[module] = rows
        print(f"\n== {module} ({time.monotonic() - started:.0f}s)\n{_table(rows)}", flush=True)
    path = HERE / "results.json"
    if only and path.exists():  # a partial run replaces its own benches' rows only
        results = {**json.loads(path.read_text()), **results}
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwritten to {HERE / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
