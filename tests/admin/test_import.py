"""`POST /admin/api/subscribers/import`: NDJSON lines with consent evidence become active
subscribers, lines without it pending ones with a paced double opt-in email; bad lines
are reported and never stop the others."""

from __future__ import annotations

import itertools
import json

import asyncpg
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from service.admin import importer
from tests import people
from tests.signup_helpers import wait_until

URL = "/admin/api/subscribers/import"


def ndjson(*items: object) -> bytes:
    return b"\n".join(
        item if isinstance(item, bytes) else json.dumps(item).encode() for item in items
    )


async def test_lines_with_evidence_are_active_without_it_pending_and_bad_lines_reported(
    app_factory, db: asyncpg.Connection, admin_headers, smtp
) -> None:
    await people.add_subscriber(db, "active@example.org", name="Kept")
    await people.add_subscriber(db, "waiting@example.org", status="pending")
    erased = await people.add_subscriber(db, "erased@example.org")
    await db.execute("DELETE FROM subscribers WHERE id = $1", erased)  # nothing kept
    body = ndjson(
        {
            "email": "Ada@Example.ORG",
            "name": "Ada",
            "consented_at": "2024-03-01T10:00:00+01:00",
            "consent_source": "paper form, spring fair 2024",
            "tracking": True,
        },
        {"email": "new@example.org", "name": "Neu"},  # 2: no evidence -> pending
        b"{not json",  # 3
        b"[1, 2]",  # 4
        {"email": "not an address"},  # 5
        {"email": "x@example.org", "colour": "red"},  # 6
        {"email": "y@example.org", "consented_at": "2999-01-01T00:00:00Z", "consent_source": "s"},
        {"email": "z@example.org", "consented_at": "2024-01-01T00:00:00", "consent_source": "s"},
        {"email": "w@example.org", "consented_at": "2024-01-01T00:00:00Z"},  # 9: no source
        {"email": "v@example.org", "tracking": "yes"},  # 10
        {"email": "u@example.org", "name": "a\u2028b"},  # 11
        b"",  # 12: blank lines are ignored
        {"email": "ada@example.org"},  # 13: repeat of line 1
        {"email": "active@example.org", "name": "Changed"},  # 14: on the list already
        {
            "email": "waiting@example.org",
            "consented_at": "2024-01-01T00:00:00Z",
            "consent_source": "s",
        },
        {
            "email": "erased@example.org",
            "consented_at": "2024-05-01T00:00:00Z",
            "consent_source": "web form",
        },
        {"email": "later@example.org"},  # 17: pending, its email paced after line 2's
    )
    # No outbox worker while the jobs are read: line 2's is due at once, and the app's own
    # worker had sent it and deleted its job before the outbox was read in 3 of 30 runs
    # (`[9] == [5, 9]`: confirm_sent_at set, one SMTP message). The worker sends below.
    async with app_factory(outbox_concurrency=0) as (_app, client):
        response = await client.post(URL, content=body, headers=admin_headers)
    assert response.status_code == 200
    answer = response.json()
    assert (answer["imported"], answer["pending"]) == (2, 2)
    assert [e["line"] for e in answer["errors"]] == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert all(e["error"] for e in answer["errors"])
    assert answer["skipped"] == 9 + 3  # the bad lines, the repeat and the two known addresses

    rows = {
        r["email"]: r
        for r in await db.fetch(
            "SELECT id, email, name, status, tracking_consent, tracking_requested, confirmed_at"
            " FROM subscribers"
        )
    }
    ada = rows["Ada@example.org"]  # email-validator's normal form, as sign-up stores it
    assert (ada["status"], ada["name"], ada["tracking_consent"]) == ("active", "Ada", True)
    assert ada["confirmed_at"].isoformat() == "2024-03-01T09:00:00+00:00"
    events = await db.fetch(
        "SELECT kind, source, method, at FROM consent_events WHERE subscriber_id = $1 ORDER BY kind",
        ada["id"],
    )
    assert [(e["kind"], e["source"], e["method"]) for e in events] == [
        ("confirm", "paper form, spring fair 2024", "import"),
        ("tracking_granted", "paper form, spring fair 2024", "import"),
    ]
    assert rows["erased@example.org"]["status"] == "active"  # imported like a new address
    assert rows["active@example.org"]["name"] == "Kept"  # left alone
    assert rows["waiting@example.org"]["status"] == "pending"  # left alone: it confirms itself
    assert rows["new@example.org"]["status"] == "pending"
    jobs = await db.fetch(
        "SELECT subscriber_id, run_at FROM outbox WHERE kind = 'confirm' ORDER BY run_at"
    )
    assert [j["subscriber_id"] for j in jobs] == [
        rows["new@example.org"]["id"],
        rows["later@example.org"]["id"],
    ]
    # IMPORT_CONFIRM_RATE (20 a second): one job 1/20 s after the other.
    assert (jobs[1]["run_at"] - jobs[0]["run_at"]).total_seconds() == pytest.approx(0.05)
    async with app_factory():  # its outbox worker sends the two confirmations, no more
        [first, second] = await smtp.wait_for(2)
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0  # the send recorded at stop
    assert len(smtp.messages) == 2
    assert {first.to, second.to} == {"new@example.org", "later@example.org"}
    assert "confirm" in first.message["Subject"].lower()


