"""Maintained user-agent lists, compiled once into ua-parser's Rust matcher.

Two sets of lists. First (read before the project's family rules): `device-detector`
(the Python port of Matomo's Device Detector: bots with their categories, HTTP
libraries, mail and PIM clients) and `crawler-user-agents` (crawler patterns). Late
(after the family rules, which name a machine's kind more exactly): `crawlerdetect`
(JayBizzle's Crawler-Detect: crawler patterns and the browser tokens it strips first),
isbot's pattern list and OWASP CRS's security scanners (both vendored in `data/`, see
its README). Their own parsers are too slow for the pixel's recorder (device-detector
takes 15 to 25 ms per new user agent in pure Python, and seconds to compile on first
use), so only their rule files are read and compiled into `ua_parser_rs` regex sets
(the engine `ua-parser` already uses): one pass per user agent and set, first rule
wins. The few rules the Rust engine refuses (look-arounds) run through `re`, and only
when their relaxed forms match in a small Rust set. Late-list entries that make a
person of the labelled table a machine are left out, each with its reason:
`data/list_exclusions.json`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

import crawleruseragents
import ua_parser_rs
import yaml_rs
from crawlerdetect.providers.crawlers import data as crawler_detect_patterns
from crawlerdetect.providers.exclusions import data as crawler_detect_exclusions

# device-detector anchors every rule like this and matches without case. The Rust form
# keeps the anchor in Unicode mode and reads the rule itself ASCII-only (user agents
# are ASCII): three times faster than Unicode case folding over the whole set.
_BOUNDED = r"(?i:^|[^A-Z0-9_-]|[^A-Z0-9-]_|sprd-|MZ-)(?i-u:{})"
_BOUNDED_UNICODE = r"(?i)(?:^|[^A-Z0-9_-]|[^A-Z0-9-]_|sprd-|MZ-)(?:{})"
# For the few rules only Python's `re` reads (look-arounds): the anchor as a look-behind,
# which lets `re` skip ahead (five times faster; it drops the rare `sprd-`/`MZ-` cases).
_BOUNDED_PYTHON = r"(?i:(?<![A-Z0-9_-])(?:{}))"
# Only device-detector's data files are read: importing its parser would cost 0.5 s.
_SPEC = importlib.util.find_spec("device_detector")
_REGEXES = Path(next(iter(_SPEC.submodule_search_locations or ()))) / "regexes"
# Mail apps among device-detector's mobile apps (its PIM list holds the desktop ones).
_MAIL_APP = re.compile(r"mail\b|\b(?:outlook|spark|newton|canary|spike|e-?mail)\b", re.I)
_DATA = Path(__file__).resolve().parent / "data"
ISBOT_FILE = _DATA / "isbot_patterns.json"
CRS_FILE = _DATA / "crs_scanners.json"
EXCLUSIONS_FILE = _DATA / "list_exclusions.json"


@dataclass(frozen=True)
class Match:
    # "bot", "client" (mail or PIM), "library", "crawler", "scanner", "family" (own rules)
    kind: str
    name: str
    category: str = ""  # device-detector's bot category
    source: str = ""  # the collection (of SOURCES) the rule comes from


def _load(relative: str) -> list[dict]:
    return yaml_rs.loads((_REGEXES / relative).read_text(encoding="utf-8")) or []


# The collections the lists come from, as the labelled table names its sources: an
# evaluation can leave one out to see the rules on strings they were not written against.
DEVICE_DETECTOR = "matomo-org/device-detector"
CRAWLER_USER_AGENTS = "monperrus/crawler-user-agents"
CRAWLER_DETECT = "JayBizzle/Crawler-Detect"
ISBOT = "omrilotan/isbot"
CORE_RULE_SET = "coreruleset/coreruleset"  # no labelled rows: never held out
SOURCES = (DEVICE_DETECTOR, CRAWLER_USER_AGENTS, CRAWLER_DETECT, ISBOT, CORE_RULE_SET)
# Read after the project's family rules, which name a machine's kind more exactly (an
# HTTP library, a site's bot) than these lists' one verdict: a crawler, a scanner.
LATE_SOURCES = (CRAWLER_DETECT, ISBOT, CORE_RULE_SET)


def _rules(leave_out: frozenset[str] = frozenset(), late: bool = False) -> list[tuple[str, Match]]:
    """(regex, what it means): device-detector's in the order it tries them, then
    crawler-user-agents'; `late`: the lists the classifier reads after its own family
    rules (LATE_SOURCES), less the entries excluded for people's sake (`exclusions()`)."""
    if late:
        return _late_rules(leave_out)
    rules: list[tuple[str, Match]] = []
    if DEVICE_DETECTOR not in leave_out:
        rules += _device_detector_rules()
    if CRAWLER_USER_AGENTS not in leave_out:
        for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA:
            pattern = entry["pattern"]
            rules.append((pattern, Match("crawler", pattern, "", CRAWLER_USER_AGENTS)))
    return rules


