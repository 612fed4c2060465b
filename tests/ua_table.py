"""Score a classifier against the labelled user-agent table (`tests/data/user_agents.csv.gz`).

Used by `tests/tracking/test_classify_table.py` (the targets) and by `bench/bench_classify.py` (the
cost). Runs on its own too, against whichever `service` package is importable, which is
how the figures before a change are taken: `cd OLD_CHECKOUT && python
NEW_CHECKOUT/tests/ua_table.py NEW_CHECKOUT/tests/data/user_agents.csv.gz`.
"""

from __future__ import annotations

import csv
import gzip
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "data" / "user_agents.csv.gz"
PEOPLE = ("person", "mail_client", "proxy")
MACHINES = ("http_library", "bot", "headless", "security_scanner")
NAMED_GROUPS = ("outlook", "applemail", "thunderbird", "gmail", "yahoomail")

# The targets of issue 15: share of machine opens per kind (people: at most; machines:
# at least) and share of mail clients named as their source names them.
PEOPLE_AS_MACHINES_MAX = 0.0005
MACHINE_MIN = {"http_library": 0.95, "bot": 0.90, "headless": 1.0, "security_scanner": 1.0}
NAMED_MIN = 0.90
NAMED_GROUP_MIN = 0.95

# Names that differ between the sources and us only in spelling.
ALIASES = {
    "mail": "applemail",
    "macoutlook": "outlook",
    "outlookios": "outlook",
    "outlookandroid": "outlook",
    "newoutlook": "outlook",
    "sparkdesktop": "spark",
    "sparkmail": "spark",
    "readdlespark": "spark",
    "kmail2": "kmail",
    "yahoo!mail": "yahoomail",
    "yahoomailapp": "yahoomail",
    "gmailimageproxy": "gmail",
    "googleimageproxy": "gmail",
    "yahoomailproxy": "yahoomail",
    "android": "androidmail",
    "androidemail": "androidmail",
    "gmailapp": "gmail",
    "outlookmobile": "outlook",
    "officemapiclient": "outlook",
    "officeoutlook": "outlook",
    "zdesktop": "zimbra",
}


def canonical(name: str | None) -> str:
    key = re.sub(r"[^a-z0-9!]", "", (name or "").lower().replace("microsoft", ""))
    return ALIASES.get(key, key)


@dataclass(frozen=True)
class Row:
    kind: str
    label: str
    source: str
    user_agent: str

    @property
    def expected_client(self) -> str:
        if self.kind == "proxy":
            return "gmail" if "GoogleImageProxy" in self.user_agent else "yahoomail"
        return canonical(self.label)


def load(path: Path = TABLE) -> list[Row]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return [Row(**r) for r in csv.DictReader(handle)]


@dataclass
class Score:
    total: dict[str, int] = field(default_factory=dict)
    machine: dict[str, int] = field(default_factory=dict)
    named: dict[str, int] = field(default_factory=dict)
    named_total: dict[str, int] = field(default_factory=dict)
    wrong: dict[str, list[tuple[str, str, str | None, str | None]]] = field(default_factory=dict)

    def rate(self, kinds: tuple[str, ...]) -> float:
        total = sum(self.total.get(k, 0) for k in kinds)
        return sum(self.machine.get(k, 0) for k in kinds) / total if total else 0.0

    def named_rate(self, group: str = "all") -> float:
        total = self.named_total.get(group, 0)
        return self.named.get(group, 0) / total if total else 0.0

    def failures(self) -> list[str]:
        """The targets not met, in words (empty when all are met)."""
        missed = []
        if self.rate(PEOPLE) > PEOPLE_AS_MACHINES_MAX:
            missed.append(f"people as machines {self.rate(PEOPLE):.3%}")
        for kind, least in MACHINE_MIN.items():
            if self.rate((kind,)) < least:
                missed.append(f"{kind} {self.rate((kind,)):.1%} < {least:.0%}")
        if self.named_rate() < NAMED_MIN:
            missed.append(f"mail clients named {self.named_rate():.1%}")
        for group in NAMED_GROUPS:
            if self.named_rate(group) < NAMED_GROUP_MIN:
                missed.append(f"{group} named {self.named_rate(group):.1%}")
        return missed

    def report(self) -> str:
        lines = [f"{'kind':18} {'strings':>8} {'machine':>9}"]
        for kind in (*PEOPLE, *MACHINES):
            lines.append(f"{kind:18} {self.total.get(kind, 0):8} {self.rate((kind,)):9.2%}")
        lines.append(
            f"{'people (all)':18} {sum(self.total.get(k, 0) for k in PEOPLE):8} "
            f"{self.rate(PEOPLE):9.3%}  (target <= {PEOPLE_AS_MACHINES_MAX:.2%})"
        )
        lines.append(
            f"mail clients named: {self.named_rate():.1%} of "
            f"{self.named_total.get('all', 0)} (target >= {NAMED_MIN:.0%})"
        )
        for group in NAMED_GROUPS:
            lines.append(
                f"  {group:12} {self.named_rate(group):6.1%} of "
                f"{self.named_total.get(group, 0)} (target >= {NAMED_GROUP_MIN:.0%})"
            )
        return "\n".join(lines)


def score(rows: list[Row], classify: Callable[[str], tuple[str | None, str | None]]) -> Score:
    """`classify(user_agent)` gives (client, machine reason)."""
    result = Score()
    for row in rows:
        client, reason = classify(row.user_agent)
        result.total[row.kind] = result.total.get(row.kind, 0) + 1
        is_machine = reason is not None
        result.machine[row.kind] = result.machine.get(row.kind, 0) + is_machine
        if is_machine != (row.kind in MACHINES):
            result.wrong.setdefault(row.kind, []).append(
                (row.user_agent, row.label, client, reason)
            )
        if row.kind in ("mail_client", "proxy"):
            expected = row.expected_client
            groups = ["all"] + [g for g in NAMED_GROUPS if g == expected]
            ok = canonical(client) == expected and not is_machine
            for group in groups:
                result.named_total[group] = result.named_total.get(group, 0) + 1
                result.named[group] = result.named.get(group, 0) + ok
            if not ok:
                result.wrong.setdefault("unnamed", []).append(
                    (row.user_agent, row.label, client, reason)
                )
    return result


def main(argv: list[str]) -> int:
    from service.tracking.classify import Classifier

    classifier = Classifier.from_files()

    def classify(ua: str) -> tuple[str | None, str | None]:
        found = classifier.user_agent(ua)
        return found.client, found.machine_reason

    paths = [a for a in argv[1:] if not a.startswith("-")]
    result = score(load(Path(paths[0]) if paths else TABLE), classify)
    print(result.report())
    if "-v" in argv:
        for kind, items in result.wrong.items():
            print(f"\n== wrong: {kind} ({len(items)})")
            for ua, label, client, reason in items:
                print(f"  [{label}] -> {client!r} {reason!r} :: {ua[:160]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
