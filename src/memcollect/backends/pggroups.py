"""Groups kept in PostgreSQL (backends/keptgroups.py). A trigger queues the ids each INSERT or
COPY really stored (one statement a batch, on the rows it added); the queue is folded in the
worker's quiet moments and before any read of groups, by whichever process gets there, each
taking rows the others have not locked."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from ..errors import TransientBackendError
from ..groups import Group, GroupDetail, GroupQuery
from ..report import Summary
from .keptgroups import Dialect, IdleFolds, KeptGroupReads, fold_rows, recount
from .pgrows import COLUMNS, from_row
from .pgwatch import one_line

__all__ = ["GROUP_TABLES", "PgGroups"]

log = logging.getLogger("memcollect")

#: Rows folded in one transaction.
FOLD_CHUNK = 4096
# After folding this many chunks at once, the queue is vacuumed.
_VACUUM_AFTER = 8

#: The migration that makes the tables (the trigger is made by PgGroups.prepare).
GROUP_TABLES = """
CREATE TABLE IF NOT EXISTS group_members (
    member text COLLATE "C" PRIMARY KEY REFERENCES memories (id) ON DELETE CASCADE,
    created_at double precision NOT NULL,
    group_key text COLLATE "C" NOT NULL,
    category text COLLATE "C" NOT NULL,
    project text,
    agent text,
    priority smallint NOT NULL
);
CREATE INDEX IF NOT EXISTS group_members_by_time ON group_members (created_at, member);
CREATE INDEX IF NOT EXISTS group_members_by_key ON group_members (group_key, created_at);
CREATE TABLE IF NOT EXISTS groups (
    fingerprint text COLLATE "C" PRIMARY KEY,
    category text COLLATE "C" NOT NULL,
    representative text COLLATE "C" NOT NULL,
    priority smallint NOT NULL,
    count bigint NOT NULL,
    first_seen double precision NOT NULL,
    last_seen double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS groups_by_count ON groups (count DESC, fingerprint);
CREATE INDEX IF NOT EXISTS groups_by_first_seen ON groups (first_seen DESC);
CREATE TABLE IF NOT EXISTS group_queue (id text COLLATE "C" PRIMARY KEY);
"""

_DIALECT = Dialect(
    mark="%s",
    day="floor(created_at / 86400) * 86400",
    key="id",
    within=lambda n: "= ANY(%s)",
    array=True,
)

_INSERT_MEMBERS = (
    "INSERT INTO group_members (created_at, member, group_key, category, project, agent, "
    "priority) SELECT v.* FROM unnest(%s::float8[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::text[], %s::smallint[]) AS v(created_at, member, group_key, category, "
    "project, agent, priority) JOIN memories m ON m.id = v.member ON CONFLICT DO NOTHING"
)
_UPSERT = (
    "INSERT INTO groups AS g SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], "
    "%s::smallint[], %s::bigint[], %s::float8[], %s::float8[]) "
    "ON CONFLICT (fingerprint) DO UPDATE SET count = g.count + excluded.count, "
    "first_seen = least(g.first_seen, excluded.first_seen), "
    "last_seen = greatest(g.last_seen, excluded.last_seen), "
    "priority = greatest(g.priority, excluded.priority), "
    "representative = least(g.representative, excluded.representative)"
)


def _trigger_sql(schema: str) -> list[str]:
    return [
        f"""
        CREATE OR REPLACE FUNCTION "{schema}".memcollect_queue_groups()
            RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO "{schema}".group_queue SELECT id FROM new_rows ON CONFLICT DO NOTHING;
            RETURN NULL;
        END $$
        """,
        # Per statement, over the rows it really inserted: one INSERT a batch, COPY included.
        f"""
        CREATE TRIGGER memcollect_group AFTER INSERT ON "{schema}".memories
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
            EXECUTE FUNCTION "{schema}".memcollect_queue_groups()
        """,
    ]


@contextmanager
def _said_in_one_sentence() -> Iterator[None]:
    """A driver error while folding, as the one sentence a caller of groups() is owed."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        raise TransientBackendError(
            f"PostgreSQL could not fold new memories into groups ({type(exc).__name__}: "
            f"{one_line(str(exc))}): try again once it is reachable"
        ) from None


