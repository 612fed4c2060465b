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

It also refreshes the lists the service vendors (service/tracking/data/README.md) and
finds the list entries that make a person of the table a machine:

    python tests/ua_sources.py --refresh-isbot VERSION      # npm pack; node reads its list
    python tests/ua_sources.py --refresh-crs CHECKOUT TAG   # a coreruleset git checkout
    python tests/ua_sources.py --exclusions                 # appends to list_exclusions.json
"""

from __future__ import annotations

import collections
import csv
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tempfile
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


def refresh_isbot(version: str) -> None:
    """isbot's exported `list`, read by node from the package as npm publishes it."""
    from service.tracking import ua_lists

    with tempfile.TemporaryDirectory() as directory:
        subprocess.run(
            ["npm", "pack", f"isbot@{version}", "--pack-destination", directory],
            check=True,
            capture_output=True,
        )
        tarball = next(Path(directory).glob("isbot-*.tgz"))
        subprocess.run(["tar", "xzf", str(tarball), "-C", directory], check=True)
        script = "process.stdout.write(JSON.stringify(require(process.argv[1]).list))"
        listed = subprocess.run(
            ["node", "-e", script, str(Path(directory) / "package")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    document = json.loads(ua_lists.ISBOT_FILE.read_text(encoding="utf-8"))
    document.update(
        {
            "_source": f"npm package isbot {version} (omrilotan/isbot), its exported pattern list",
            "_tarball_sha256": digest,
            "version": version,
            "patterns": json.loads(listed),
        }
    )
    _write_json(ua_lists.ISBOT_FILE, document)


def refresh_crs(checkout: str, tag: str) -> None:
    """OWASP CRS's `rules/scanners-user-agents.data` at a tag: its phrases, less comments."""
    from service.tracking import ua_lists

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", checkout, *args], check=True, capture_output=True, text=True
        ).stdout

    text = git("show", f"{tag}:rules/scanners-user-agents.data")
    document = json.loads(ua_lists.CRS_FILE.read_text(encoding="utf-8"))
    document.update(
        {
            "_source": "OWASP CRS (coreruleset/coreruleset) rules/scanners-user-agents.data, "
            f"tag {tag}",
            "version": tag,
            "commit": git("rev-parse", f"{tag}^{{commit}}").strip(),
            "phrases": [
                line.strip()
                for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ],
        }
    )
    _write_json(ua_lists.CRS_FILE, document)
    (ua_lists.CRS_FILE.parent / "LICENSE.coreruleset").write_text(git("show", f"{tag}:LICENSE"))


def find_exclusions() -> int:
    """Entries of the lists read after the family rules that make a person of the table a
    machine, judged as the table judges each person (whole, and held out): appended to
    list_exclusions.json with the people they hit, until none is left. Returns how many."""
    from service.tracking import ua_lists
    from service.tracking.classify import Classifier
    from tests import ua_table

    people = [r for r in ua_table.load() if r.kind in ua_table.PEOPLE]
    contexts: dict[str, list] = {"": people}
    for row in people:
        if ua_table.source_of(row) in ua_lists.SOURCES:
            contexts.setdefault(ua_table.source_of(row), []).append(row)
    added = 0
    while True:
        ua_lists.exclusions.cache_clear()
        ua_lists.matcher.cache_clear()
        fired: dict[tuple[str, str], dict[str, ua_table.Row]] = {}
        for source, rows in contexts.items():
            leave_out = frozenset({source} - {""})
            now = Classifier.from_files(leave_out=leave_out)
            before = Classifier.from_files(leave_out=leave_out | set(ua_lists.LATE_SOURCES))
            lists = ua_lists.matcher(leave_out, late=True)
            for row in rows:
                ua = row.user_agent
                if now.user_agent(ua).machine_reason and not before.user_agent(ua).machine_reason:
                    found = lists(ua)
                    fired.setdefault((found.source, found.name), {})[ua] = row
        if not fired:
            return added
        document = json.loads(ua_lists.EXCLUSIONS_FILE.read_text(encoding="utf-8"))
        for (source, pattern), hits in fired.items():
            kinds = collections.Counter(row.kind.replace("_", " ") for row in hits.values())
            labels = sorted({row.label for row in hits.values()})
            counted = ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in kinds.most_common())
            why = f"fires on people of the table: {counted} ({'; '.join(labels[:6])}"
            why += "; …)" if len(labels) > 6 else ")"
            document.setdefault(source, []).append({"pattern": pattern, "why": why})
            print(source, pattern, why)
            added += 1
        _write_json(ua_lists.EXCLUSIONS_FILE, document)


def _write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--refresh-isbot"]:
        refresh_isbot(argv[2])
        return 0
    if argv[1:2] == ["--refresh-crs"]:
        refresh_crs(argv[2], argv[3])
        return 0
    if argv[1:2] == ["--exclusions"]:
        print(f"excluded {find_exclusions()} more")
        return 0
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
