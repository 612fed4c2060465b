"""Rebuild `user_agents.csv.gz`: labelled user agents from public collections.

Run by hand, not by the tests: `python tests/data/build_user_agent_table.py MIRRORS`, where
MIRRORS holds bare git clones named `owner+name/repo` (any `git clone --bare` works). It
reads only test data and lists (strings and their labels) at the commits printed into the
table's `source` column; no code of those projects is copied.

Each row: kind (what the source says it is, in this project's terms), label (the source's
own name or category), source (repository@commit:path), user_agent. Kinds:

- person: browsers and apps of people (sampled, see PEOPLE_SAMPLE);
- mail_client: mail clients, label = the client's name as the source gives it;
- proxy: Gmail's and Yahoo's image proxies (a person opening the mail);
- http_library, bot, headless, security_scanner: machines.

A string that two sources label on opposite sides (person against machine) is left out:
the test cannot say who is right. `user_agents_summary.json` counts what was kept.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
OUT = HERE / "user_agents.csv.gz"
SUMMARY = HERE / "user_agents_summary.json"
PEOPLE_SAMPLE = 4  # keep one person string in PEOPLE_SAMPLE (by hash): the fixtures are huge
MACHINE_KINDS = {"http_library", "bot", "headless", "security_scanner"}
PERSON_KINDS = {"person", "mail_client", "proxy"}
HEADLESS = ("HeadlessChrome", "Headless Chrome", "PhantomJS", "Puppeteer", "Playwright")
# Mail apps among device-detector's mobile apps (its PIM list holds the desktop ones).
MAIL_APP = re.compile(r"mail\b|\b(outlook|spark|newton|canary|spike|e-?mail)\b", re.IGNORECASE)
# uap-core families of ordinary browsers: its test_ua.yaml also lists bots and libraries.
UAP_BROWSERS = {
    "Chrome",
    "Chrome Mobile",
    "Chrome Mobile iOS",
    "Chrome Mobile WebView",
    "Firefox",
    "Firefox Mobile",
    "Firefox iOS",
    "Safari",
    "Mobile Safari",
    "Mobile Safari UI/WKWebView",
    "Edge",
    "Edge Mobile",
    "IE",
    "IE Mobile",
    "Opera",
    "Opera Mini",
    "Opera Mobile",
    "Samsung Internet",
    "UC Browser",
    "Yandex Browser",
    "Vivaldi",
    "Silk",
    "Android",
    "Chromium",
    "Brave",
    "Amazon Silk",
    "Facebook",
    "Instagram",
    "QQ Browser",
    "QQ Browser Mobile",
    "MiuiBrowser",
    "Pale Moon",
    "SeaMonkey",
    "Maxthon",
    "Iceweasel",
}


class Mirror:
    def __init__(self, root: Path, repo: str) -> None:
        self.repo = repo
        self.git_dir = root / repo.replace("/", "+") / "repo"
        self.commit = self._git("rev-parse", "HEAD").strip()

    def _git(self, *args: str) -> str:
        return subprocess.run(
            ["git", f"--git-dir={self.git_dir}", *args], check=True, capture_output=True, text=True
        ).stdout

    def source(self, path: str) -> str:
        return f"{self.repo}@{self.commit[:12]}:{path}"

    def text(self, path: str) -> str:
        return self._git("show", f"HEAD:{path}")

    def yaml(self, path: str):
        return yaml.load(self.text(path), Loader=yaml.CSafeLoader)

    def files(self, under: str) -> list[str]:
        return self._git("ls-tree", "-r", "--name-only", "HEAD", under).split()


def sampled(ua: str) -> bool:
    return (
        int(hashlib.sha1(ua.encode(), usedforsecurity=False).hexdigest(), 16) % PEOPLE_SAMPLE == 0
    )


def is_mail_app(name: str) -> bool:
    return bool(MAIL_APP.search(name))


def proxy_or(kind: str, ua: str) -> str:
    """Gmail's and Yahoo's proxies are people here, whatever a bot list says."""
    if "GoogleImageProxy" in ua or "YahooMailProxy" in ua:
        return "proxy"
    if any(word in ua for word in HEADLESS) and kind in MACHINE_KINDS | {"person"}:
        return "headless"
    return kind


def matomo(m: Mirror):
    for bot in m.yaml("Tests/fixtures/bots.yml"):
        category = bot["bot"].get("category") or "Bot"
        kind = "security_scanner" if category.startswith("Security") else "bot"
        yield (
            proxy_or(kind, bot["user_agent"]),
            category,
            "Tests/fixtures/bots.yml",
            bot["user_agent"],
        )
    for path, kind in (
        ("Tests/Parser/Client/fixtures/pim.yml", "mail_client"),
        ("Tests/Parser/Client/fixtures/library.yml", "http_library"),
    ):
        for case in m.yaml(path):
            yield kind, case["client"]["name"], path, case["user_agent"]
    for case in m.yaml("Tests/Parser/Client/fixtures/mobile_app.yml"):
        if is_mail_app(case["client"]["name"]):
            yield (
                "mail_client",
                case["client"]["name"],
                "Tests/Parser/Client/fixtures/mobile_app.yml",
                case["user_agent"],
            )
    for path in m.files("Tests/fixtures"):
        if path.endswith("bots.yml"):
            continue
        for case in m.yaml(path) or ():
            client = case.get("client") or {}
            ctype, name, ua = client.get("type"), client.get("name") or "", case["user_agent"]
            if case.get("headers"):  # named from X-Requested-With, not from the user agent
                ctype = "browser"
            if ctype == "pim" or (ctype == "mobile app" and is_mail_app(name)):
                yield "mail_client", name, path, ua
            elif ctype == "library":
                yield "http_library", name, path, ua
            elif ctype in ("browser", "mobile app") and sampled(ua):
                yield proxy_or("person", ua), name, path, ua


def ua_parser_js(m: Mirror):
    base = "test/data/ua/extension/"
    for name, kind in (
        ("email", "mail_client"),
        ("cli", "http_library"),
        ("library", "http_library"),
        ("crawler", "bot"),
        ("fetcher", "bot"),
    ):
        path = base + name + ".json"
        for case in json.loads(m.text(path)):
            ua = case["ua"]
            label = case["expect"]["name"]
            if kind == "bot" and "virustotal" in ua.lower():
                kind_here = "security_scanner"
            else:
                kind_here = kind
            yield proxy_or(kind_here, ua), label, path, ua
    path = "test/data/ua/browser/browser-all.json"
    for case in json.loads(m.text(path)):
        ua = case["ua"]
        if isinstance(ua, str) and sampled(ua):
            yield proxy_or("person", ua), case["expect"].get("name") or "", path, ua


YAUAA_PERSON = {"Browser", "Browser Webview", "Mobile App"}
YAUAA_MACHINE = {"Robot": "bot", "Robot Mobile": "bot", "Cloud Application": "bot"}


def yauaa(m: Mirror):
    base = "analyzer/src/main/resources/UserAgents/"
    for path in m.files(base):
        name = path.rsplit("/", 1)[-1]
        if not name.endswith(".yaml") or not (name.startswith(("EMailClients", "Robot"))):
            continue
        document = m.yaml(path) or {}
        for entry in document.get("config", ()) if isinstance(document, dict) else document:
            test = entry.get("test") if isinstance(entry, dict) else None
            if not test or "expected" not in test:
                continue
            ua = (test.get("input") or {}).get("user_agent_string")
            expected = test["expected"]
            agent_class = expected.get("AgentClass")
            if not ua:
                continue
            if agent_class == "Email Client":
                yield "mail_client", expected.get("AgentName", ""), path, ua
            elif agent_class in YAUAA_MACHINE or expected.get("DeviceClass", "").startswith(
                "Robot"
            ):
                kind = (
                    "http_library" if "Libraries" in name else YAUAA_MACHINE.get(agent_class, "bot")
                )
                yield proxy_or(kind, ua), agent_class, path, ua
            elif agent_class in YAUAA_PERSON and sampled(ua):
                yield proxy_or("person", ua), expected.get("AgentName", ""), path, ua


def crawler_user_agents(m: Mirror):
    path = "crawler-user-agents.json"
    for entry in json.loads(m.text(path)):
        for ua in entry.get("instances", ()):
            yield proxy_or("bot", ua), entry["pattern"], path, ua


def isbot(m: Mirror):
    for path, kind in (("fixtures/crawlers.yml", "bot"), ("fixtures/browsers.yml", "person")):
        for label, uas in m.yaml(path).items():
            # isbot's browsers.yml also lists "insignificant bots" it leaves unblocked.
            here = "bot" if kind == "person" and "bots" in str(label).lower() else kind
            for ua in uas or ():
                if here == "bot" or sampled(ua):
                    yield proxy_or(here, ua), str(label), path, ua


def uap_core(m: Mirror):
    path = "tests/test_device.yaml"
    spiders = set()
    for case in m.yaml(path)["test_cases"]:
        if case["family"] == "Spider":
            spiders.add(case["user_agent_string"])
            yield (
                proxy_or("bot", case["user_agent_string"]),
                "Spider",
                path,
                case["user_agent_string"],
            )
    path = "tests/test_ua.yaml"
    for case in m.yaml(path)["test_cases"]:
        ua = case["user_agent_string"]
        if case["family"] in UAP_BROWSERS and ua not in spiders and sampled(ua):
            yield proxy_or("person", ua), case["family"], path, ua


SOURCES = {
    "matomo-org/device-detector": matomo,
    "faisalman/ua-parser-js": ua_parser_js,
    "nielsbasjes/yauaa": yauaa,
    "monperrus/crawler-user-agents": crawler_user_agents,
    "omrilotan/isbot": isbot,
    "ua-parser/uap-core": uap_core,
}


def peers() -> list[tuple[str, str, str, str]]:
    """User agents quoted in other projects' issues about false opens (peers.csv)."""
    with open(HERE / "peer_user_agents.csv", newline="", encoding="utf-8") as handle:
        return [
            (r["kind"], r["label"], r["source"], r["user_agent"]) for r in csv.DictReader(handle)
        ]