class PgGroups:
    """Folding a PostgreSQL store's rows into groups, and reading the groups."""

    def __init__(
        self,
        read: Callable[[str, Sequence[Any]], list[Any]],
        connect: Callable[[], AbstractContextManager[Any]],
    ) -> None:
        self._read = read
        self._connect = connect
        self.reads = KeptGroupReads(_DIALECT, read, COLUMNS, from_row)
        self.idle = IdleFolds(FOLD_CHUNK, "PostgreSQL")

    def prepare(self, execute: Callable[[str, Sequence[Any]], Any]) -> None:
        """Inside the migration's transaction: make the trigger if it is missing, and queue
        the rows stored before it was there."""
        schema = execute("SELECT current_schema()", ()).fetchone()[0]
        found = execute(
            "SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE t.tgname = 'memcollect_group' AND n.nspname = %s",
            (schema,),
        ).fetchone()
        if found is not None:
            return
        for statement in _trigger_sql(schema):
            execute(statement, ())
        execute(
            "INSERT INTO group_queue SELECT m.id FROM memories m WHERE NOT EXISTS "
            "(SELECT 1 FROM group_members g WHERE g.member = m.id) ON CONFLICT DO NOTHING",
            (),
        )

    # --- folding -------------------------------------------------------------------------

    def fold_chunk(self, wait: bool = False) -> int:
        """Fold up to FOLD_CHUNK queued rows, oldest first; how many were taken. With
        `wait`, rows another process is folding are waited for instead of skipped."""
        with _said_in_one_sentence():
            return self._fold_chunk(wait)

    def _fold_chunk(self, wait: bool) -> int:
        lock = "FOR UPDATE OF q" + ("" if wait else " SKIP LOCKED")
        with self._connect() as conn, conn.transaction():
            # A fold never waits long behind another transaction, nor keeps its locks if
            # this process stops answering mid-way: it is tried again later either way.
            conn.execute("SET LOCAL lock_timeout = '5s'")
            conn.execute("SET LOCAL idle_in_transaction_session_timeout = '30s'")
            rows = conn.execute(
                "SELECT q.id, m.category, m.content, m.priority, m.created_at, m.content_hash, "
                "m.fingerprint, m.project, m.agent FROM group_queue q "
                f"LEFT JOIN memories m ON m.id = q.id ORDER BY q.id LIMIT %s {lock}",
                (FOLD_CHUNK,),
            ).fetchall()
            if not rows:
                return 0
            members, groups = fold_rows([r for r in rows if r[1] is not None])
            if members:
                conn.execute(
                    _INSERT_MEMBERS, [list(column) for column in zip(*members, strict=True)]
                )
                conn.execute(_UPSERT, [list(column) for column in zip(*groups, strict=True)])
            conn.execute("DELETE FROM group_queue WHERE id = ANY(%s)", ([r[0] for r in rows],))
            return len(rows)

    def fold_all(self) -> None:
        """Fold the whole queue, waiting for rows other processes are folding right now."""
        chunks = 1
        while self.fold_chunk() == FOLD_CHUNK:
            chunks += 1
        if self._read("SELECT EXISTS (SELECT 1 FROM group_queue)", ())[0][0]:
            while self.fold_chunk(wait=True):
                chunks += 1
        if chunks >= _VACUUM_AFTER:
            # A big fold leaves the queue's pages full of dead rows, which each look at the
            # queue would read through until autovacuum comes, and tables whose statistics
            # (none yet, after a first load) lead the planner to a loop of index lookups
            # where a hash join takes half the time: bring both up to date now.
            with _said_in_one_sentence(), self._connect() as conn:
                conn.execute("VACUUM group_queue")
                conn.execute("ANALYZE groups, group_members")

    def delete(self, conn: Any, ids: Sequence[str]) -> None:
        """Delete memories and recount their groups, in the caller's transaction."""
        keys = [r[0] for r in conn.execute(
            "SELECT DISTINCT group_key FROM group_members WHERE member = ANY(%s)", (list(ids),)
        ).fetchall()]  # fmt: skip
        conn.execute("DELETE FROM memories WHERE id = ANY(%s)", (list(ids),))
        recount(conn.execute, "%s", keys)

    # --- reads ---------------------------------------------------------------------------

    def groups(self, query: GroupQuery) -> list[Group]:
        """Groups by the query's order, after folding what waits."""
        self.fold_all()
        return self.reads.groups(query)

    def group(self, fingerprint: str, limit: int, before: str | None) -> GroupDetail | None:
        """One group with a page of its members, after folding what waits."""
        self.fold_all()
        return self.reads.group(fingerprint, limit, before)

    def summary(self, query: GroupQuery) -> Summary:
        """A report's summary, after folding what waits."""
        self.fold_all()
        return self.reads.summary(query)
