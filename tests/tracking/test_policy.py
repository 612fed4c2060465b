"""Who gets a personal pixel: the rule itself, and its two statements (Python for the
emails and the subscriber's page, SQL for the recorder) held to each other."""

import itertools
import time

import pytest

from service.db.queries import queries
from service.manage import view
from service.tracking.policy import personal_tracking
from tests.pixel_support import seed

MODES = ("consent", "notice", "off")
STATES = list(itertools.product((False, True), (False, True)))  # (consent, withdrawn)


@pytest.mark.parametrize(
    ("mode", "consent", "withdrawn", "expected"),
    [
        ("consent", True, False, True),
        ("consent", True, True, True),  # consent given again after a withdrawal
        ("consent", False, False, False),
        ("consent", False, True, False),
        ("notice", False, False, True),
        ("notice", True, False, True),
        ("notice", False, True, False),  # objected
        ("notice", True, True, False),
        ("off", True, False, False),
        ("off", False, False, False),
    ],
)
def test_the_rule(mode: str, consent: bool, withdrawn: bool, expected: bool) -> None:
    assert personal_tracking(mode, consent, withdrawn) is expected


async def test_the_sql_function_is_the_python_rule_for_every_combination(db) -> None:
    for mode, (consent, withdrawn) in itertools.product(MODES, STATES):
        in_sql = await db.fetchval(
            "SELECT personal_tracking($1, $2, CASE WHEN $3 THEN now() END)",
            mode,
            consent,
            withdrawn,
        )
        assert in_sql is personal_tracking(mode, consent, withdrawn), (mode, consent, withdrawn)


async def test_the_recorder_statement_records_opens_of_whom_the_rule_names(db) -> None:
    """The pixel statement itself, for every TRACKING_MODE and every subscriber state:
    personal opens exactly for those whose emails carry a personal pixel."""
    campaign_id, ids = await seed(db, len(STATES))
    state_of = dict(zip(ids, STATES, strict=True))
    for sid, (consent, withdrawn) in state_of.items():
        await db.execute(
            "UPDATE subscribers SET tracking_consent = $2,"
            " tracking_withdrawn_at = CASE WHEN $3 THEN now() END WHERE id = $1",
            sid,
            consent,
            withdrawn,
        )
    record_opens = queries("pixel").record_opens
    n = len(ids)
    for mode in MODES:
        await db.execute("DELETE FROM opens")
        await record_opens.fetchrow(
            db,
            subscriber_ids=ids,
            campaign_ids=[campaign_id] * n,
            ats=[time.time()] * n,
            ips=[None] * n,
            user_agents=[None] * n,
            user_agent_ids=[None] * n,
            clients=[None] * n,
            client_ids=[None] * n,
            oses=[None] * n,
            os_ids=[None] * n,
            countries=[None] * n,
            country_ids=[None] * n,
            reasons=[None] * n,
            reason_ids=[None] * n,
            tracking_mode=mode,
            machine_window=0.0,
        )
        recorded = {r["subscriber_id"] for r in await db.fetch("SELECT subscriber_id FROM opens")}
        expected = {sid for sid, state in state_of.items() if personal_tracking(mode, *state)}
        assert recorded == expected, mode


def _row(consent: bool) -> dict:
    return {"email": "a@example.com", "status": "active", "tracking_consent": consent}


def test_the_data_page_says_what_the_rule_does_for_every_combination() -> None:
    """The subscriber's own page tells whether their opens are measured as theirs: in
    notice mode that is without consent, until they object."""
    for mode, (consent, withdrawn) in itertools.product(("consent", "notice"), STATES):
        facts = dict(view.subscription(_row(consent), mode, withdrawn))
        [shown] = [v for k, v in facts.items() if k.startswith("Opens measured")]
        assert shown == ("yes" if personal_tracking(mode, consent, withdrawn) else "no"), (
            mode,
            consent,
            withdrawn,
        )


def test_the_data_page_in_notice_mode_says_opens_are_measured_until_one_objects() -> None:
    facts = dict(view.subscription(_row(False), "notice"))
    assert facts["Opens measured as yours (until you object)"] == "yes"
