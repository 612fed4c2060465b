"""The issue-15 targets, measured on the labelled table built from public collections.

`pytest -s tests/tracking/test_classify_table.py` prints the figures; `python tests/ua_table.py -v`
also lists every string on the wrong side.
"""

from service.tracking.classify import Classifier
from tests import ua_table

CLASSIFIER = Classifier.from_files()


def _classify(user_agent: str) -> tuple[str | None, str | None]:
    found = CLASSIFIER.user_agent(user_agent)
    return found.client, found.machine_reason


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
    ):
        assert repo in repos


def test_classification_meets_the_targets_on_public_labelled_user_agents() -> None:
    score = ua_table.score(ua_table.load(), _classify)
    print("\n" + score.report())
    assert score.failures() == []
