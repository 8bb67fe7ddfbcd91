"""What the SQL stores (SQLite and PostgreSQL) share: the migration runner, filters as
WHERE clauses, and the reads that are the same SQL on both."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import msgspec

from ..errors import ValidationError
from ..model import DeadLetter, Memory
from ..query import SearchQuery
from .base import Backend

__all__ = ["SqlStore", "filter_clauses", "run_migrations"]

_memory_decode = msgspec.json.Decoder(Memory).decode

Execute = Callable[[str, Sequence[Any]], Any]


def filter_clauses(
    query: SearchQuery, mark: str, tags: Callable[[tuple[str, ...]], tuple[list[str], list[Any]]]
) -> tuple[list[str], list[Any]]:
    """The query's filters as WHERE clauses on `m` with `mark` placeholders, and their
    values; `tags` spells the tags filter in the store's own SQL."""
    clauses: list[str] = []
    params: list[Any] = []
    for column in ("category", "project", "agent", "session"):
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"m.{column} = {mark}")
            params.append(value)
    if query.since is not None:
        clauses.append(f"m.created_at >= {mark}")
        params.append(query.since)
    if query.until is not None:
        clauses.append(f"m.created_at < {mark}")
        params.append(query.until)
    if query.tags:
        tag_clauses, tag_params = tags(query.tags)
        clauses += tag_clauses
        params += tag_params
    return clauses, params


def run_migrations(
    execute: Execute,
    migrations: Sequence[tuple[int, str]],
    where: str,
    upsert: str,
    split: bool = False,
) -> None:
    """Bring a store's schema to the newest of `migrations`, inside the caller's
    transaction; refuse a schema newer than this memcollect knows. `split` runs a migration's
    statements one by one (SQLite's execute takes one statement at a time)."""
    newest = migrations[-1][0]
    execute("CREATE TABLE IF NOT EXISTS memcollect_meta (key TEXT PRIMARY KEY, value TEXT)", ())
    row = execute("SELECT value FROM memcollect_meta WHERE key = 'schema_version'", ()).fetchone()
    version = int(row[0]) if row else 0
    if version > newest:
        raise ValidationError(
            f"{where} has schema version {version}, newer than this memcollect "
            f"({newest}): upgrade memcollect"
        )
    for number, ddl in migrations:
        if number > version:
            for statement in ddl.split(";") if split else [ddl]:
                if statement.strip():
                    execute(statement, ())
    execute(upsert, (str(newest),))


class SqlStore(Backend):
    """The reads that are the same SQL on every SQL store."""

    #: The store's parameter placeholder.
    MARK: ClassVar[str] = "?"
    #: The dead letter's record column, read as JSON text.
    RECORD: ClassVar[str] = "record"

    @abstractmethod
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of a read, any error as the store's own one clear error."""

    def count(self, category: str | None = None) -> int:
        """How many memories are stored."""
        if category is None:
            return int(self._read("SELECT count(*) FROM memories")[0][0])
        sql = f"SELECT count(*) FROM memories WHERE category = {self.MARK}"
        return int(self._read(sql, (category,))[0][0])

    def count_by_category(self) -> dict[str, int]:
        """How many memories are stored, per category."""
        rows = self._read("SELECT category, count(*) FROM memories GROUP BY category")
        return {category: int(n) for category, n in rows}

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        rows = self._read(
            f"SELECT {self.RECORD}, error, failed_at FROM dead_letters "
            f"ORDER BY failed_at LIMIT {self.MARK}",
            (limit,),
        )
        return [DeadLetter(_memory_decode(r[0]), r[1], r[2]) for r in rows]
