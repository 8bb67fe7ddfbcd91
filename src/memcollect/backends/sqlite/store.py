"""sqlite:// — the embedded default: one file, WAL, FTS5 search ranked by BM25."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence

from ...errors import ValidationError
from ...model import Memory
from ...query import Hit
from ..base import (
    DeadLetter,
    SearchQuery,
)
from .groups import KeptGroups
from .schema import (
    _COLUMNS,
    _COUNT_DELETION,
    _DELETIONS,
    _FLOOR_PLACEHOLDER,
    _FTS_FILL,
    _SEQ_OF_ID,
    _TOP_AND_FLOOR,
    _from_row,
    _insert_rows,
    _json_encode,
)
from .vectors import _EMBED_CHUNK

log = logging.getLogger("memcollect")

#: A batch this large prepares inserts of a megabyte or more, which the writer lets go of
#: once idle (release_memory); a trickle of small batches keeps its connection.
_MANY_ROWS = 64


class SQLiteBackend(KeptGroups):
    """Memories in one SQLite file; safe for several threads and processes at once.

    URL options: `fts=0` turns the full-text index off (search falls back to a scan),
    `busy_timeout=SECONDS` (default 5) bounds each wait for another writer's lock,
    `synchronous=NORMAL|FULL|OFF` (default NORMAL, which WAL keeps consistent on a crash),
    `semantic=1` embeds each memory once it is stored (in the worker's quiet moments), for
    search(mode="semantic" | "hybrid") (needs the semantic extra), `semantic=static` does so
    with static token vectors distilled from the model (a hundred times faster, less exact),
    `model=DIR` names another sentence-transformers model, and
    `rank_window=N` (default 1000) is how many of the newest memories holding every word of a
    query are ranked when more hold them (0 ranks them all), and `checkpoint=background`
    copies the write-ahead log into the file from a thread of its own instead of in the
    writer's commits (the storing process of storer="process" uses it).
    """

    name = "sqlite"

    # --- connections ---------------------------------------------------------------------

    # --- writes --------------------------------------------------------------------------

    def write_batch(self, batch: Sequence[Memory]) -> None:
        """Store memories in one transaction; ids already stored are skipped.

        With semantic recall on, the memories are embedded afterwards (`idle_work`, or the
        next semantic search): the model never holds storing back.
        """

        def insert(conn: sqlite3.Connection) -> None:
            top, floor = conn.execute(_TOP_AND_FLOOR).fetchone()
            if floor is not None and int(floor) > top:
                # The newest rows were deleted: SQLite would give their seqs to these rows,
                # and a seq must keep naming one memory (vectors and readers' cursors hold
                # it). A placeholder at the old top makes the new seqs start above it.
                top = int(floor)
                conn.execute(_FLOOR_PLACEHOLDER, (top,))
                _insert_rows(conn, batch)
                conn.execute("DELETE FROM memories WHERE seq = ?", (top,))
            else:
                _insert_rows(conn, batch)
            if self.has_fts:
                # Index only the rows this batch really added (not the ignored duplicates).
                conn.execute(f"{_FTS_FILL} WHERE seq > ?", (top,))

        self._write(insert)
        self._renew_writer = self._renew_writer or len(batch) >= _MANY_ROWS
        self._stored_rows()

    def idle_work(self) -> bool:
        """Embed the next few stored memories that have no vector yet (semantic recall), and
        fold a chunk of new rows into the groups; True while more of either is waiting."""
        embedding = self._embed_step()
        folding = self._fold_step()
        return embedding or folding

    def _embed_step(self) -> bool:
        if not self.supports_semantic or time.monotonic() < self._embed_retry_at:
            return False
        chunk = _EMBED_CHUNK[self.embedder_kind]
        try:
            done = self._embed_missing(chunk)
        except Exception as exc:  # noqa: BLE001 - reported in health(), tried again later
            self._embed_failures += 1
            pause = min(60.0, 0.5 * 2 ** min(self._embed_failures, 7))
            self._embed_retry_at = time.monotonic() + pause
            if self._embed_error != str(exc):
                log.warning("%s: embedding failed, trying again later: %s", self.path, exc)
            self._embed_error = str(exc)
            return False
        self._embed_failures, self._embed_error = 0, None
        return done == chunk

    def health_reasons(self) -> list[str]:
        """Why semantic recall or the groups lag, if they do."""
        reasons = []
        if self._embed_error is not None:
            reasons.append(f"memories are stored but not embedded, retrying: {self._embed_error}")
        if self._idle_folds.error is not None:
            reasons.append(
                f"memories are stored but not yet grouped, retrying: {self._idle_folds.error}"
            )
        return reasons

    def pending_embeddings(self) -> int:
        """How many stored memories have no vector yet (0 without semantic recall)."""
        if not self.supports_semantic:
            return 0
        # Every row up to the cursor has its vector: only the rows after it are counted.
        return int(
            self._read(
                "SELECT count(*) FROM memories m LEFT JOIN embeddings e ON e.seq = m.seq "
                "WHERE m.seq > ? AND e.seq IS NULL",
                (self._embedded_upto,),
            )[0][0]
        )

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep memories that could not be stored, with their errors."""
        rows = [
            (d.memory.id, _json_encode(d.memory).decode(), d.error, d.failed_at) for d in letters
        ]
        self._write(
            lambda conn: conn.executemany(
                "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?)", rows
            )
        )

    def scan(self, after: str | None, limit: int) -> list[Memory]:
        """Stored memories in id order, after the id `after`."""
        rows = self._read(
            f"SELECT {_COLUMNS} FROM memories WHERE id > ? ORDER BY id LIMIT ?",
            (after or "", limit),
        )
        return [_from_row(r) for r in rows]

    def delete(self, ids: Sequence[str]) -> None:
        """Remove memories (ids not stored are ignored), their full-text entries and vectors."""

        def remove(conn: sqlite3.Connection) -> None:
            top = conn.execute("SELECT coalesce(max(seq), 0) FROM memories").fetchone()[0]
            conn.execute(
                "INSERT OR REPLACE INTO memcollect_meta VALUES ('seq_floor', "
                "max(?, coalesce((SELECT CAST(value AS INTEGER) FROM memcollect_meta "
                "WHERE key = 'seq_floor'), 0)))",
                (top,),
            )
            # The rows' seqs, looked up once: the index, the vectors and the rows go by them.
            for memory_id in dict.fromkeys(ids):
                gone.extend(seq for (seq,) in conn.execute(_SEQ_OF_ID, (memory_id,)))
            seqs = [(seq,) for seq in gone]
            touched = self._groups_before_delete(conn, seqs)
            if self.has_fts:
                # An external-content index forgets a row only when told what it held.
                conn.executemany(
                    "INSERT INTO memories_fts(memories_fts, rowid, content, tags, facets) "
                    "SELECT 'delete', seq, content, tags, facets FROM memories_fts_source "
                    "WHERE seq = ?",
                    seqs,
                )
            # A seq can be given again to a new row: its vector must not outlive its memory.
            conn.executemany("DELETE FROM embeddings WHERE seq = ?", seqs)
            conn.executemany("DELETE FROM memories WHERE seq = ?", seqs)
            self._groups_after_delete(conn, touched)
            if gone:
                # A new count tells other processes that vectors they hold in RAM may be gone.
                conn.execute(_COUNT_DELETION)
                counted.append(conn.execute(_DELETIONS).fetchone()[0])

        gone: list[int] = []
        counted: list[int] = []
        self._write(remove, erase=True)
        self._vectors.forget(gone)
        if counted:
            self._vectors.deleted_here(counted[0])

    def remove_dead_letters(self, ids: Sequence[str]) -> None:
        """Forget dead letters."""
        params = [(i,) for i in ids]
        self._write(
            lambda conn: conn.executemany("DELETE FROM dead_letters WHERE id = ?", params),
            erase=True,
        )

    # --- reads ---------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory | None:
        """One memory by id."""
        rows = self._read(f"SELECT {_COLUMNS} FROM memories WHERE id = ?", (memory_id,))
        return _from_row(rows[0]) if rows else None

    def get_many(self, ids: Sequence[str]) -> list[Memory]:
        """The memories with these ids, in the order asked; ids not stored are left out."""
        found: dict[str, Memory] = {}
        # SQLite before 3.32 takes at most 999 parameters a statement.
        for start in range(0, len(ids), 500):
            page = ids[start : start + 500]
            marks = ",".join("?" * len(page))
            for row in self._read(f"SELECT {_COLUMNS} FROM memories WHERE id IN ({marks})", page):
                found[row[0]] = _from_row(row)
        return [found[i] for i in ids if i in found]

    def recent(self, limit: int, category: str | None = None) -> list[Memory]:
        """The newest memories first."""
        return self.search(SearchQuery(category=category, limit=limit))

    def search(self, query: SearchQuery) -> list[Memory]:
        """Full-text search ranked by BM25 (memories holding every word first), with filters;
        or by meaning (mode="semantic"), or both fused by reciprocal rank (mode="hybrid")."""
        if self._by_meaning(query):
            return [hit.memory for hit in self.search_hits(query)]
        return self._text(query)

    def search_hits(self, query: SearchQuery) -> list[Hit]:
        """search(), with each hit's score: its share of the query's words, its cosine
        similarity, or in hybrid search the stronger of the two."""
        if not self._by_meaning(query):
            return super().search_hits(query)
        if query.mode == "semantic":
            return self._semantic_hits(query)
        return self._hybrid_hits(query)

    def _by_meaning(self, query: SearchQuery) -> bool:
        if query.mode == "text" or not query.text.strip():
            return False
        if not self.supports_semantic:
            raise ValidationError(
                f"search mode {query.mode!r} needs embeddings: open the store with "
                "?semantic=1 (e.g. sqlite:///memories.db?semantic=1), which needs "
                "pip install 'memcollect[semantic]'"
            )
        return True

    # --- lifecycle -----------------------------------------------------------------------
