"""Groups kept in the SQLite file (backends/keptgroups.py): rows past a watermark on seq are
folded, by this process's worker in its quiet moments or by any read of groups."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable

from ...groups import Group, GroupDetail, GroupQuery
from ...heap import give_back
from ...report import Summary
from ..keptgroups import MEMBER_COLUMNS, Dialect, IdleFolds, KeptGroupReads, fold_rows, recount
from .schema import _COLUMNS, _from_row
from .vectors import SemanticSearch

__all__ = ["FOLD_CHUNK", "KeptGroups"]

#: Rows folded in one transaction, and the page cache it has. A chunk's rows land all over
#: the groups' B-trees; with the pages they dirty held in RAM to the commit, each is written
#: once however many rows it takes, where a smaller cache writes some twice and a smaller
#: chunk writes each page for fewer rows. At half a million memories (bench corpus) a row
#: folds in ~50 µs this way, ~90 µs at 4,096 rows in 2 MB. The cache is SQLite's 2 MB again
#: after each chunk; up to ~0.8 s of the write lock a chunk at a million.
FOLD_CHUNK = 16_384
_FOLD_CACHE_KB = 16_384
#: The fewest rows a fold in a quiet moment takes (~10-30 ms at a million memories).
_FOLD_AT_LEAST = 256

_UPTO = "SELECT CAST(value AS INTEGER) FROM memcollect_meta WHERE key = 'groups_upto'"
_SET_UPTO = "INSERT OR REPLACE INTO memcollect_meta VALUES ('groups_upto', ?)"
_DIALECT = Dialect(
    mark="?",
    day="CAST(created_at / 86400 AS INTEGER) * 86400.0",
    key="seq",
    within=lambda n: "IN (" + ",".join("?" * n) + ")",
    array=False,
)
_UPSERT = (
    "INSERT INTO groups VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO UPDATE "
    "SET count = count + excluded.count, first_seen = min(first_seen, excluded.first_seen), "
    "last_seen = max(last_seen, excluded.last_seen), "
    "priority = max(priority, excluded.priority), "
    "representative = min(representative, excluded.representative)"
)


class KeptGroups(SemanticSearch):
    """groups(), group() and report summaries from groups kept in the file."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._fold_behind = True  # this process stored rows that may not be folded yet
        self._kept = KeptGroupReads(_DIALECT, self._read, _COLUMNS, _from_row)
        self._idle_folds = IdleFolds(FOLD_CHUNK, self.path)
        # When this process last stored rows, and what folding a row has cost lately.
        self._last_write = time.monotonic()
        self._fold_cost_s = 50e-6

    # --- folding -------------------------------------------------------------------------

    def _fold(self, conn: sqlite3.Connection, limit: int) -> int:
        """Fold up to `limit` rows stored after the watermark; how many."""
        upto = conn.execute(_UPTO).fetchone()
        rows = conn.execute(
            "SELECT seq, category, content, priority, created_at, content_hash, fingerprint, "
            "project, agent FROM memories WHERE seq > ? ORDER BY seq LIMIT ?",
            (int(upto[0]) if upto is not None else 0, limit),
        ).fetchall()
        if not rows:
            return 0
        members, groups = fold_rows(rows)
        conn.executemany(f"INSERT OR REPLACE INTO group_members ({MEMBER_COLUMNS}) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", members)  # fmt: skip
        conn.executemany(_UPSERT, groups)
        conn.execute(_SET_UPTO, (rows[-1][0],))
        return len(rows)

    def _fold_chunk(self, limit: int = FOLD_CHUNK) -> int:
        done: list[int] = []
        started = time.perf_counter()
        self._write(lambda conn: done.append(self._fold(conn, limit)), cache_kb=_FOLD_CACHE_KB)
        give_back()  # the pages of the larger cache, freed at its end (~0.1 ms)
        if done[0] >= 64:
            cost = (time.perf_counter() - started) / done[0]
            self._fold_cost_s = 0.7 * self._fold_cost_s + 0.3 * cost
        return done[0]

    def fold_groups(self) -> None:
        """Fold every row stored so far, by any process, into the groups."""
        # A read first: when nothing waits, a read of groups takes no write lock.
        top, upto = self._read(f"SELECT (SELECT coalesce(max(seq), 0) FROM memories), ({_UPTO})")[0]
        if upto is None or int(upto) < top:
            while self._fold_chunk() == FOLD_CHUNK:
                pass
        self._fold_behind = False

    def _fold_step(self) -> bool:
        """Fold a chunk of the rows this process stored, if any wait; True while more do.

        A quiet moment may end with the next memory: a fold takes no longer than the
        store has been quiet so far (at least _FOLD_AT_LEAST rows), so that memories
        arriving wait for it at most that long again. Under a load that leaves no longer
        gaps, the rest waits for a longer quiet moment, or for the next read of groups."""
        if self._fold_behind:
            quiet_s = time.monotonic() - self._last_write
            limit = max(_FOLD_AT_LEAST, min(FOLD_CHUNK, int(quiet_s / self._fold_cost_s)))
            self._fold_behind = self._idle_folds.step(lambda: self._fold_chunk(limit), limit)
        return self._fold_behind

    def _stored_rows(self) -> None:
        """A batch was stored: its rows wait for the next fold."""
        self._fold_behind = True
        self._last_write = time.monotonic()
        self._idle_folds.written()

    def _groups_before_delete(self, conn: sqlite3.Connection, seqs: list[tuple[int]]) -> set[str]:
        """Take the rows about to be deleted out of their groups; the groups they were in."""
        keys: set[str] = set()
        for (seq,) in seqs:
            row = conn.execute(
                "SELECT g.group_key, g.created_at FROM memories m JOIN group_members g "
                "ON g.created_at = m.created_at AND g.member = m.seq WHERE m.seq = ?",
                (seq,),
            ).fetchone()
            if row is not None:
                keys.add(row[0])
                conn.execute(
                    "DELETE FROM group_members WHERE created_at = ? AND member = ?", (row[1], seq)
                )
        return keys

    def _groups_after_delete(self, conn: sqlite3.Connection, keys: Iterable[str]) -> None:
        """Recount the groups that lost members."""
        recount(conn.execute, "?", keys)

    # --- reads ---------------------------------------------------------------------------

    def groups(self, query: GroupQuery) -> list[Group]:
        """Groups by the query's order, from the kept tables."""
        self.fold_groups()
        return self._kept.groups(query)

    def group(
        self, fingerprint: str, limit: int = 20, before: str | None = None
    ) -> GroupDetail | None:
        """One kept group, a page of its newest members and its memories per day."""
        self.fold_groups()
        return self._kept.group(fingerprint, limit, before)

    def summary(self, query: GroupQuery) -> Summary:
        """A report's summary, counted in SQL over the kept members of the two periods."""
        if query.project is not None or query.agent is not None:
            return super().summary(query)
        self.fold_groups()
        return self._kept.summary(query)
