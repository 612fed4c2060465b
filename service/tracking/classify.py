"""Who fetched the pixel: the mail client and system, and whether a person was behind it.

Maintained libraries decide most strings: ua-parser (uap-core: client, OS, spiders) and
the rule lists of device-detector and crawler-user-agents (bots, HTTP libraries, mail
clients; see `service.tracking.ua_lists`). The project's own rules, in `data/machine_opens.json`
(read, reviewed and tested as a table), cover only what those miss or get wrong for
mail; scanners' networks are in `data/scanner_ranges.csv`. Three answers are possible:

- a machine open (Apple's privacy prefetch, Gmail's prefetch, link scanners, scanners'
  networks, bots, HTTP libraries, headless browsers): `machine_reason` says which rule;
- a person behind an image proxy (Gmail, Yahoo): a human open whose IP, and so country,
  belong to the proxy, not to the reader;
- a person with their own mail client or browser.

Opens within `MACHINE_OPEN_WINDOW` seconds of the send are marked by the recorder's SQL,
which knows `deliveries.sent_at`. User agents repeat a lot (a few hundred distinct strings
make up nearly every open), so the user-agent part is cached; the IP part is a binary
search over sorted ranges.
"""

from __future__ import annotations

import bisect
import csv
import functools
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path

import ua_parser

from service.tracking import ua_lists
from service.tracking.ua_lists import Match
from service.web.clientinfo import canonical_ip

RULES_FILE = Path(__file__).resolve().parent / "data" / "machine_opens.json"
SCANNER_RANGES_FILE = Path(__file__).resolve().parent / "data" / "scanner_ranges.csv"
MAX_USER_AGENT = 512
UA_CACHE_SIZE = 8192
WARM_UP_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
)


@dataclass(frozen=True)
class UserAgentClass:
    text: str | None  # the user agent as stored: printable, at most MAX_USER_AGENT
    client: str | None
    os: str | None
    machine_reason: str | None  # None: a person (possibly behind a proxy)
    proxied: bool  # the fetching IP is a provider's proxy, not the reader's


@dataclass(frozen=True)
class Verdict:
    client: str | None
    os: str | None
    machine_reason: str | None
    country_known: bool  # False when the IP is a proxy's: its country says nothing


