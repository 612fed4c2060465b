"""Named, parameterised queries kept as SQL in `sql/queries/*.sql`.

The format is aiosql's::

    -- name: confirm_subscriber
    -- Activates a pending subscriber.
    UPDATE subscribers SET status = 'active' WHERE id = :id RETURNING id;

`:name` parameters become asyncpg's `$n` once, at load time (`::type` casts are left
alone); values always travel separately from the SQL text.

    q = queries("signup")
    row = await q.insert_subscriber.fetchrow(con, email=email, name=name)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import asyncpg

# sql/queries/ of the repository, installed as the package data `service.sql.queries`.
QUERY_DIR: Traversable = files("service.sql.queries")
_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_PARAM = re.compile(r"(?<![:\w]):([a-zA-Z_]\w*)")

Executor = asyncpg.Connection | asyncpg.Pool


@dataclass(frozen=True)
class Query:
    name: str
    sql: str
    params: tuple[str, ...]

    def args(self, values: dict[str, Any]) -> list[Any]:
        missing = [p for p in self.params if p not in values]
        extra = set(values) - set(self.params)
        if missing or extra:
            raise TypeError(
                f"query {self.name}: missing {missing or 'nothing'}, unexpected {sorted(extra)}"
            )
        return [values[p] for p in self.params]

    # `time_limit` (seconds) replaces the connection's DB_COMMAND_TIMEOUT for one statement
    # known to take longer, e.g. queueing a million emails; None keeps it.
    async def execute(self, con: Executor, time_limit: float | None = None, **values: Any) -> str:
        return await con.execute(self.sql, *self.args(values), timeout=time_limit)

    async def fetch(
        self, con: Executor, time_limit: float | None = None, **values: Any
    ) -> list[asyncpg.Record]:
        return await con.fetch(self.sql, *self.args(values), timeout=time_limit)

    async def fetchrow(
        self, con: Executor, time_limit: float | None = None, **values: Any
    ) -> asyncpg.Record | None:
        return await con.fetchrow(self.sql, *self.args(values), timeout=time_limit)

    async def fetchval(self, con: Executor, time_limit: float | None = None, **values: Any) -> Any:
        return await con.fetchval(self.sql, *self.args(values), timeout=time_limit)


def parse(text: str, source: str = "<string>") -> dict[str, Query]:
    """Split a file into its named queries and rewrite `:name` to `$n`."""
    found: dict[str, Query] = {}
    headers = list(_HEADER.finditer(text))
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        body = "\n".join(
            line for line in text[header.end() : end].splitlines() if not line.startswith("--")
        ).strip()
        name = header.group(1)
        if not body:
            raise ValueError(f"{source}: query {name} is empty")
        if name in found:
            raise ValueError(f"{source}: query {name} is defined twice")
        order: list[str] = []

        def number(match: re.Match[str], order: list[str] = order) -> str:
            param = match.group(1)
            if param not in order:
                order.append(param)
            return f"${order.index(param) + 1}"

        found[name] = Query(name, _PARAM.sub(number, body).rstrip(";"), tuple(order))
    return found


class Queries:
    """The queries of one file, as attributes."""

    def __init__(self, path: Traversable) -> None:
        self._queries = parse(path.read_text(encoding="utf-8"), path.name)

    def __getattr__(self, name: str) -> Query:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"no query named {name}") from None

    def __iter__(self):
        return iter(self._queries.values())


@functools.cache
def queries(area: str) -> Queries:
    """The named queries of `sql/queries/{area}.sql`, loaded once per process."""
    return Queries(QUERY_DIR / f"{area}.sql")
