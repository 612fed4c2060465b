import json

import pytest

from service.tracking.classify import (
    RULES_FILE,
    Classifier,
    Ranges,
    Verdict,
    read_ranges_csv,
    verdict,
)

CLASSIFIER = Classifier.from_files()


def classify(user_agent: str | None, ip: str | None) -> Verdict:
    """What the recorder does per open: the user agent's class and the network's rule."""
    return verdict(CLASSIFIER.user_agent(user_agent), CLASSIFIER.network_reason(ip))


# (user agent as sent by the real client, client, os, machine reason or None)
REAL_USER_AGENTS = [
    # Apple Mail on macOS (images loaded by Mail itself, MPP off)
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
        "Apple Mail",
        "Mac OS X",
        None,
    ),
    # Mail on iPhone and iPad (WKWebView, no Safari/ token)
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
        "Apple Mail",
        "iOS",
        None,
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
        "Apple Mail",
        "iOS",
        None,
    ),
    # Apple Mail Privacy Protection prefetch (uap-core issue 509)
    ("Mozilla/5.0", None, None, "apple_mpp"),
    # Outlook desktop (Word renderer), classic and Microsoft 365 builds
    (
        "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.4266; Pro)",
        "Outlook",
        "Windows",
        None,
    ),
    (
        "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 10.0; WOW64; Trident/7.0; .NET4.0C; .NET4.0E; Microsoft Outlook 16.0.5317; ms-office; MSOffice 16)",
        "Outlook",
        "Windows",
        None,
    ),
    # Thunderbird
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.5.0",
        "Thunderbird",
        "Windows",
        None,
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.3.1",
        "Thunderbird",
        "Linux",
        None,
    ),
    # Gmail's image proxy: a person opened it, through Google's proxy
    (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        "Gmail",
        None,
        None,
    ),
    # Gmail prefetch (SparkPost/Bird, January 2022): no person behind it
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Mozilla/5.0",
        None,
        None,
        "gmail_prefetch",
    ),
    # Yahoo Mail's proxy
    (
        "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
        "Yahoo Mail",
        None,
        None,
    ),
    # Webmail in ordinary browsers
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "Chrome",
        "Windows",
        None,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
        "Firefox",
        "Windows",
        None,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
        "Safari",
        "Mac OS X",
        None,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        "Mobile Safari",
        "iOS",
        None,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
        "Chrome Mobile",
        "Android",
        None,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
        "Edge",
        "Windows",
        None,
    ),
    # Scanners, bots and programs
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) BingPreview/1.0b",
        None,
        None,
        "link_scanner",
    ),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", None, None, "bot"),
    ("python-requests/2.31.0", None, None, "http_library"),
    ("curl/8.5.0", None, None, "http_library"),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
        None,
        None,
        "headless_browser",
    ),
]


@pytest.mark.parametrize(("user_agent", "client", "os", "reason"), REAL_USER_AGENTS)
def test_real_user_agents_are_classified(user_agent, client, os, reason) -> None:
    verdict = classify(user_agent, "81.2.69.160")
    assert (verdict.client, verdict.os, verdict.machine_reason) == (client, os, reason)


def test_a_missing_or_blank_user_agent_is_a_machine_open() -> None:
    assert classify(None, None).machine_reason == "no_user_agent"
    assert classify("   ", None).machine_reason == "no_user_agent"


def test_apple_network_makes_any_user_agent_a_privacy_prefetch() -> None:
    chrome = REAL_USER_AGENTS[11][0]
    assert classify(chrome, "17.58.101.7").machine_reason == "apple_mpp"
    assert classify(chrome, "::ffff:17.58.101.7").machine_reason == "apple_mpp"
    assert classify(chrome, "18.0.0.1").machine_reason is None


def test_country_is_known_only_for_a_person_fetching_directly() -> None:
    assert classify(REAL_USER_AGENTS[11][0], "81.2.69.160").country_known
    assert not classify("Mozilla/5.0", "81.2.69.160").country_known
    assert not classify(REAL_USER_AGENTS[8][0], "66.249.84.1").country_known


def test_operator_csv_of_apple_egress_ranges_is_loaded(tmp_path) -> None:
    csv_file = tmp_path / "egress-ip-ranges.csv"
    csv_file.write_text(
        "prefix,country,region,city\n172.224.226.0/27,US,US-CA,Los Angeles,\n"
        "2a02:26f7:b3c0:4000::/64,DE,DE-BE,Berlin,\n\n# comment\nnot-a-network,,,\n"
    )
    assert read_ranges_csv(str(csv_file)) == ["172.224.226.0/27", "2a02:26f7:b3c0:4000::/64"]
    classifier = Classifier.from_files(apple_ranges_file=str(csv_file))
    assert classifier.network_reason("172.224.226.5") == "apple_mpp"
    assert classifier.network_reason("2a02:26f7:b3c0:4000::17") == "apple_mpp"
    assert classifier.network_reason("172.224.226.64") is None
    assert CLASSIFIER.network_reason("172.224.226.5") is None