async def test_import_needs_the_admin_token_and_refuses_an_oversized_body(
    app_factory, db: asyncpg.Connection, admin_headers
) -> None:
    async with app_factory(import_max_bytes=1024) as (_app, client):
        assert (
            await client.post(URL, content=ndjson({"email": "a@example.org"}))
        ).status_code == 401
        big = ndjson(*({"email": f"r{i}@example.org"} for i in range(100)))
        response = await client.post(URL, content=big, headers=admin_headers)
        assert response.status_code == 413
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


async def test_two_imports_of_one_list_at_once_add_each_address_once(
    client, db: asyncpg.Connection, admin_headers
) -> None:
    import asyncio

    # The second in the opposite order: had the imports' inserts interleaved, each would
    # wait for a row of the other (a deadlock, one import refused with a 500: 11 of 30
    # runs without the staging table's ANALYZE, which makes them take turns).
    lines = [{"email": f"r{i}@example.org"} for i in range(500)]
    answers = await asyncio.gather(
        *(
            client.post(URL, content=ndjson(*order), headers=admin_headers)
            for order in (lines, lines[::-1])
        )
    )
    assert all(a.status_code == 200 for a in answers)
    assert sum(a.json()["pending"] for a in answers) == 500
    assert sum(a.json()["skipped"] for a in answers) == 500
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 500
    # Each of them has exactly one confirmation: its job still queued, or already sent by
    # the app's own outbox worker (which deletes the job and sets confirm_sent_at in one
    # transaction). Counting queued jobs alone raced that worker: the first job is due
    # at once, and a run that saw 499 jobs had mailed the 500th (issue 26).
    confirmations = await db.fetch(
        """SELECT s.id,
                  (SELECT count(*) FROM outbox o
                   WHERE o.subscriber_id = s.id AND o.kind = 'confirm')
                  + (s.confirm_sent_at IS NOT NULL)::int AS n
           FROM subscribers s WHERE s.status = 'pending'"""
    )
    assert len(confirmations) == 500
    assert sorted({r["n"] for r in confirmations}) == [1]
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE kind <> 'confirm'") == 0


@hsettings(max_examples=300)
@given(st.one_of(st.emails(), st.text(max_size=80)))
def test_the_fast_address_check_agrees_with_email_validator(address: str) -> None:
    try:
        expected = validate_email(address, check_deliverability=False, strict=True).normalized
    except EmailNotValidError:
        expected = None
    try:
        got = importer.normal_address(address)
    except importer.LineError:
        got = None
    assert got == expected


async def test_pending_imports_wait_their_turn_behind_new_signups(
    app_factory, db: asyncpg.Connection, admin_headers, smtp
) -> None:
    """Paced confirmation jobs leave room: a sign-up after a big import is mailed first,
    and the import's own emails go out no faster than IMPORT_CONFIRM_RATE."""
    import time

    from tests.signup_helpers import subscribe

    async with app_factory(import_confirm_rate=1) as (_app, client):
        started = time.monotonic()
        body = ndjson(*({"email": f"r{i}@example.org"} for i in range(50)))
        assert (await client.post(URL, content=body, headers=admin_headers)).status_code == 200
        # The jobs' run times one second apart (the first may have gone out already).
        gaps = await db.fetch(
            "SELECT extract(epoch FROM run_at - lag(run_at) OVER (ORDER BY run_at))::float8 AS gap"
            " FROM outbox WHERE kind = 'confirm'"
        )
        assert len(gaps) >= 45
        assert all(abs(r["gap"] - 1.0) < 0.001 for r in gaps[1:]), [r["gap"] for r in gaps]
        await subscribe(client, "fresh@example.org")
        await wait_until(lambda: _sent_to(smtp, "fresh@example.org"))
        elapsed = time.monotonic() - started
        imported = [m for m in smtp.messages if m.to != "fresh@example.org"]
    # One a second from the import's start: at most the ones due by the time the
    # sign-up's email went out.
    assert len(imported) <= int(elapsed) + 1, (len(imported), elapsed)


