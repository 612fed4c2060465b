"""The issue-15 targets, measured on the labelled table built from public collections,
on the whole table and held out (issue 27): each source judged by a classifier built
without the lists the service reads from that source.

`pytest -s tests/tracking/test_classify_table.py` prints the figures, whole and held out,
per source; `python tests/ua_table.py -v` also lists every held-out string on the wrong side.
"""

from tests import ua_table


def test_table_keeps_every_kind_the_targets_name_with_its_source() -> None:
    rows = ua_table.load()
    kinds = {row.kind for row in rows}
    assert set(ua_table.PEOPLE) | set(ua_table.MACHINES) <= kinds
    assert all(row.source and row.user_agent for row in rows)
    repos = {row.source.split("@")[0] for row in rows}
    for repo in (
        "matomo-org/device-detector",
        "faisalman/ua-parser-js",
        "nielsbasjes/yauaa",
        "monperrus/crawler-user-agents",
        "omrilotan/isbot",
        "ua-parser/uap-core",
        "JayBizzle/Crawler-Detect",
        "npm:user-agents",
    ):
        assert repo in repos


# Targets the rules do not reach yet (issue 27 left them open): the share they reach
# now is a floor, so no change can make them worse unseen; each line goes once its
# target holds (bots, whole and held out, went in the second pass). Held out,
# device-detector's HTTP libraries and scanners are judged without device-detector's
# own lists, and many are bare product names ("Helm/3.9", "Bun/1.2") that no family
# rule can tell from a mail client's own fetcher ("Balsa/2.6", "Trojita/0.7") without
# naming the product; the third pass's lists (Crawler-Detect, isbot, CRS) name some,
# and only device-detector names the rest.
FLOORS = {
    "whole": {},
    "held out": {"http_library": 0.807, "security_scanner": 0.973},
}


def _missed(score: ua_table.Score, floors: dict[str, float]) -> list[str]:
    """The targets missed, less those with a floor, plus any floor gone under."""
    missed = [m for m in score.failures() if m.split()[0] not in floors]
    for kind, floor in floors.items():
        if score.rate((kind,)) < floor:
            missed.append(f"{kind} {score.rate((kind,)):.1%} under its floor {floor:.1%}")
    return missed


def test_classification_meets_the_targets_whole_and_held_out() -> None:
    text, whole, held = ua_table.full_report(ua_table.load())
    print("\n" + text)
    assert _missed(whole, FLOORS["whole"]) == []
    assert _missed(held, FLOORS["held out"]) == []


def test_contested_machine_labels_are_left_out_with_their_reason() -> None:
    """A source's machine label the pixel cannot take (a person's browser, in-app
    browser or mail client) is left out of the scores, never relabelled, and says why."""
    rows = ua_table.load(keep_contested=True)
    left_out = [(row, ua_table.contested(row)) for row in rows if ua_table.contested(row)]
    assert left_out and len(left_out) < 0.01 * len(rows)
    assert all(row.kind in ua_table.MACHINES and reason for row, reason in left_out)
    kept = {(row.source, row.user_agent) for row in ua_table.load()}
    assert not any((row.source, row.user_agent) in kept for row, _ in left_out)
    sources = {ua_table.source_of(row) for row, _ in left_out}
    assert {"omrilotan/isbot", "JayBizzle/Crawler-Detect"} <= sources