def test_ranges_merge_overlapping_networks() -> None:
    ranges = Ranges(["10.0.0.0/8", "10.1.0.0/16", "10.255.255.0/24", "11.0.0.0/8"])
    import ipaddress

    for inside in ("10.0.0.1", "10.1.2.3", "10.255.255.255", "11.3.3.3"):
        assert ipaddress.ip_address(inside) in ranges
    assert ipaddress.ip_address("12.0.0.0") not in ranges
    assert ipaddress.ip_address("9.255.255.255") not in ranges
    assert len(ranges) == 1


def test_user_agent_is_cleaned_and_cut_and_classification_is_cached() -> None:
    dirty = "Mozilla/5.0 (X11)\x00\x1b[31m" + "x" * 2000
    result = CLASSIFIER.user_agent(dirty)
    assert result.text is not None and "\x00" not in result.text and "\x1b" not in result.text
    assert len(result.text) <= 512
    assert CLASSIFIER.user_agent(dirty) is result


def test_garbage_never_raises() -> None:
    for ua in ("", "\x00", "()" * 300, "Mozilla/5.0 (" * 100, "\u202e\ufeff"):
        classify(ua, "not an ip")
    assert CLASSIFIER.network_reason("999.1.1.1") is None


def test_rules_file_gives_every_rule_a_reason_and_a_why() -> None:
    rules = json.loads(RULES_FILE.read_text())
    for group in ("machine_user_agents", "machine_networks"):
        for rule in rules[group]:
            assert rule["reason"] and rule["why"]
    for rule in rules["proxy_user_agents"] + rules["clients"]:
        assert rule["client"] and rule["why"]


def test_user_agents_are_parsed_by_the_compiled_matcher_not_pure_python() -> None:
    """ua-parser falls back to pure-Python regexes (~1 ms per new user agent, on the
    recorder's event loop) when its Rust matcher is missing; the `regex` extra in
    pyproject.toml brings it, and this fails if an install lost it."""
    import ua_parser

    assert ua_parser.RegexResolver is not None


# The false positives and misses named in issue 15.
@pytest.mark.parametrize(
    ("user_agent", "client"),
    [
        # a device named after San Francisco: not Cisco's scanner
        (
            "Mozilla/5.0 (Linux; Android 12; SanFrancisco Build/SP1A) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
            "Chrome Mobile",
        ),
        # an old phone browser with a Java/ token (device-detector fixture)
        (
            "Mozilla/5.0 (Linux; U; Android 1.6; fr-fr; LG-GT540 ; Build/Donut) AppleWebKit/528.5+ (KHTML, like Gecko) Version/3.1.2 Mobile Safari/525.20.1 Java/Jbed/7.0 Pro",
            "Android",
        ),
        ("YahooMail/1.0 (iOS; 1.0.0; en_US)", "Yahoo Mail"),
        ("WhatsApp/2.17.395 Android/6.0 Device/Meizu-M5_Note", "WhatsApp"),
        ("Microsoft Office Outlook/16.0.4266.1001", "Outlook"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X) Outlook/0.0.0", "Outlook"),
        ("SamsungEmail/6.1.80.12", "SamsungEmail"),
        ("Mail/3826.500.181.1.5 CFNetwork/3826.500.111.1.1 Darwin/24.4.0", "Apple Mail"),
    ],
)
def test_people_named_in_the_issue_are_people(user_agent, client) -> None:
    found = CLASSIFIER.user_agent(user_agent)
    assert (found.client, found.machine_reason) == (client, None)


def test_apple_mail_through_cfnetwork_runs_on_macos_not_ios() -> None:
    ua = "Mail/3826.500.181.1.5 CFNetwork/3826.500.111.1.1 Darwin/24.4.0"
    assert CLASSIFIER.user_agent(ua).os == "Mac OS X"


@pytest.mark.parametrize(
    ("user_agent", "reason"),
    [
        ("AHC/2.1", "bot"),
        ("Faraday v2.7.11", "http_library"),
        ("Java-http-client/11", "http_library"),
        ("MicrosoftPreview/2.0", "bot"),
        ("AppEngine-Google; (+http://code.google.com/appengine; appid: s~virustotalcloud)", "bot"),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Playwright/1.40.0",
            "headless_browser",
        ),
    ],
)
def test_machines_named_in_the_issue_are_machines(user_agent, reason) -> None:
    assert CLASSIFIER.user_agent(user_agent).machine_reason == reason


def test_exchange_online_protection_networks_are_scanner_opens() -> None:
    chrome = REAL_USER_AGENTS[11][0]
    assert classify(chrome, "40.107.22.41").machine_reason == "scanner_network"
    assert classify(chrome, "2a01:111:f400:fe1e::2c").machine_reason == "scanner_network"
    assert classify(chrome, "40.106.255.255").machine_reason is None
    assert not classify(chrome, "52.100.1.1").country_known


def test_operator_file_replaces_the_shipped_scanner_ranges(tmp_path) -> None:
    csv_file = tmp_path / "scanners.csv"
    csv_file.write_text("prefix,service\n198.51.100.0/24,example scanner\n")
    classifier = Classifier.from_files(scanner_ranges_file=str(csv_file))
    assert classifier.network_reason("198.51.100.7") == "scanner_network"
    assert classifier.network_reason("40.107.22.41") is None