def _late_rules(leave_out: frozenset[str]) -> list[tuple[str, Match]]:
    rules: list[tuple[str, Match]] = []
    excluded = exclusions()
    for source, patterns in (
        (CRAWLER_DETECT, crawler_detect_patterns),
        (ISBOT, isbot_patterns()),
    ):
        if source in leave_out:
            continue
        for pattern in patterns:
            if pattern not in excluded.get(source, {}):
                # both lists match without case
                regex = f"(?i:{_python_form(pattern)})"
                rules.append((regex, Match("crawler", pattern, "", source)))
    if CORE_RULE_SET not in leave_out:
        for phrase in scanner_phrases():
            if phrase not in excluded.get(CORE_RULE_SET, {}):
                rules.append(
                    (f"(?i:{_literal(phrase)})", Match("scanner", phrase, "", CORE_RULE_SET))
                )
    return rules


def isbot_patterns() -> list[str]:
    """isbot's list as vendored (its npm package's `list`)."""
    return json.loads(ISBOT_FILE.read_text(encoding="utf-8"))["patterns"]


def scanner_phrases() -> list[str]:
    """OWASP CRS's security scanners, as vendored: phrases found anywhere, without case."""
    return json.loads(CRS_FILE.read_text(encoding="utf-8"))["phrases"]


