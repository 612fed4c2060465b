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
    "zimbradesktop": "zimbra",
    "navermailapp": "navermail",
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


# Machine labels the table keeps from its sources but a pixel cannot take: each is a
# person's browser, in-app browser or mail client by its source's own words or by the
# product it names. They are left out of the scores (as `tests/ua_sources.py` leaves
# out contested strings), never relabelled; (source, label pattern, user-agent
# pattern, reason; an empty source: any), matched from the start of the label and
# anywhere in the string.
CONTESTED = (
    (
        "omrilotan/isbot",
        r"ZZZ (?:Glitches and Misidentified|Miscellaneous) Browsers",
        r"",
        "isbot's own label: legitimate browsers that some bot lists include",
    ),
    (
        "omrilotan/isbot",
        r"DuckDuckGo$",
        r"",
        "DuckDuckGo's browser apps (their app ids and versions); its crawler is labelled apart",
    ),
    (
        "omrilotan/isbot",
        r"Wechat Dev Tools$|ZZZ Miscellaneous Glitches",
        r"; wv\).*(?:MQQBrowser|MicroMessenger)|iPhone.*MicroMessenger",
        "WeChat's and QQ's in-app browsers (Android WebView, iOS): where people open links",
    ),
    (
        "omrilotan/isbot",
        r"ZZZ Insignificat bots - Crosswalk",
        r"Whale/",
        "Naver Whale's app on an Android WebView (Crosswalk): a person's browser",
    ),
    (
        "monperrus/crawler-user-agents",
        r"MetaIAB Facebook$|AP3A",
        r"; wv\)",
        "an Android WebView in-app browser (Facebook's; a device build id as the pattern)",
    ),
    (
        "faisalman/ua-parser-js",
        r"E?Links$|Lynx$",
        r"",
        "text-mode browsers (Lynx, ELinks) that people read with; device-detector's Links rows "
        "are people",
    ),
    (
        "JayBizzle/Crawler-Detect",
        r"",
        r"^Microsoft Office (?:Word|Excel|PowerPoint|OneNote|Mobile)\b|"
        r"^Mozilla/5\.0 \(Macintosh; Intel Mac OS X\) (?:Word|Excel|PowerPoint)/",
        "Office apps that people use; device-detector and isbot label Office and PowerPoint people",
    ),
    (
        "JayBizzle/Crawler-Detect",
        r"",
        r"^(?:Canary%20Mail|Polymail)/",
        "mail clients (Canary Mail, Polymail): Crawler-Detect lists every non-browser",
    ),
)


def contested(row: Row) -> str | None:
    """Why the row's machine label is left out, or None."""
    for source, label, user_agent, reason in CONTESTED:
        if (
            row.kind in MACHINES
            and source in ("", source_of(row))
            and re.match(label, row.label)
            and re.search(user_agent, row.user_agent)
        ):
            return reason
    return None


