"""The maintained lists added in issue 27 (Crawler-Detect, isbot, OWASP CRS's scanners):
each names what it lists, each is left out when its own source is judged, and none
makes a person of the labelled table a machine (the entries that would are excluded,
each with its reason, in `data/list_exclusions.json`).

Strings are written for these tests (no collection's string is copied here)."""

import json
import re

import pytest
from crawlerdetect.providers.crawlers import data as crawler_detect_patterns

from service.tracking import ua_lists
from service.tracking.classify import Classifier
from service.tracking.ua_lists import ListMatcher, Match, _without_look_arounds
from tests import ua_table

NEW_LISTS = ua_lists.LATE_SOURCES
BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def only(source: str) -> ListMatcher:
    """The list matcher built from one of the new collections alone."""
    return ua_lists.matcher(frozenset(ua_lists.SOURCES) - {source}, late=True)


@pytest.mark.parametrize(
    ("source", "user_agent", "reason"),
    [
        (ua_lists.CRAWLER_DETECT, "Jaunt/1.6", "bot"),
        (ua_lists.CRAWLER_DETECT, "Zorblax/1.0 ReactorNetty/1.1", "bot"),
        (ua_lists.ISBOT, "ZorblaxTorrent/3.1", "bot"),
        (ua_lists.ISBOT, "REST::Client/281", "bot"),
        (ua_lists.CORE_RULE_SET, "Arachni/v1.6", "link_scanner"),
        (ua_lists.CORE_RULE_SET, "FeroxBuster/2.10", "link_scanner"),
        # a scanner list's phrase counts inside a browser's string too
        (ua_lists.CORE_RULE_SET, f"{BROWSER} Nuclei", "link_scanner"),
    ],
)
def test_each_new_list_names_what_it_lists_and_is_left_out_for_its_own_rows(
    source, user_agent, reason
) -> None:
    assert only(source)(user_agent) is not None
    without_the_older_lists = Classifier.from_files(
        leave_out=frozenset({ua_lists.DEVICE_DETECTOR, ua_lists.CRAWLER_USER_AGENTS})
    )
    assert without_the_older_lists.user_agent(user_agent).machine_reason == reason
    held_out = ua_lists.matcher(frozenset({source}), late=True)
    found = held_out(user_agent)
    assert found is None or found.source != source
    assert all(m.source != source for m in held_out._meanings)


def test_the_held_out_evaluation_leaves_each_new_list_out_for_its_own_rows() -> None:
    """Crawler-Detect's and isbot's rows are judged without Crawler-Detect's and isbot's
    lists, as device-detector's are without device-detector's."""
    classify_for = ua_table.classifiers()
    crawler = "Jaunt/1.6"  # Crawler-Detect (and device-detector) name it
    assert classify_for(ua_lists.CRAWLER_DETECT)(crawler)[1] is not None  # device-detector's
    torrent = "ZorblaxTorrent/3.1"  # isbot alone names it
    assert classify_for("")(torrent)[1] == "bot"
    assert classify_for(ua_lists.ISBOT)(torrent)[1] is None


def test_crawler_detect_rules_count_on_the_string_less_the_tokens_it_strips() -> None:
    lists = only(ua_lists.CRAWLER_DETECT)
    assert lists("Zorblax/1.0 YandexFoo") is not None  # its rule Yandex(?!Search)
    assert lists("Zorblax/1.0 YandexModule2") is None  # a token its Exclusions strip


def test_look_around_rules_keep_their_meaning_behind_the_rust_prefilter() -> None:
    assert _without_look_arounds(r"(?<!HTC)[ _]Fly/") == "[ _]Fly/"
    assert _without_look_arounds(r"Daum(?!(?:Apps|Device))x") == "Daumx"
    assert _without_look_arounds(r"a\(?!b") == r"a\(?!b"  # an escaped parenthesis stays
    assert _without_look_arounds(r"a(?![)x])b") == r"a(?![)x])b"  # a class: kept whole
    matcher = ListMatcher(
        [
            (r"zorb(?!lax)", Match("crawler", "zorb")),
            (r"(?<!no-)quux", Match("crawler", "quux")),
            (r"zorblax", Match("crawler", "zorblax")),
        ]
    )
    assert matcher("zorbit/1.0").name == "zorb"
    assert matcher("zorblax/1.0").name == "zorblax"  # the look-ahead vetoes the first rule
    assert matcher("no-quux/1.0") is None
    assert matcher("a-quux/1.0").name == "quux"
    assert matcher("nothing/1.0") is None


def _list_entries(source: str) -> list[str]:
    if source == ua_lists.CRAWLER_DETECT:
        return list(crawler_detect_patterns)
    if source == ua_lists.ISBOT:
        return ua_lists.isbot_patterns()
    return ua_lists.scanner_phrases()


def test_every_exclusion_names_an_entry_of_its_list_and_says_why() -> None:
    data = json.loads(ua_lists.EXCLUSIONS_FILE.read_text(encoding="utf-8"))
    excluded = ua_lists.exclusions()
    assert set(excluded) == set(NEW_LISTS)
    assert sum(len(v) for v in excluded.values()) == sum(
        len(v) for k, v in data.items() if not k.startswith("_")
    )  # no pattern twice
    for source, entries in excluded.items():
        listed = set(_list_entries(source))
        for pattern, why in entries.items():
            assert pattern in listed, (source, pattern)  # stale after a refresh: drop it
            assert why.strip(), (source, pattern)
    for source in NEW_LISTS:
        kept = {m.name for m in only(source)._meanings if m.source == source}
        assert kept and not kept & set(excluded[source])


def test_no_list_entry_makes_a_person_of_the_table_a_machine() -> None:
    """Every browser, app, mail client and image proxy of the table, judged as the table
    judges it (whole, and without its own source's lists): none that is a person without
    the new lists is a machine with them. The mail clients and browsers
    `machine_opens.json` names are decided before any list; an entry that still fires is
    excluded with its reason."""
    people = [r for r in ua_table.load() if r.kind in ua_table.PEOPLE]
    contexts = {"": people}
    for row in people:
        if ua_table.source_of(row) in ua_lists.SOURCES:
            contexts.setdefault(ua_table.source_of(row), []).append(row)
    fired: dict[tuple[str, str], list[str]] = {}
    for source, rows in contexts.items():
        leave_out = frozenset({source} - {""})
        classifier = Classifier.from_files(leave_out=leave_out)
        before = Classifier.from_files(leave_out=leave_out | set(NEW_LISTS))
        lists = ua_lists.matcher(leave_out, late=True)
        for row in rows:
            if (
                classifier.user_agent(row.user_agent).machine_reason is not None
                and before.user_agent(row.user_agent).machine_reason is None
            ):
                found = lists(row.user_agent)
                fired.setdefault((found.source, found.name), []).append(row.user_agent)
    assert fired == {}


def test_isbot_patterns_read_as_javascript_reads_them() -> None:
    """A look-behind with alternatives of different lengths (JavaScript reads it, Python's
    `re` does not) becomes one look-behind per alternative."""
    form = ua_lists._python_form(r"(?<! ab/|xyz/)zorb")
    assert form == r"(?<! ab/)(?<!xyz/)zorb"
    pattern = re.compile(form)
    assert pattern.search("q zorb") and not pattern.search("xyz/zorb")
    assert not pattern.search(" ab/zorb")