def _literal(phrase: str) -> str:
    """The phrase as a regex both engines read (`re.escape` also escapes spaces, which
    the Rust engine refuses)."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", phrase)


@functools.cache
def exclusions() -> dict[str, dict[str, str]]:
    """{source: {pattern: why}}: list entries left out because they fire on people."""
    data = json.loads(EXCLUSIONS_FILE.read_text(encoding="utf-8"))
    return {
        source: {item["pattern"]: item["why"] for item in items}
        for source, items in data.items()
        if not source.startswith("_")
    }


# A look-behind with alternatives of different lengths (`(?<! channel/|google/)`, from
# JavaScript): Python's `re` reads it as one look-behind per alternative.
_LOOK_BEHIND = re.compile(r"\(\?<!((?:[^()\\|]|\\.)+(?:\|(?:[^()\\|]|\\.)+)+)\)")


def _python_form(pattern: str) -> str:
    return _LOOK_BEHIND.sub(
        lambda m: "".join(f"(?<!{part})" for part in m.group(1).split("|")), pattern
    )


def _device_detector_rules() -> list[tuple[str, Match]]:
    rules: list[tuple[str, Match]] = []
    for rule in _load("upstream/bots.yml"):
        category = rule.get("category") or ""
        rules.append((rule["regex"], Match("bot", rule["name"], category, DEVICE_DETECTOR)))
    for path in ("local/client/pim.yml", "upstream/client/pim.yml"):
        rules += [
            (r["regex"], Match("client", r["name"], "", DEVICE_DETECTOR)) for r in _load(path)
        ]
    for path in ("local/client/mobile_apps.yml", "upstream/client/mobile_apps.yml"):
        rules += [
            (r["regex"], Match("client", r["name"], "", DEVICE_DETECTOR))
            for r in _load(path)
            if _MAIL_APP.search(r["name"])
        ]
    for path in ("local/client/libraries.yml", "upstream/client/libraries.yml"):
        rules += [
            (r["regex"], Match("library", r["name"], "", DEVICE_DETECTOR)) for r in _load(path)
        ]
    return rules


# Crawler-Detect deletes the browser and system tokens it lists (`Safari/…`, `; M bot`,
# `cubot`, …) before it matches: one of its rules counts only if it still matches then.
_STRIPPED_FIRST = {
    CRAWLER_DETECT: re.compile("|".join(crawler_detect_exclusions), re.IGNORECASE),
}


# rules read as they are, without device-detector's anchor
_PLAIN = ("crawler", "scanner", "family")


class ListMatcher:
    def __init__(self, rules: list[tuple[str, Match]]) -> None:
        self._meanings = [meaning for _, meaning in rules]
        self._regexes = [regex for regex, _ in rules]
        fast: list[tuple[str, str, None, None, None, None]] = []
        self._slow: list[tuple[int, re.Pattern[str]]] = []
        for index, (regex, meaning) in enumerate(rules):
            # crawler patterns and the project's family rules are plain
            bounded = meaning.kind not in _PLAIN
            compiled = _rust_form(regex, bounded)
            if compiled is None:
                try:
                    python = _BOUNDED_PYTHON.format(regex) if bounded else regex
                    self._slow.append((index, re.compile(python)))
                except re.error:
                    continue  # neither engine reads it: left out
                continue
            fast.append((compiled, str(index), None, None, None, None))
        self._fast = ua_parser_rs.UserAgentExtractor(fast)
        # The slow rules without their look-arounds (each then matches a superset of
        # what it matched) as a second Rust set: a string none of those match (most)
        # skips `re` altogether.
        self._prefilter: ua_parser_rs.UserAgentExtractor | None = None
        relaxed = [
            _rust_form(_without_look_arounds(rules[index][0]), rules[index][1].kind not in _PLAIN)
            for index, _ in self._slow
        ]
        if self._slow and None not in relaxed:
            self._prefilter = ua_parser_rs.UserAgentExtractor(
                [(regex, "x", None, None, None, None) for regex in relaxed]
            )

    def __call__(self, user_agent: str) -> Match | None:
        found = self._fast.extract(user_agent)
        first = int(found.family) if found else len(self._meanings)
        if (
            self._slow
            and self._slow[0][0] < first
            and (self._prefilter is None or self._prefilter.extract(user_agent))
        ):
            for index, pattern in self._slow:
                if index >= first:
                    break
                if pattern.search(user_agent):
                    first = index
                    break
        if first >= len(self._meanings):
            return None
        meaning = self._meanings[first]
        strip = _STRIPPED_FIRST.get(meaning.source)
        if strip is not None and not re.search(self._regexes[first], strip.sub("", user_agent)):
            return None  # the rules after it are not tried: a person, as Crawler-Detect says
        return meaning


_LOOK_AROUND_START = re.compile(r"\(\?<?[=!]")


def _without_look_arounds(regex: str) -> str:
    """The regex less its look-arounds (group by group, escapes kept): it then matches
    everything it matched and more. A look-around with a character class is kept (its
    brackets may hold a parenthesis): the Rust engine then refuses the whole, and the
    rules run through `re` without a prefilter."""
    out, i = [], 0
    while i < len(regex):
        start = _LOOK_AROUND_START.match(regex, i)
        if start is None:
            step = 2 if regex[i] == "\\" else 1
            out.append(regex[i : i + step])
            i += step
            continue
        depth, i = 1, start.end()
        while i < len(regex) and depth:
            if regex[i] == "[":
                return regex
            if regex[i] == "\\":
                i += 1
            elif regex[i] == "(":
                depth += 1
            elif regex[i] == ")":
                depth -= 1
            i += 1
    return "".join(out)


def _rust_form(regex: str, bounded: bool) -> str | None:
    """The regex as the Rust engine reads it fastest, or None if it cannot."""
    if bounded:
        candidates = (_BOUNDED.format(regex), _BOUNDED_UNICODE.format(regex))
    else:
        candidates = (f"(?-u:{regex})", regex)
    for candidate in candidates:
        try:
            ua_parser_rs.UserAgentExtractor([(candidate, "x", None, None, None, None)])
        except ValueError:
            continue
        return candidate
    return None


@functools.cache
def matcher(leave_out: frozenset[str] = frozenset(), late: bool = False) -> ListMatcher:
    """Built once per process (about 2 s): at start-up, never on the event loop.

    `leave_out`: collections (of SOURCES) to build without, for the held-out evaluation;
    `late`: the lists of LATE_SOURCES (read after the family rules) instead of the others."""
    return ListMatcher(_rules(leave_out, late))
