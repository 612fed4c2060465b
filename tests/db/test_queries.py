import re
from pathlib import Path

import pytest

from service.db.queries import QUERY_DIR, Queries, parse


def test_named_parameters_become_numbered_in_first_use_order() -> None:
    found = parse(
        "-- name: find\n-- Finds things.\n"
        "SELECT * FROM t WHERE a = :alpha AND b = :beta::int AND c = :alpha;\n"
    )
    query = found["find"]
    assert query.sql == "SELECT * FROM t WHERE a = $1 AND b = $2::int AND c = $1"
    assert query.params == ("alpha", "beta")
    assert query.args({"beta": 2, "alpha": 1}) == [1, 2]


def test_casts_are_not_parameters() -> None:
    query = parse("-- name: q\nSELECT now()::date, :x::text")["q"]
    assert query.sql == "SELECT now()::date, $1::text"
    assert query.params == ("x",)


def test_missing_or_unexpected_values_are_refused() -> None:
    query = parse("-- name: q\nSELECT :a")["q"]
    with pytest.raises(TypeError, match="missing"):
        query.args({})
    with pytest.raises(TypeError, match="unexpected"):
        query.args({"a": 1, "b": 2})


def test_duplicate_and_empty_queries_are_errors() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        parse("-- name: q\nSELECT 1;\n-- name: q\nSELECT 2;")
    with pytest.raises(ValueError, match="empty"):
        parse("-- name: q\n-- only a comment\n")


def test_every_query_file_of_the_service_parses() -> None:
    files = [p for p in QUERY_DIR.iterdir() if p.name.endswith(".sql")]
    for path in files:
        assert list(Queries(path)), f"{path.name} holds no query"


async def test_queries_run_on_the_real_database(db) -> None:
    query = parse("-- name: q\nSELECT :a::int + :b::int AS total")["q"]
    assert await query.fetchval(db, a=2, b=3) == 5


async def test_every_named_query_prepares_against_the_migrated_schema(db) -> None:
    """PostgreSQL parses, plans and type-checks each query: a query that no longer matches
    the schema (a renamed column, a dropped table) fails here, not in production."""
    prepared, headers = [], 0
    for path in QUERY_DIR.iterdir():
        if not path.name.endswith(".sql"):
            continue
        headers += path.read_text().count("\n-- name:") + path.read_text().startswith("-- name:")
        for query in Queries(path):
            try:
                statement = await db.prepare(query.sql)
            except Exception as exc:
                raise AssertionError(f"{path.name}: {query.name}: {exc}") from exc
            assert len(statement.get_parameters()) == len(query.params), query.name
            prepared.append(query.name)
    assert len(prepared) == headers and "sign_up" in prepared


def test_every_named_query_is_used_by_the_code() -> None:
    """A named query nothing calls is dead SQL that still has to be kept in step with the
    schema; each one is referenced as `.<name>` by service/ or bench/."""
    root = Path(__file__).resolve().parents[2]
    code = "\n".join(
        path.read_text()
        for folder in ("service", "bench")
        for path in (root / folder).rglob("*.py")
    )
    unused = [
        f"{path.name}: {query.name}"
        for path in QUERY_DIR.iterdir()
        if path.name.endswith(".sql")
        for query in Queries(path)
        if not re.search(rf"\.{query.name}\b", code)
    ]
    assert unused == []