def main(root: Path) -> None:
    rows: dict[tuple[str, str], tuple[str, str, str, str]] = {}
    sides: dict[str, set[str]] = {}
    for repo, read in SOURCES.items():
        mirror = Mirror(root, repo)
        for kind, label, path, ua in read(mirror):
            ua = ua.strip() if isinstance(ua, str) else ""
            if not ua or "\n" in ua:
                continue
            rows.setdefault((ua, kind), (kind, str(label), mirror.source(path), ua))
            sides.setdefault(ua, set()).add("machine" if kind in MACHINE_KINDS else "person")
    for kind, label, source, ua in peers():
        rows.setdefault((ua, kind), (kind, label, source, ua))
        sides.setdefault(ua, set()).add("machine" if kind in MACHINE_KINDS else "person")
    contested = {ua for ua, s in sides.items() if len(s) > 1}
    kept = sorted(
        (row for (ua, _), row in rows.items() if ua not in contested),
        key=lambda r: (r[0], r[3]),
    )
    # A string labelled twice on the same side keeps one row, the most specific kind.
    order = [
        "headless",
        "security_scanner",
        "http_library",
        "bot",
        "proxy",
        "mail_client",
        "person",
    ]
    best: dict[str, tuple[str, str, str, str]] = {}
    for row in kept:
        old = best.get(row[3])
        if old is None or order.index(row[0]) < order.index(old[0]):
            best[row[3]] = row
    final = sorted(best.values(), key=lambda r: (r[0], r[3]))
    with gzip.open(OUT, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kind", "label", "source", "user_agent"])
        writer.writerows(final)
    summary = {
        "rows": len(final),
        "by_kind": dict(sorted(Counter(r[0] for r in final).items())),
        "by_source": dict(sorted(Counter(r[2].split("@")[0] for r in final).items())),
        "left_out_contested": len(contested),
        "people_sampled_one_in": PEOPLE_SAMPLE,
    }
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/.mirror"))
