"""Classification cost per new user agent, over the labelled table of tests/data.

Each string of the table is classified once, uncached (the recorder's cache keeps the
strings already seen, so this is the cost of a user agent the service has not met),
in the order of the table; the figures are the mean and the 99th percentile, plus
the start-up cost of building the classifier. Also prints the issue-15 targets.

`python -m bench bench_classify`; `python -m bench bench_classify --base` also measures
the code this branch started from (BENCH_CLASSIFY_BASE, default main: its service/ as
files, in its own process, on this checkout's table), alternating with this code, so
that the machine's load hits both alike. The targets are printed whole and held out
(each source judged without the lists the service reads from it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# By file, not by package: another checkout's `service` (and `tests`) may be first on
# the path when its figures are taken.
_SPEC = importlib.util.spec_from_file_location(
    "ua_table", Path(__file__).resolve().parent.parent / "tests" / "ua_table.py"
)
ua_table = importlib.util.module_from_spec(_SPEC)
sys.modules["ua_table"] = ua_table  # its dataclasses look their module up
_SPEC.loader.exec_module(ua_table)


BASE = os.environ.get("BENCH_CLASSIFY_BASE", "main")
ROUNDS = 3
_MARK = "\nrows: "  # before the earlier process's JSON rows


def main() -> list[dict]:
    if "--base" not in sys.argv:
        return measure()
    from bench.bench_send_rate import earlier_tree

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as directory:
        tree, commit = earlier_tree(Path(directory), BASE)
        load = os.getloadavg()[0]
        for n in range(ROUNDS):
            earlier = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--json"],
                env={**os.environ, "PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"},
                cwd=tree,
                capture_output=True,
                text=True,
                check=True,
            )
            report, _, found = earlier.stdout.rpartition(_MARK)
            print(report if n == 0 else "", end="")
            for row in json.loads(found):
                rows.append({**row, "name": f"r{n + 1} before ({commit}): {row['name']}"})
            for row in measure(report=n == 0):
                rows.append({**row, "name": f"r{n + 1} this code: {row['name']}"})
    compiled = [r for r in rows if r["name"].endswith("rules compiled")]
    before = statistics.median(r["mean_us"] for r in compiled if " before " in r["name"])
    now = statistics.median(r["mean_us"] for r in compiled if " this code" in r["name"])
    rows.append(
        {
            "bench": "classify",
            "name": f"median of {ROUNDS} rounds, rules compiled: this code / before",
            "mean_us": f"{now} / {before}",
            "of_before": f"{now / before:.1%}",
            "target": "at most today's " + ("met" if now <= before * 1.05 else "NOT met"),
            "load_avg_1m": round(load, 2),
        }
    )
    return rows


def measure(report: bool = True) -> list[dict]:
    from service.tracking.classify import Classifier

    print(f"classifier from {Classifier.__module__} in {__import__('service').__file__}")
    started = time.perf_counter()
    classifier = Classifier.from_files()
    build = time.perf_counter() - started
    uncached = classifier._user_agent  # the uncached path, as for a string never seen
    rows = ua_table.load()
    # First pass: the regex engines also compile, on first use, the rules that match;
    # second pass: the same strings, still uncached, once every rule is compiled.
    passes = []
    for _ in range(2):
        costs = []
        for row in rows:
            started = time.perf_counter_ns()
            uncached(row.user_agent)
            costs.append(time.perf_counter_ns() - started)
        passes.append(sorted(costs))
    missed = "see round 1"
    if report:
        text, whole, held = ua_table.full_report(rows)
        print(text)
        missed = "; ".join(held.failures()) or "none"
    else:
        whole = ua_table.score(rows, lambda ua: _pair(classifier.user_agent(ua)))
    return [
        {
            "bench": "classify",
            "name": name,
            "strings": len(costs),
            "mean_us": round(statistics.fmean(costs) / 1000, 1),
            "p50_us": round(costs[len(costs) // 2] / 1000, 1),
            "p99_us": round(costs[int(len(costs) * 0.99)] / 1000, 1),
            "build_s": round(build, 2),
            "missed_whole": "; ".join(whole.failures()) or "none",
            "missed_held_out": missed,
        }
        for name, costs in zip(
            ("per new user agent, first pass", "per new user agent, rules compiled"),
            passes,
            strict=True,
        )
    ]


def _pair(found) -> tuple[str | None, str | None]:
    return found.client, found.machine_reason


if __name__ == "__main__":
    if "--json" in sys.argv:  # the earlier code's process of a --base run
        print(_MARK + json.dumps(measure()))
    else:
        for row in main():
            print(row)