class Ranges:
    """IP networks as merged, sorted integer intervals, one list per IP version."""

    def __init__(self, networks: list[str]) -> None:
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for text in networks:
            net = ipaddress.ip_network(text.strip(), strict=False)
            spans[net.version].append((int(net.network_address), int(net.broadcast_address)))
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for version, items in spans.items():
            merged: list[tuple[int, int]] = []
            for start, end in sorted(items):
                if merged and start <= merged[-1][1] + 1:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], end))
                else:
                    merged.append((start, end))
            self._starts[version] = [start for start, _ in merged]
            self._ends[version] = [end for _, end in merged]

    def __contains__(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        value = int(address)
        i = bisect.bisect_right(self._starts[address.version], value) - 1
        return i >= 0 and value <= self._ends[address.version][i]

    def __len__(self) -> int:
        return sum(len(v) for v in self._starts.values())


def read_ranges_csv(path: str) -> list[str]:
    """Networks from the first column of a CSV such as Apple's `egress-ip-ranges.csv`."""
    networks = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if not row or row[0].lstrip().startswith("#"):
                continue
            try:
                ipaddress.ip_network(row[0].strip(), strict=False)
            except ValueError:
                continue  # a header line or a comment
            networks.append(row[0].strip())
    return networks


# The product a user agent names when ua-parser knows none: `Alpine/2.21 (Linux)`,
# `PocoMail 4.8`, or an app's own token among the engine's (`Polymail/2.3 Chrome/… Electron/…`).
_LEADING_PRODUCT = re.compile(r"^(?!Mozilla/)([A-Za-z][\w .:!-]*?)(?:/| v?\d)")
_PRODUCT = re.compile(r"(?<![\w.-])([A-Za-z][\w.-]*)/v?\d")
_ENGINE_TOKENS = frozenset(
    "Mozilla AppleWebKit Chrome Safari Electron Gecko Firefox Version Mobile KHTML Trident".split()
)


# The first parenthesis when it names a phone's or computer's system: device models,
# carriers and locales go there ("CUBOT", "ID bot 53+"), so family rules do not read it.
_PLATFORM_COMMENT = re.compile(
    r"\((?=[^)]*(?:Linux|Android|iPhone|iPad|iPod|Windows|Macintosh|X11|CrOS))[^)]*\)"
)
_COMMENTS = re.compile(r"\([^)]*\)")
# Where a Gecko mail client names itself (`Gecko/20100101 Icedove/24.4`, `Firefox/38.9
# FossaMail/25.2`); add-ons and the engine's own tokens are not the product.
_GECKO = re.compile(r"Gecko/\w+\s")
_GECKO_ADD_ONS = frozenset({"Goanna", "Lightning", "Navigator"})
# Where an app's own token follows the engine's: an iOS or Android WebView app
# (`Mobile/15E148 MailMaster/6.5`) or a desktop app on Chromium (`Safari/537.36 Mailbird/2.4`).
_AFTER_ENGINE = re.compile(r"(?:Mobile/\w+|Safari/[\d.]+|Chrome/[\d.]+)\s")


def _product(ua: str, aliases: dict[str, str | None] | None = None) -> str | None:
    """The product a user agent names first, as people name it (`aliases`); a token the
    aliases map to None (a protocol's name, such as `Monazilla`) gives way to the next."""
    aliases = aliases or {}
    leading = _LEADING_PRODUCT.match(ua)
    names = [leading.group(1).strip()] if leading else []
    names += [n for n in _PRODUCT.findall(ua) if n not in _ENGINE_TOKENS]
    for name in names:
        key = name.lower()
        if key in aliases:
            if aliases[key] is None:
                continue
            return aliases[key]
        return name
    return None


@functools.cache
def _uap() -> ua_parser.Parser:
    """ua-parser without its own cache: the classifier caches whole answers already."""
    return ua_parser.Parser(ua_parser.RegexResolver(ua_parser.load_lazy_builtins()))


def _sanitise(user_agent: str) -> str:
    return "".join(c for c in user_agent[:MAX_USER_AGENT] if c.isprintable())


class Classifier:
    """Own rules, library lists and networks, compiled once per process."""

    def __init__(
        self,
        rules: dict,
        extra_networks: list[str] | None = None,
        scanner_networks: list[str] | None = None,
        leave_out: frozenset[str] = frozenset(),
    ) -> None:
        self._exact: dict[str, str] = {}
        alternatives: list[str] = []
        self._machine_reasons: dict[str, str] = {}
        for number, rule in enumerate(rules["machine_user_agents"]):
            if "exact" in rule:
                self._exact[rule["exact"]] = rule["reason"]
            if rule.get("words"):
                group = f"r{number}"
                words = "|".join(rule["words"])
                # Whole words only: "Cisco" must not match "San Francisco".
                alternatives.append(f"(?P<{group}>(?<![A-Za-z0-9])(?:{words}))")
                self._machine_reasons[group] = rule["reason"]
        self._machine_rules = re.compile("|".join(alternatives) or "(?!)", re.IGNORECASE)
        self._proxies = [
            (needle, rule["client"])
            for rule in rules["proxy_user_agents"]
            for needle in rule["contains"]
        ]
        self._spider_reason = rules["spider_reason"]
        self._scanner_categories = set(rules["scanner_categories"])
        self._browser_families = set(rules["browser_families"])
        self._client_names: dict[str, str] = rules["client_names"]
        self._mail_clients = [
            (re.compile(rule["regex"]), rule["client"], rule.get("os")) for rule in rules["clients"]
        ]
        self._lists = ua_lists.matcher(leave_out)  # leave_out: evaluation only
        self._late_lists = ua_lists.matcher(leave_out, late=True)
        families = rules.get("machine_families", [])
        self._early_families = Families([r for r in families if r.get("early")])
        self._families = Families([r for r in families if not r.get("early")])
        self._people_apps = tuple(rules.get("people_apps", ()))
        self._aliases: dict[str, str | None] = rules.get("client_aliases", {})
        self._networks: list[tuple[Ranges, str]] = [
            (Ranges(rule["networks"]), rule["reason"]) for rule in rules["machine_networks"]
        ]
        if extra_networks:
            self._networks.append((Ranges(extra_networks), "apple_mpp"))
        if scanner_networks:
            self._networks.append((Ranges(scanner_networks), "scanner_network"))
        self.user_agent = functools.lru_cache(maxsize=UA_CACHE_SIZE)(self._user_agent)

    @classmethod
    def from_files(
        cls,
        rules_file: Path = RULES_FILE,
        apple_ranges_file: str = "",
        scanner_ranges_file: str = "",
        leave_out: frozenset[str] = frozenset(),
    ) -> Classifier:
        rules = json.loads(rules_file.read_text(encoding="utf-8"))
        extra = read_ranges_csv(apple_ranges_file) if apple_ranges_file else None
        scanners = read_ranges_csv(scanner_ranges_file or str(SCANNER_RANGES_FILE))
        # ua-parser builds its matcher on the first parse (~150 ms), the lists theirs
        # (~2 s, once per process): at start-up, not on the event loop during a burst.
        _uap().parse(WARM_UP_USER_AGENT)
        return cls(rules, extra, scanners, leave_out)

    def _user_agent(self, raw: str | None) -> UserAgentClass:
        """Classify one user-agent string (cached: the same strings come again and again)."""
        if not raw:
            return UserAgentClass(None, None, None, "no_user_agent", False)
        ua = _sanitise(raw)
        if not ua.strip():
            return UserAgentClass(None, None, None, "no_user_agent", False)
        reason = self._exact.get(ua.strip())
        if reason:
            return UserAgentClass(ua, None, None, reason, False)
        for needle, client in self._proxies:
            if needle in ua:
                return UserAgentClass(ua, client, None, None, True)
        reason = self._early_families(ua)
        if reason:
            return UserAgentClass(ua, None, None, reason, False)
        match = self._machine_rules.search(ua)
        if match:
            return UserAgentClass(ua, None, None, self._machine_reasons[match.lastgroup], False)
        parsed = _uap().parse(ua)
        os_family = parsed.os.family if parsed.os and parsed.os.family != "Other" else None
        for pattern, client, os_name in self._mail_clients:
            if pattern.search(ua):
                return UserAgentClass(ua, client, os_name or os_family, None, False)
        listed = self._lists(ua)
        if listed is not None:
            if listed.kind == "client":
                client = self._client_names.get(listed.name, listed.name)
                return UserAgentClass(ua, client, os_family, None, False)
            if not self._is_browser(parsed, listed) and not self._people_app(ua):
                return UserAgentClass(ua, None, None, self._list_reason(listed), False)
        if parsed.device and parsed.device.family == "Spider":
            return UserAgentClass(ua, None, None, self._spider_reason, False)
        if not self._people_app(ua):
            reason = self._families(ua, _PLATFORM_COMMENT.sub("", ua, count=1))
            if reason:
                return UserAgentClass(ua, None, None, reason, False)
            listed = self._late_lists(ua)
            if listed is not None and not self._is_browser(parsed, listed):
                return UserAgentClass(ua, None, None, self._list_reason(listed), False)
        return UserAgentClass(ua, self._client(ua, parsed), os_family, None, False)

    def _people_app(self, ua: str) -> bool:
        return any(token in ua for token in self._people_apps)

    def _client(self, ua: str, parsed: ua_parser.Result) -> str | None:
        """The product as people name it: ua-parser's family, unless that is only the
        engine or the system (an app's WebView, an Electron app, a Chromium-based app)."""
        family = parsed.user_agent.family if parsed.user_agent else None
        aliases = self._aliases
        if family in ("Mobile Safari UI/WKWebView", "Chrome Mobile WebView", "Chrome"):
            after = _AFTER_ENGINE.search(ua)
            for name in _PRODUCT.findall(_COMMENTS.sub("", ua[after.end() :])) if after else ():
                if name not in _ENGINE_TOKENS:
                    return aliases.get(name.lower()) or name
            if family == "Mobile Safari UI/WKWebView":
                return "Apple Mail"  # iOS WebKit without a Safari/ token: Mail's image load
            return family
        if family in ("Firefox", "Goanna"):  # Thunderbird's forks and rebrands are Gecko too
            gecko = _GECKO.search(ua)
            for name in _PRODUCT.findall(_COMMENTS.sub("", ua[gecko.end() :])) if gecko else ():
                if name not in _ENGINE_TOKENS and name not in _GECKO_ADD_ONS:
                    return aliases.get(name.lower()) or name
            return family
        if family == "Android" and ua.startswith("Mozilla/"):
            return family  # the stock Android browser
        if family in (None, "Other", "Electron", "Android"):
            return _product(ua, aliases) or (None if family == "Other" else family)
        return aliases.get(family.lower()) or family

    def _list_reason(self, match: Match) -> str:
        if match.kind == "library":
            return "http_library"
        if match.kind == "scanner" or match.category in self._scanner_categories:
            return "link_scanner"
        return "bot"

    def _is_browser(self, parsed: ua_parser.Result, match: Match) -> bool:
        """A library's name inside a phone browser's string (`Java/…` on old phones).

        device-detector tries browsers before libraries; ua-parser names the browser here.
        """
        family = parsed.user_agent.family if parsed.user_agent else "Other"
        return match.kind in ("library", "crawler") and family in self._browser_families

    def network_reason(self, ip: str | None) -> str | None:
        address = canonical_ip(ip)
        if address is None:
            return None
        for ranges, reason in self._networks:
            if address in ranges:
                return reason
        return None


class Families:
    """Family rules (`machine_families`), compiled into the lists' Rust regex set: one
    pass per string finds the first rule that matches; Python's `re` only runs a rule's
    `unless` (on the whole string) and, when that vetoes, the rules after it."""

    def __init__(self, rules: list[dict]) -> None:
        self._rules = rules
        self._reasons = [rule["reason"] for rule in rules]
        self._patterns = [re.compile(f"(?i:{rule['regex']})") for rule in rules]
        self._unless = [
            re.compile(rule["unless"], re.IGNORECASE) if rule.get("unless") else None
            for rule in rules
        ]
        self._set = ua_lists.ListMatcher(
            [(f"(?i:{rule['regex']})", Match("family", str(i))) for i, rule in enumerate(rules)]
        )

    def __call__(self, ua: str, read: str | None = None) -> str | None:
        """The reason of the first rule matching `read` (the user agent, or the part of it
        the rules read) whose `unless` does not match the user agent."""
        read = ua if read is None else read
        found = self._set(read)
        if found is None:
            return None
        first = int(found.name)
        for i in range(first, len(self._reasons)):
            if i > first and not self._patterns[i].search(read):
                continue
            unless = self._unless[i]
            if unless is None or not unless.search(ua):
                return self._reasons[i]
        return None

    def rules(self) -> list[tuple[str, Families]]:
        """Each rule alone, with its reason (for tests that hold one rule to the table)."""
        return [(rule["reason"], Families([rule])) for rule in self._rules]


def verdict(ua: UserAgentClass, network_reason: str | None) -> Verdict:
    """Combine the user-agent class with the rule matched by the fetching IP, if any.

    The country of an IP says something about the reader only when a person fetched the
    pixel directly: not through a provider's proxy and not by a machine.
    """
    reason = ua.machine_reason or network_reason
    return Verdict(ua.client, ua.os, reason, country_known=not (ua.proxied or reason))
