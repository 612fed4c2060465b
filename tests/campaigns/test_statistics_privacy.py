"""The planner's statistics hold nobody: ANALYZE samples column values into
pg_statistic (`pg_stats`), out of an erasure's reach, so the columns that identify a
person, and the indexes built on them, have no statistics (migration 138)."""

from __future__ import annotations

import json

import asyncpg

from service.db import migrations
from tests import people

IMPORT_URL = "/admin/api/subscribers/import"
PEOPLE = [
    {
        "email": f"imported{n}@example.org",
        "name": f"Imported Person {n}",
        "consent_source": f"paper form {n}, spring fair",
        "consented_at": f"2024-03-{n + 1:02d}T10:00:00+00:00",
    }
    for n in range(12)
]


async def sampled(db: asyncpg.Connection, needles: list[str]) -> dict[str, set[str]]:
    """{table.column: needles found in its statistics}, as `pg_stats` shows them (every
    column and index expression of the schema, so a table added later is read too)."""
    rows = await db.fetch(
        "SELECT tablename, attname, concat_ws(' ', most_common_vals::text,"
        " histogram_bounds::text, most_common_elems::text) AS sample"
        " FROM pg_stats WHERE schemaname = 'public'"
    )
    found: dict[str, set[str]] = {}
    for row in rows:
        for needle in needles:
            if needle.lower() in (row["sample"] or "").lower():
                found.setdefault(f"{row['tablename']}.{row['attname']}", set()).add(needle)
    return found


def needles_of(items: list[dict[str, str]]) -> list[str]:
    return [item[key] for item in items for key in ("email", "name", "consent_source")]


async def test_an_import_leaves_no_address_or_name_in_the_statistics_nor_after_erasure(
    client, db, admin_headers, settings
) -> None:
    campaign = await people.add_campaign(db)
    person = await people.add_person(db, settings, "arranged@example.org", "stats", campaign)
    for n in range(12):
        await people.add_person(db, settings, f"other{n}@example.org", f"stats{n}", campaign)
    body = "\n".join(json.dumps(item) for item in PEOPLE).encode()
    response = await client.post(IMPORT_URL, content=body, headers=admin_headers)
    assert response.status_code == 200 and response.json()["imported"] == len(PEOPLE)
    needles = [*needles_of(PEOPLE), *person.needles]

    # The import's own ANALYZE of its staging table committed with it.
    assert await sampled(db, needles_of(PEOPLE)) == {}
    # Autovacuum's ANALYZE of every table, as it comes after any change of a small list.
    await db.execute("ANALYZE")
    assert await sampled(db, needles) == {}
    sample = await db.fetchval(
        "SELECT histogram_bounds::text FROM pg_stats"
        " WHERE tablename = 'subscribers' AND attname = 'id'"
    )
    assert sample, "ANALYZE ran and kept the statistics that name nobody"

    for item in PEOPLE:
        erased = await client.delete(
            f"/admin/api/subscribers/{item['email']}", headers=admin_headers
        )
        assert erased.status_code == 204
    assert await people.find_anywhere(db, tuple(needles_of(PEOPLE))) == {}
    assert await sampled(db, needles) == {}


async def test_the_migration_deletes_the_samples_taken_before_it(db) -> None:
    """A target of 0 only stops new samples: the rows ANALYZE took before stay until the
    column's statistics are dropped, which 138 does (keeping a trigger on the address,
    which would otherwise forbid it)."""
    [migration] = [m for m in migrations.discover() if m.name.startswith("138_")]
    await db.execute("ALTER TABLE subscribers ALTER COLUMN email SET STATISTICS -1")
    await db.execute("ALTER TABLE subscribers ALTER COLUMN name SET STATISTICS -1")
    await db.execute("ALTER INDEX subscribers_email_key ALTER COLUMN 1 SET STATISTICS -1")
    await db.execute(
        "CREATE FUNCTION touched() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
    )
    await db.execute(
        "CREATE TRIGGER address_touched BEFORE UPDATE OF email ON subscribers FOR EACH ROW"
        " WHEN (OLD.email IS DISTINCT FROM NEW.email) EXECUTE FUNCTION touched()"
    )
    trigger = await db.fetchval(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'address_touched'"
    )
    await people.add_many(db, 50)
    await db.execute("ANALYZE subscribers")
    before = await sampled(db, ["reader1@example.org", "Reader 1"])
    assert {"subscribers.email", "subscribers.name", "subscribers_email_key.lower"} <= set(before)
    # 138 ran before 161 made a view on opens' columns, which forbids 138's ALTER TYPE.
    view = await db.fetchval("SELECT pg_get_viewdef('opens_readable')")
    await db.execute("DROP VIEW opens_readable")

    await db.execute(migration.sql)
    await db.execute(f"CREATE VIEW opens_readable AS {view}")

    assert await sampled(db, ["reader1@example.org", "Reader 1"]) == {}
    await db.execute("ANALYZE subscribers")
    assert await sampled(db, ["reader1@example.org", "Reader 1"]) == {}
    assert trigger == await db.fetchval(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'address_touched'"
    )
    # The planner still knows an address names one row (its unique index says so).
    plan = await db.fetchval(
        "EXPLAIN SELECT id FROM subscribers WHERE lower(email) = lower('reader1@example.org')"
    )
    assert "rows=1 " in plan


async def test_every_address_ip_and_user_agent_column_has_no_statistics(db) -> None:
    """By name, so that a column a later migration adds is held to it too (and the index
    expressions built on an address)."""
    columns = await db.fetch(
        "SELECT c.relname, a.attname, a.attstattarget FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')"
        " AND a.attnum > 0 AND NOT a.attisdropped"
        " AND (a.attname IN ('email', 'ip', 'user_agent', 'addr', 'agent')"
        "      OR a.attname LIKE '%\\_email'"
        "      OR a.attname LIKE '%\\_ip')"
    )
    assert {(r["relname"], r["attname"]) for r in columns} >= {
        ("subscribers", "email"),
        ("opens", "ip"),
        ("opens", "addr"),
        ("user_agents", "agent"),
        ("consent_events", "user_agent"),
        ("address_changes", "new_email"),
        ("import_staging", "email"),
    }
    assert [(r["relname"], r["attname"]) for r in columns if r["attstattarget"] != 0] == []
    indexes = await db.fetch(
        "SELECT i.indexrelid::regclass::text AS name, a.attstattarget FROM pg_index i"
        " JOIN pg_attribute a ON a.attrelid = i.indexrelid"
        " WHERE i.indrelid = 'subscribers'::regclass AND i.indexprs IS NOT NULL"
        " AND pg_get_indexdef(i.indexrelid) LIKE '%lower(email)%'"
        " AND i.indkey[a.attnum - 1] = 0"  # its expression columns, wherever they are
    )
    assert {r["name"] for r in indexes} >= {
        "subscribers_email_key",
        "subscribers_email_order",
        "subscribers_status_email_order",
    }
    assert [r["name"] for r in indexes if r["attstattarget"] != 0] == []