def load(path: Path = TABLE, keep_contested: bool = False) -> list[Row]:
    """The table's rows, less the contested labels (see CONTESTED) unless kept."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        rows = [Row(**r) for r in csv.DictReader(handle)]
    return rows if keep_contested else [r for r in rows if not contested(r)]


@dataclass
class Score:
    total: dict[str, int] = field(default_factory=dict)
    machine: dict[str, int] = field(default_factory=dict)
    named: dict[str, int] = field(default_factory=dict)
    named_total: dict[str, int] = field(default_factory=dict)
    wrong: dict[str, list[tuple[str, str, str | None, str | None]]] = field(default_factory=dict)

    def add(self, other: Score) -> None:
        for mine, theirs in (
            (self.total, other.total),
            (self.machine, other.machine),
            (self.named, other.named),
            (self.named_total, other.named_total),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        for key, items in other.wrong.items():
            self.wrong.setdefault(key, []).extend(items)

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


def source_of(row: Row) -> str:
    """The collection a row comes from: its repository (or package), or the issue threads."""
    name = row.source.split("@")[0]
    return "issue threads" if " issue " in name or " pull " in name else name


def by_source(rows: list[Row]) -> dict[str, list[Row]]:
    found: dict[str, list[Row]] = {}
    for row in rows:
        found.setdefault(source_of(row), []).append(row)
    return found


Classify = Callable[[str], tuple[str | None, str | None]]


def per_source(
    rows: list[Row], classify_for: Callable[[str], Classify]
) -> tuple[Score, dict[str, Score]]:
    """Each source's rows scored by `classify_for(source)`, and all of them pooled.

    With a classifier built without the lists of the source being scored, this is the
    leave-one-source-out evaluation: every row judged by rules not taken from its source."""
    pooled, scores = Score(), {}
    for source, items in sorted(by_source(rows).items(), key=lambda kv: -len(kv[1])):
        scores[source] = score(items, classify_for(source))
        pooled.add(scores[source])
    return pooled, scores


def source_report(scores: dict[str, Score]) -> str:
    """One line per source: people counted as machines, machines caught, clients named."""
    lines = [
        f"{'source':32} {'strings':>7} {'people':>7} {'->mach':>7} {'bots':>6} {'caught':>7} "
        f"{'libs':>5} {'caught':>7} {'mail':>5} {'named':>7}"
    ]
    for source, found in scores.items():
        people = sum(found.total.get(k, 0) for k in PEOPLE)
        bots = sum(found.total.get(k, 0) for k in ("bot", "headless", "security_scanner"))
        caught = sum(found.machine.get(k, 0) for k in ("bot", "headless", "security_scanner"))
        libraries = found.total.get("http_library", 0)
        mail = found.named_total.get("all", 0)
        lines.append(
            f"{source[:32]:32} {sum(found.total.values()):7} {people:7} "
            f"{_share(found.rate(PEOPLE), people, '.2%'):>7} {bots:6} "
            f"{_share(caught / bots if bots else 0, bots, '.1%'):>7} {libraries:5} "
            f"{_share(found.rate(('http_library',)), libraries, '.1%'):>7} {mail:5} "
            f"{_share(found.named_rate(), mail, '.1%'):>7}"
        )
    return "\n".join(lines)


def _share(value: float, total: int, spec: str) -> str:
    return format(value, spec) if total else "-"


def classifiers() -> Callable[[str], Classify]:
    """`classify_for(source)`: the service's classifier built without the lists of
    `source` (when the service reads any from it; otherwise the whole classifier)."""
    from service.tracking import ua_lists
    from service.tracking.classify import Classifier

    built: dict[frozenset[str], Classify] = {}

    sources = getattr(ua_lists, "SOURCES", LIST_SOURCES)

    def classify_for(source: str) -> Classify:
        leave_out = frozenset({source} & set(sources))
        if leave_out not in built:
            if not leave_out:
                classifier = Classifier.from_files()
            elif hasattr(ua_lists, "SOURCES"):
                classifier = Classifier.from_files(leave_out=leave_out)
            else:  # code from before issue 27: its lists filtered here, by their kind
                classifier = _without_lists(Classifier, ua_lists, leave_out)
            built[leave_out] = _pairs(classifier)
        return built[leave_out]

    return classify_for


# The collections the service read rule lists from before it named them itself
# (`ua_lists.SOURCES`, which also has Crawler-Detect's and isbot's since issue 27).
LIST_SOURCES = ("matomo-org/device-detector", "monperrus/crawler-user-agents")


def _without_lists(classifier_class, ua_lists, leave_out: frozenset[str]):
    """An earlier classifier (no `leave_out` of its own) built with its list matcher
    restricted: crawler-user-agents' rules are the kind "crawler", the rest device-detector's."""

    def source(kind: str) -> str:
        return LIST_SOURCES[1] if kind == "crawler" else LIST_SOURCES[0]

    rules = [r for r in ua_lists._rules() if source(r[1].kind) not in leave_out]
    original = ua_lists.matcher
    ua_lists.matcher = lambda: ua_lists.ListMatcher(rules)
    try:
        return classifier_class.from_files()
    finally:
        ua_lists.matcher = original


def _pairs(classifier) -> Classify:
    def classify(ua: str) -> tuple[str | None, str | None]:
        found = classifier.user_agent(ua)
        return found.client, found.machine_reason

    return classify


def evaluate(rows: list[Row]) -> tuple[Score, dict[str, Score], Score, dict[str, Score]]:
    """(whole table, its sources, held out pooled, held-out sources)."""
    classify_for = classifiers()
    whole, sources = per_source(rows, lambda _source: classify_for(""))
    held, held_sources = per_source(rows, classify_for)
    return whole, sources, held, held_sources


def full_report(rows: list[Row]) -> tuple[str, Score, Score]:
    whole, sources, held, held_sources = evaluate(rows)
    left_out = sum(1 for r in load(keep_contested=True) if contested(r))
    text = "\n".join(
        [
            f"(contested machine labels left out of the table: {left_out}; see CONTESTED)",
            "== whole table",
            whole.report(),
            source_report(sources),
            "",
            "== held out: each source judged without the lists read from it (leave one out)",
            held.report(),
            source_report(held_sources),
        ]
    )
    return text, whole, held


def main(argv: list[str]) -> int:
    paths = [a for a in argv[1:] if not a.startswith("-")]
    text, _whole, held = full_report(load(Path(paths[0]) if paths else TABLE))
    print(text)
    result = held
    if "-v" in argv:
        for kind, items in result.wrong.items():
            print(f"\n== wrong: {kind} ({len(items)})")
            for ua, label, client, reason in items:
                print(f"  [{label}] -> {client!r} {reason!r} :: {ua[:160]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
