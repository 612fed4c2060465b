"""Add further public collections to the labelled user-agent table (issue 27).

The table of issue 15 drew on seven sources. These two were added so the rules can be
judged on strings they were not written against (see tests/data/SOURCES.md for the exact
versions):

- JayBizzle/Crawler-Detect `tests/data/user_agent/crawlers.txt`: the crawler strings of
  its test suite, every one a bot;
- the npm package `user-agents` (intoli), `dist/user-agents.json`: user agents of real
  browser traffic, every one a person (its ten thousand entries repeat about a
  thousand distinct strings: all of them are kept).

A string that the table already has is not added again; one the table labels the other
way (a person in one source, a machine in another) is left out as contested, and so is a
Crawler-Detect string that device-detector's mail-client lists name (Crawler-Detect
flags every non-browser, mail clients such as Outlook for iOS and Airmail included;
for a pixel they are people).

    python tests/ua_sources.py CRAWLERS_TXT COMMIT USER_AGENTS_JSON VERSION
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.ua_table import MACHINES, TABLE

CRAWLER_DETECT = "JayBizzle/Crawler-Detect@{}:tests/data/user_agent/crawlers.txt"
NPM_USER_AGENTS = "npm:user-agents@{}:dist/user-agents.json"


def new_rows(crawlers: Path, commit: str, user_agents: Path, version: str) -> list[dict]:
    rows = []
    for line in crawlers.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(
                {
                    "kind": "bot",
                    "label": "crawler",
                    "source": CRAWLER_DETECT.format(commit[:12]),
                    "user_agent": line.strip(),
                }
            )
    for item in json.loads(user_agents.read_text(encoding="utf-8")):
        text = item["userAgent"].strip()
        if text:
            rows.append(
                {
                    "kind": "person",
                    "label": item["deviceCategory"],
                    "source": NPM_USER_AGENTS.format(version),
                    "user_agent": text,
                }
            )
    return rows


def main(argv: list[str]) -> int:
    crawlers, commit, user_agents, version = argv[1:5]
    with gzip.open(TABLE, "rt", encoding="utf-8", newline="") as handle:
        table = list(csv.DictReader(handle))
    machine = {r["user_agent"]: r["kind"] in MACHINES for r in table}
    from service.tracking import ua_lists

    lists = ua_lists.matcher()
    added: dict[str, dict] = {}
    contested = 0
    for row in new_rows(Path(crawlers), commit, Path(user_agents), version):
        text, is_machine = row["user_agent"], row["kind"] in MACHINES
        if text in added:
            continue
        if text in machine:
            contested += machine[text] != is_machine
            continue
        found = lists(text) if is_machine else None
        if found is not None and found.kind == "client":
            contested += 1
            continue
        added[text] = row
    with (
        gzip.GzipFile(TABLE, "wb", mtime=0) as raw,
        io.TextIOWrapper(raw, encoding="utf-8", newline="") as out,
    ):
        writer = csv.DictWriter(out, ["kind", "label", "source", "user_agent"])
        writer.writeheader()
        writer.writerows([*table, *added.values()])
    print(f"added {len(added)}, contested left out {contested}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
