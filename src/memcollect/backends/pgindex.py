"""pgvector on PostgreSQL: a store's vectors indexed in the database (HNSW, cosine distance),
searched there, where the server has the extension; without it they are searched in RAM."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..errors import TransientBackendError
from ..model import Memory
from ..query import SearchQuery
from .pgrows import COLUMNS, from_row, row_filters
from .pgwatch import one_line

__all__ = ["PgVectorIndex", "vector_text"]

log = logging.getLogger("memcollect")

# The oldest pgvector whose HNSW scans go on past filtered-out rows (iterative scans):
# before it, a filter a small share of the store passes left searches with too few hits.
OLDEST = (0, 8, 0)
# Vectors whose index entry is made at once when pgvector is turned on for a store.
_BACKFILL_CHUNK = 2000
# Similarities the median is taken from: a sample of the table's blocks of about this many rows.
_SAMPLE = 2000

Execute = Callable[[str, Sequence[Any]], Any]
Read = Callable[[str, Sequence[Any]], list[Any]]
Connect = Callable[[], AbstractContextManager[Any]]


def vector_text(vector: Any) -> str:
    """A float32 vector as pgvector's text form."""
    return "[" + ",".join(f"{x:.7g}" for x in vector.tolist()) + "]"


class PgVectorIndex:
    """The embeddings table's `v` column of pgvector's type, its HNSW index, and searches
    over it."""

    def __init__(self, read: Read, connect: Connect, dimensions: int) -> None:
        self._read = read
        self._connect = connect
        self.dimensions = dimensions
        #: Whether this store's vectors are searched by pgvector (decided when it migrates).
        self.enabled = False

    def enable(self, execute: Execute) -> bool:
        """Inside the migration's transaction: use pgvector if the server has a recent
        enough one, installing it if it may; False (RAM) otherwise, and why is logged."""
        why = self._usable(execute)
        if why is not None:
            log.info("PostgreSQL: the vectors are searched in RAM: %s", why)
            self.enabled = False
            return False
        execute(f"ALTER TABLE embeddings ADD COLUMN IF NOT EXISTS v vector({self.dimensions})", ())
        execute(
            "CREATE INDEX IF NOT EXISTS embeddings_v ON embeddings "
            "USING hnsw (v vector_cosine_ops)",
            (),
        )
        self._backfill(execute)
        self.enabled = True
        return True

    def _usable(self, execute: Execute) -> str | None:
        """Why pgvector cannot serve this store (None if it can)."""
        found = execute(
            "SELECT e.extversion, n.nspname FROM pg_extension e "
            "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'",
            (),
        ).fetchone()
        if found is None:
            if (
                execute(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'", ()
                ).fetchone()
                is None
            ):
                return "the server has no pgvector extension"
            execute("SAVEPOINT memcollect_vector", ())
            try:
                execute("CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public", ())
            except Exception as exc:  # noqa: BLE001 - a role that may not install it
                execute("ROLLBACK TO SAVEPOINT memcollect_vector", ())
                return f"pgvector is not installed and could not be ({one_line(str(exc))})"
            execute("RELEASE SAVEPOINT memcollect_vector", ())
            log.info("PostgreSQL: installed the pgvector extension in schema public")
            return self._usable(execute)
        version, schema = found
        numbers = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
        if numbers < OLDEST:
            return f"pgvector {version} is older than 0.8.0, whose scans filter as they go"
        on_path = execute("SELECT %s = ANY(current_schemas(false))", (schema,)).fetchone()[0]
        if not on_path:
            return f"pgvector is installed in schema {schema!r}, which is not on the search path"
        return None

    def _backfill(self, execute: Execute) -> None:
        """Index the vectors stored before pgvector was used here."""
        import numpy as np

        while True:
            rows = execute(
                "SELECT id, vector FROM embeddings WHERE v IS NULL LIMIT %s", (_BACKFILL_CHUNK,)
            ).fetchall()
            if not rows:
                return
            texts = [vector_text(np.frombuffer(vector, np.float32)) for _, vector in rows]
            execute(
                "UPDATE embeddings e SET v = u.v::vector FROM unnest(%s::text[], %s::text[]) "
                "AS u(id, v) WHERE e.id = u.id",
                ([i for i, _ in rows], texts),
            )

    def nearest(
        self, query: SearchQuery, want: int, vector: str
    ) -> list[tuple[int, Memory, float]]:
        """Up to `want` memories passing the query's filters, nearest first, each with its
        row seq and cosine similarity."""
        clauses, params = row_filters(query)
        where = "".join(f" AND {c}" for c in clauses)
        columns = ", ".join(f"m.{c}" for c in COLUMNS.split(", "))
        sql = (
            f"SELECT e.seq, 1 - (e.v <=> %s::vector), {columns} FROM embeddings e "
            f"JOIN memories m ON m.id = e.id WHERE e.v IS NOT NULL{where} "
            "ORDER BY e.v <=> %s::vector LIMIT %s"
        )
        import psycopg

        try:
            with self._connect() as conn, conn.transaction():
                # Scans go on past rows the filters drop; the order is restored below.
                conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                conn.execute(f"SET LOCAL hnsw.ef_search = {max(40, min(1000, want * 2))}")
                rows = conn.execute(sql, [vector, *params, vector, want]).fetchall()
        except psycopg.Error as exc:
            raise TransientBackendError(
                f"PostgreSQL could not search by meaning ({type(exc).__name__}: "
                f"{one_line(str(exc))}): try again once it answers"
            ) from None
        found = [(r[0], from_row(r[2:]), _clip(r[1])) for r in rows]
        found.sort(key=lambda hit: -hit[2])
        return found

    def cosines(self, ids: Sequence[str], vector: str) -> dict[str, float]:
        """The similarity to the query of each memory (by id) that has a vector."""
        rows = self._read(
            "SELECT id, 1 - (v <=> %s::vector) FROM embeddings WHERE id = ANY(%s) "
            "AND v IS NOT NULL",
            (vector, list(ids)),
        )
        return {key: _clip(cos) for key, cos in rows}

    def median(self, vector: str, total: int) -> float:
        """The median similarity to the query over the store, from a sample of it."""
        if total <= _SAMPLE:
            sample = "embeddings"
        else:
            sample = f"embeddings TABLESAMPLE SYSTEM ({min(100.0, 100.0 * _SAMPLE / total):.4f})"
        rows = self._read(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY 1 - (v <=> %s::vector)) "
            f"FROM {sample} WHERE v IS NOT NULL",
            (vector,),
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else 0.0


def _clip(cosine: float) -> float:
    return min(1.0, max(0.0, float(cosine)))