async def _sent_to(smtp, address: str) -> bool:
    return any(m.to == address for m in smtp.messages)


async def test_the_dashboard_uploads_a_file_to_the_same_import(app, db: asyncpg.Connection) -> None:
    from tests.admin.test_dashboard import browser, sign_in

    body = ndjson(
        {
            "email": "form@example.org",
            "consented_at": "2024-01-01T00:00:00Z",
            "consent_source": "csv",
        },
        b"oops",
    )
    async with browser(app) as web:
        csrf = await sign_in(web)
        assert 'href="/admin/import"' in (await web.get("/admin")).text
        assert (await web.get("/admin/import")).status_code == 200
        files = {"file": ("list.ndjson", body, "application/x-ndjson")}
        forged = await web.post("/admin/import", data={"csrf": "wrong"}, files=files)
        assert forged.status_code == 403
        answer = await web.post("/admin/import", data={"csrf": csrf}, files=files)
    assert answer.status_code == 200
    assert "not a JSON object" in answer.text and 'id="import-result"' in answer.text
    assert await db.fetchval("SELECT status FROM subscribers") == "active"


async def test_names_and_sources_arrive_exactly_as_written(
    client, db: asyncpg.Connection, admin_headers
) -> None:
    """The staged rows travel as CSV (service/admin/importer.py staging_csv): quotes, commas,
    backslashes, COPY's own markers and non-ASCII text come through unchanged."""
    names = ['Ann "Q", Jr.', "back\\slash \\N", "NULL", "Zoë Ørsted-Ñúñez", "李小龍", ",", '"']
    body = ndjson(
        *(
            {
                "email": f"n{i}@example.org",
                "name": name,
                "consented_at": "2024-03-01T10:00:00+01:00",
                "consent_source": f"{name}; fair, stand 4",
            }
            for i, name in enumerate(names)
        )
    )
    response = await client.post(URL, content=body, headers=admin_headers)
    assert response.json() == {"imported": len(names), "pending": 0, "skipped": 0, "errors": []}
    rows = await db.fetch(
        "SELECT s.name, e.source, e.at FROM subscribers s JOIN consent_events e"
        " ON e.subscriber_id = s.id ORDER BY s.email"
    )
    assert sorted(r["name"] for r in rows) == sorted(names)
    assert {r["source"] for r in rows} == {f"{name}; fair, stand 4" for name in names}
    assert {r["at"].isoformat() for r in rows} == {"2024-03-01T09:00:00+00:00"}


async def test_a_body_of_many_chunks_counts_and_paces_as_one(
    app_factory, db: asyncpg.Connection, admin_headers, monkeypatch
) -> None:
    """Chunks are parsed while the one before is written, in one transaction: repeats are
    found across chunks, line numbers stay the file's, the pacing runs on unbroken."""
    monkeypatch.setattr(importer, "CHUNK_LINES", 4)
    lines = [{"email": f"p{i}@example.org"} for i in range(10)]
    lines[5] = {"email": "P0@example.org"}  # a repeat of line 1, in the second chunk
    lines[9] = {"email": "broken"}  # line 10, in the third chunk
    async with app_factory(import_confirm_rate=4, outbox_concurrency=0) as (_app, client):
        response = await client.post(URL, content=ndjson(*lines), headers=admin_headers)
    answer = response.json()
    assert (answer["imported"], answer["pending"], answer["skipped"]) == (0, 8, 2)
    assert [e["line"] for e in answer["errors"]] == [10]
    run_at = [
        r["run_at"]
        for r in await db.fetch("SELECT run_at FROM outbox WHERE kind = 'confirm' ORDER BY id")
    ]
    gaps = {round((b - a).total_seconds(), 3) for a, b in itertools.pairwise(run_at)}
    assert len(run_at) == 8 and gaps == {0.25}
