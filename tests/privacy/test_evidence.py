"""Consent evidence has one writer (`record_consent`, sql/139), and the grant of tracking
consent is one statement: the rules themselves."""

import re

from service.privacy import evidence
from service.tracking import consent
from tests.people import add_subscriber
from tests.support import ROOT

WHO = evidence.Evidence(
    ip="198.51.100.0", user_agent="Firefox", source="manage", consent_text_version="v7"
)


def test_no_statement_but_record_consent_writes_consent_events() -> None:
    writers = {
        str(path.relative_to(ROOT))
        for path in [*ROOT.glob("sql/**/*.sql"), *ROOT.glob("service/**/*.py")]
        if re.search(r"INSERT\s+INTO\s+consent_events", path.read_text(), re.IGNORECASE)
    }
    # Migration 139 defines record_consent (147 adds the topic); nothing else inserts evidence.
    assert writers == {
        "sql/139_one_source_for_consent_policies.sql",
        "sql/147_consent_event_topic.sql",
    }


async def test_the_kinds_are_the_ones_the_table_accepts(db) -> None:
    check = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conname = 'consent_events_kind_check'"
    )
    assert set(re.findall(r"'(\w+)'", check)) == set(evidence.KINDS)


async def test_record_writes_one_event_now_with_everything_kept(db) -> None:
    sid = await add_subscriber(db, "e@example.com")
    await evidence.record(db, sid, evidence.CONFIRM, WHO, "button")
    row = await db.fetchrow(
        "SELECT kind, ip, user_agent, source, consent_text_version, method,"
        " now() - at < interval '1 minute' AS recent FROM consent_events"
    )
    assert dict(row) == {
        "kind": "confirm",
        "ip": "198.51.100.0",
        "user_agent": "Firefox",
        "source": "manage",
        "consent_text_version": "v7",
        "method": "button",
        "recent": True,
    }


async def test_record_consent_writes_a_set_in_one_call_keeping_given_times(db) -> None:
    a = await add_subscriber(db, "a@example.com")
    b = await add_subscriber(db, "b@example.com")
    written = await db.fetchval(
        "SELECT record_consent(array_agg(ROW(id, 'confirm', '2020-01-02T03:04:05Z', NULL, NULL,"
        " 'import', 'v1', 'import', NULL)::consent_evidence)) FROM subscribers"
    )
    assert written == 2
    rows = await db.fetch("SELECT subscriber_id, at::text FROM consent_events ORDER BY 1")
    assert [(r["subscriber_id"], r["at"]) for r in rows] == [
        (a, "2020-01-02 03:04:05+00"),
        (b, "2020-01-02 03:04:05+00"),
    ]
    # An empty set writes nothing (a sign-up of a subscribed address).
    assert await db.fetchval("SELECT record_consent(NULL)") == 0


async def test_grant_answers_the_wish_keeps_the_history_and_records_once(db) -> None:
    sid = await add_subscriber(db, "g@example.com")
    await db.execute(
        "UPDATE subscribers SET tracking_requested = true, tracking_withdrawn_at = now()"
        " WHERE id = $1",
        sid,
    )
    assert await consent.grant(db, sid, WHO) is True
    assert await consent.grant(db, sid, WHO) is False  # given already: nothing more
    row = await db.fetchrow(
        "SELECT tracking_consent, tracking_requested, tracking_withdrawn_at IS NOT NULL AS was"
        " FROM subscribers WHERE id = $1",
        sid,
    )
    assert dict(row) == {"tracking_consent": True, "tracking_requested": False, "was": True}
    events = await db.fetch("SELECT kind, source, method FROM consent_events")
    assert [tuple(e) for e in events] == [("tracking_granted", "manage", "button")]


async def test_one_grant_statement_serves_both_pages() -> None:
    texts = {path.name: path.read_text() for path in (ROOT / "sql" / "queries").glob("*.sql")}
    granting = {
        name
        for name, text in texts.items()
        if re.search(r"SET\s+tracking_consent\s*=\s*true", text, re.IGNORECASE)
    }
    assert granting == {"tracking.sql"}
    assert len(re.findall(r"tracking_consent\s*=\s*true", texts["tracking.sql"])) == 1


MIGRATION_147 = ROOT / "sql" / "147_consent_event_topic.sql"


async def test_migration_147_moves_the_topics_slug_out_of_method(db) -> None:
    """Rows as migration 142 wrote them (the slug in `method`) get it in `topic`; the
    other kinds keep their method."""
    sid = await add_subscriber(db, "m@example.com")
    await db.execute(
        "INSERT INTO consent_events (subscriber_id, kind, method) VALUES"
        " ($1, 'topic_joined', 'offers'), ($1, 'topic_left', 'weekly'), ($1, 'confirm', 'auto')",
        sid,
    )
    move = re.search(r"^UPDATE consent_events .*?;$", MIGRATION_147.read_text(), re.M | re.S)
    assert move is not None
    await db.execute(move.group(0))
    rows = await db.fetch("SELECT kind, method, topic FROM consent_events ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("topic_joined", None, "offers"),
        ("topic_left", None, "weekly"),
        ("confirm", "auto", None),
    ]
