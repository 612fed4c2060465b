"""Classification cost per new user agent, over the labelled table of tests/data.

Each string of the table is classified once, uncached (the recorder's cache keeps the
strings already seen, so this is the cost of a user agent the service has not met),
in the order of the table; the figures are the mean and the 99th percentile, plus
the start-up cost of building the classifier. Also prints the issue-15 targets.

`python -m bench bench_classify`; against another checkout, for a before/after:
`cd OTHER && PYTHONPATH=OTHER python -m bench bench_classify` (the table is read from
this file's checkout when the other has none).
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
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


def main() -> list[dict]:
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
    score = ua_table.score(rows, lambda ua: _pair(classifier.user_agent(ua)))
    print(score.report())
    return [
        {
            "bench": "classify",
            "name": name,
            "strings": len(costs),
            "mean_us": round(statistics.fmean(costs) / 1000, 1),
            "p50_us": round(costs[len(costs) // 2] / 1000, 1),
            "p99_us": round(costs[int(len(costs) * 0.99)] / 1000, 1),
            "build_s": round(build, 2),
            "targets_missed": "; ".join(score.failures()) or "none",
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
    for row in main():
        print(row)
