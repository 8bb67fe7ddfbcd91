"""Semantic and hybrid search on PostgreSQL: vectors kept in the database, searched there by
pgvector where the server has it, else in RAM.

The vectors live in the `embeddings` table beside the rows (and go with them: a foreign key
deletes them). A trigger, made by the first store opened with `?semantic=1`, queues every
memory inserted by any writer; whoever has a model embeds the queue in its quiet moments.
With pgvector (pgindex) they are also in a column of its type with an HNSW index, and
searched there. Without it, each process searching by meaning keeps the vectors in a float32
matrix in RAM, read from the table as it grows: sound up to a few hundred thousand memories a
store (1.5 KB of RAM a memory, and a search's product over all of them): see
docs/postgresql.md.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import msgspec

from ..errors import TransientBackendError
from ..model import Memory
from ..query import Hit, SearchQuery
from .pgindex import PgVectorIndex, vector_text
from .pgrows import COLUMNS, from_row, row_filters
from .pgtext import word_holders
from .pgwatch import one_line
from .scoring import WordCounts, rare_word_stems, word_share
from .vectors import (
    VectorMatrix,
    cosines,
    embed_texts,
    found_by,
    hybrid_scores,
    meaning_scale,
    numpy,
)

log = logging.getLogger("memcollect")

__all__ = ["PgSemantic"]

# Memories embedded in one step of the worker's idle time (about a third of a second).
_EMBED_CHUNK = {"model": 64, "static": 4096}
# A semantic search embeds at most this many chunks of the queue itself, oldest first.
_SEARCH_EMBEDS_CHUNKS = 4
# Vectors are read again this far behind the newest one held: two embedders' commits may
# land out of the order of their seqs, by about a chunk.
_SYNC_OVERLAP = 4096
# How often a search checks whether other processes deleted memories whose vectors it holds.
_RECOUNT_S = 30.0

Read = Callable[[str, Sequence[Any]], list[Any]]
Connect = Callable[[], AbstractContextManager[Any]]


def enable_sql(table_schema: str) -> list[str]:
    """Statements that make a store queue its memories for embedding (idempotent)."""
    queue = f'"{table_schema}".embedding_queue'
    return [
        f"""
        CREATE OR REPLACE FUNCTION "{table_schema}".memcollect_queue_embeddings()
            RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO {queue} SELECT id FROM new_rows ON CONFLICT DO NOTHING;
            RETURN NULL;
        END $$
        """,
        f'DROP TRIGGER IF EXISTS memcollect_embed ON "{table_schema}".memories',
        # Per statement, over the rows it really inserted: one INSERT a batch, COPY included.
        f"""
        CREATE TRIGGER memcollect_embed AFTER INSERT ON "{table_schema}".memories
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
            EXECUTE FUNCTION "{table_schema}".memcollect_queue_embeddings()
        """,
        # Hybrid search lends weight to a hit's neighbours in its session.
        f'CREATE INDEX IF NOT EXISTS memories_session_id ON "{table_schema}".memories '
        "(session, id) WHERE session IS NOT NULL",
    ]


class PgSemantic:
    """Embedding a PostgreSQL store's memories, and searching them by meaning or both."""

    def __init__(
        self,
        kind: str,
        model_dir: str | None,
        read: Read,
        connect: Connect,
        vectors: str = "auto",
    ) -> None:
        from ..semantic import DIMENSIONS

        self.kind = kind
        self.model_dir = model_dir
        self._read = read
        self._connect = connect
        #: "auto": pgvector where the server has it; "ram": always the matrix in RAM.
        self.vectors = vectors
        self.index = PgVectorIndex(read, connect, DIMENSIONS)
        self._vectors = VectorMatrix()
        self._embedding = threading.Lock()
        self._recounted_at = 0.0
        self._retry_at = 0.0
        self._failures = 0
        self._word_counts = WordCounts(self._count_memories, self._count_holding)
        self.error: str | None = None

    def prepare(self, execute: Callable[[str, Sequence[Any]], Any]) -> None:
        """Inside the migration's transaction: queue memories for embedding, and start over
        when the vectors are another embedder's."""
        from ..semantic import embedder_id

        schema = execute("SELECT current_schema()", ()).fetchone()[0]
        wanted = embedder_id(self.kind, self.model_dir)
        row = execute("SELECT value FROM memcollect_meta WHERE key = 'embedder'", ()).fetchone()
        trigger = execute(
            "SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE t.tgname = 'memcollect_embed' AND n.nspname = %s",
            (schema,),
        ).fetchone()
        for statement in enable_sql(schema):
            execute(statement, ())
        if row is not None and row[0] != wanted:
            # Vectors of two models cannot be compared: every memory is embedded again.
            log.warning(
                "PostgreSQL schema %s: the embedding model changed (%s, now %s); every "
                "memory is embedded again",
                schema,
                row[0],
                wanted,
            )
            execute("TRUNCATE embeddings", ())
        if trigger is None or (row is not None and row[0] != wanted):
            # Memories stored before the queue existed, or whose vectors were just dropped.
            execute(
                "INSERT INTO embedding_queue SELECT m.id FROM memories m WHERE NOT EXISTS "
                "(SELECT 1 FROM embeddings e WHERE e.id = m.id) ON CONFLICT DO NOTHING",
                (),
            )
        execute(
            "INSERT INTO memcollect_meta VALUES ('embedder', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (wanted,),
        )
        if self.vectors != "ram":
            self.index.enable(execute)

    def after_fork(self) -> None:
        """Forget the parent's vectors (they are read again here)."""
        self._vectors = VectorMatrix()
        self._embedding = threading.Lock()

    # --- embedding -----------------------------------------------------------------------

    def idle_work(self) -> bool:
        """Embed the next chunk of the queue; True while more waits."""
        if time.monotonic() < self._retry_at:
            return False
        chunk = _EMBED_CHUNK[self.kind]
        try:
            done = self._embed_queued(chunk)
        except Exception as exc:  # noqa: BLE001 - retried with backoff, health says why
            self._failures += 1
            self._retry_at = time.monotonic() + min(60.0, 0.5 * 2 ** min(self._failures, 7))
            if self.error != str(exc):
                log.warning("PostgreSQL: embedding failed, trying again later: %s", exc)
            self.error = str(exc)
            return False
        self._failures, self.error = 0, None
        return done == chunk

    def pending(self) -> int:
        """How many stored memories wait for their vector."""
        return int(self._read("SELECT count(*) FROM embedding_queue", ())[0][0])

    def _embed_queued(self, limit: int) -> int:
        """Embed up to `limit` queued memories, oldest first; how many were taken."""
        import psycopg

        try:
            with self._embedding, self._connect() as conn, conn.transaction():
                return self._embed_rows(conn, limit)
        except psycopg.Error as exc:
            raise TransientBackendError(
                f"PostgreSQL could not embed the queued memories ({type(exc).__name__}: "
                f"{one_line(str(exc))}): they are embedded once it can"
            ) from None

    def _embed_rows(self, conn: Any, limit: int) -> int:
        from ..semantic import embedded_text

        # Other processes embedding at once take other rows of the queue.
        rows = conn.execute(
            "SELECT q.id, m.content, m.agent FROM embedding_queue q "
            "LEFT JOIN memories m ON m.id = q.id ORDER BY q.id LIMIT %s "
            "FOR UPDATE OF q SKIP LOCKED",
            (limit,),
        ).fetchall()
        if not rows:
            return 0
        alive = [(i, content, agent) for i, content, agent in rows if content is not None]
        if alive:
            vectors = embed_texts(
                self.model_dir, self.kind, [embedded_text(c, a) for _, c, a in alive]
            )
            ids = [i for i, *_ in alive]
            raw = [vectors[n].tobytes() for n in range(len(alive))]
            # Only beside a memory still stored (one deleted meanwhile has no row).
            if self.index.enabled:
                conn.execute(
                    "INSERT INTO embeddings (id, vector, v) SELECT u.id, u.vector, u.v::vector "
                    "FROM unnest(%s::text[], %s::bytea[], %s::text[]) AS u(id, vector, v) "
                    "JOIN memories m ON m.id = u.id ON CONFLICT (id) DO UPDATE "
                    "SET vector = excluded.vector, v = excluded.v",
                    (ids, raw, [vector_text(vectors[n]) for n in range(len(alive))]),
                )
            else:
                conn.execute(
                    "INSERT INTO embeddings (id, vector) SELECT v.id, v.vector "
                    "FROM unnest(%s::text[], %s::bytea[]) AS v(id, vector) "
                    "JOIN memories m ON m.id = v.id "
                    "ON CONFLICT (id) DO UPDATE SET vector = excluded.vector",
                    (ids, raw),
                )
        conn.execute("DELETE FROM embedding_queue WHERE id = ANY(%s)", ([r[0] for r in rows],))
        return len(rows)

    # --- the vectors in RAM --------------------------------------------------------------

    def _sync(self) -> None:
        """Embed a search's share of the queue, then read the vectors stored since the last
        call (by any process) into RAM."""
        np = numpy()
        self._embed_a_searchs_share()
        with self._vectors.loading:
            self._recount()
            held, _ = self._vectors.snapshot()
            since = max(0, self._vectors.checked_seq - _SYNC_OVERLAP)
            rows = self._read(
                "SELECT seq, vector FROM embeddings WHERE seq > %s ORDER BY seq", (since,)
            )
            if held is not None and len(held):
                known = set(held[held > since].tolist())
                rows = [r for r in rows if r[0] not in known]
            top = max([self._vectors.checked_seq, *(seq for seq, _ in rows)])
            matrix = np.vstack([np.frombuffer(v, np.float32) for _, v in rows]) if rows else None
            self._vectors.add_synced([seq for seq, _ in rows], matrix, checked=top)

    def _recount(self) -> None:
        """Now and then, let go of the vectors of memories deleted by other processes."""
        now = time.monotonic()
        if now - self._recounted_at < _RECOUNT_S:
            return
        self._recounted_at = now
        seqs, _ = self._vectors.snapshot()
        if not len(seqs):
            return
        stored = int(self._read("SELECT count(*) FROM embeddings", ())[0][0])
        if stored < len(seqs):
            kept = {r[0] for r in self._read("SELECT seq FROM embeddings", ())}
            self._vectors.keep_only(kept, upto=self._vectors.checked_seq)

    def forget(self, ids: Sequence[str]) -> None:
        """Before memories are deleted here: their vectors leave RAM too."""
        if not ids:
            return
        rows = self._read("SELECT seq FROM embeddings WHERE id = ANY(%s)", (list(ids),))
        self._vectors.forget([r[0] for r in rows])

    def _similarities(self, text: str) -> tuple[Any, Any]:
        self._sync()
        seqs, matrix = self._vectors.snapshot()
        if not len(seqs):
            return seqs, seqs
        return seqs, matrix @ embed_texts(self.model_dir, self.kind, [text])[0]

    # --- searching -----------------------------------------------------------------------

    def _nearest(
        self, query: SearchQuery, want: int, seqs: Any, scores: Any
    ) -> list[tuple[int, Memory]]:
        """Up to `want` stored memories passing the filters, nearest in meaning first."""
        np = numpy()
        if not len(seqs):
            return []
        clauses, params = row_filters(query)
        where = "".join(f" AND {c}" for c in clauses)
        columns = ", ".join(f"m.{c}" for c in COLUMNS.split(", "))
        pool = min(len(seqs), max(want * 20, 200))
        while True:
            top = np.argpartition(-scores, pool - 1)[:pool] if pool < len(seqs) else None
            order = top[np.argsort(-scores[top])] if top is not None else np.argsort(-scores)
            candidates = [int(seqs[i]) for i in order]
            rows = self._read(
                f"SELECT e.seq, {columns} FROM embeddings e JOIN memories m ON m.id = e.id "
                f"WHERE e.seq = ANY(%s){where}",
                [candidates, *params],
            )
            by_seq = {r[0]: from_row(r[1:]) for r in rows}
            found = [(seq, by_seq[seq]) for seq in candidates if seq in by_seq]
            if len(found) >= want or pool >= len(seqs):
                return found[:want]
            pool = min(len(seqs), pool * 4)

    def semantic_hits(self, query: SearchQuery) -> list[Hit]:
        """The memories nearest in meaning, each with its cosine similarity."""
        if self.index.enabled:
            vector = self._query_vector(query.text)
            hits = self.index.nearest(query, query.limit, vector)
            return [Hit(m, cos, "meaning") for _, m, cos in hits]
        seqs, scores = self._similarities(query.text)
        nearest = self._nearest(query, query.limit, seqs, scores)
        cosine = cosines(seqs, scores, [seq for seq, _ in nearest])
        return [Hit(m, cosine.get(seq, 0.0), "meaning") for seq, m in nearest]

    def _query_vector(self, text: str) -> str:
        """Embed a search's share of the queue, then the query, as pgvector's text."""
        self._embed_a_searchs_share()
        return vector_text(embed_texts(self.model_dir, self.kind, [text])[0])

    def _embed_a_searchs_share(self) -> None:
        """Embed up to _SEARCH_EMBEDS_CHUNKS chunks of the queue, oldest first, so that a
        search finds what was just stored (the worker embeds the rest)."""
        chunk = _EMBED_CHUNK[self.kind]
        for _ in range(_SEARCH_EMBEDS_CHUNKS):
            if self._embed_queued(chunk) < chunk:
                break

    def hybrid_hits(
        self, query: SearchQuery, by_words: Callable[[SearchQuery], list[Memory]]
    ) -> list[Hit]:
        """Both halves ranked in full (words: any word, by ts_rank_cd; meaning: by cosine),
        each candidate scored by its meaning and its rarity-weighed words, lending part of
        its score to its session's neighbours."""
        depth = max(50, query.limit * 5)
        wide = msgspec.structs.replace(query, limit=depth)
        text_hits = by_words(msgspec.structs.replace(wide, mode="text"))
        if self.index.enabled:
            vector = self._query_vector(query.text)
            found = self.index.nearest(wide, depth, vector)
            nearest = [(seq, m) for seq, m, _ in found]
            best = found[0][2] if found else 0.0
            scale = (self.index.median(vector, self._count_memories()), best)
        else:
            seqs, scores = self._similarities(query.text)
            nearest = self._nearest(wide, depth, seqs, scores)
            scale = meaning_scale(scores)
        memories = {m.id: m for m in text_hits} | {m.id: m for _, m in nearest}
        by_text = [m.id for m in text_hits]
        by_meaning = [m.id for _, m in nearest]
        near = self._session_neighbours(set(memories))
        wanted = [*memories, *(n for ns in near.values() for n in ns)]
        cosine = (
            self.index.cosines(wanted, vector)
            if self.index.enabled
            else self._cosines(wanted, seqs, scores)
        )
        stems = rare_word_stems(query.text, self._word_counts) if text_hits else []
        fused = list(hybrid_scores(memories, cosine, scale, stems, near))[: depth * 2]
        missing = [key for key in fused if key not in memories]
        if missing:
            memories |= {m.id: m for m in self._memories(missing)}
        # Neighbours were found by session alone: they must pass the other filters too.
        ranked = [memories[k] for k in fused if k in memories and query.matches(memories[k])]
        texts, meanings = set(by_text), set(by_meaning)
        return [
            Hit(
                m, max(word_share(stems, m), cosine.get(m.id, 0.0)), found_by(m.id, texts, meanings)
            )
            for m in ranked[: query.limit]
        ]

    def _cosines(self, ids: Sequence[str], seqs: Any, scores: Any) -> dict[str, float]:
        """The similarity of each memory (by id) that has a vector."""
        seq_of = dict(self._read("SELECT id, seq FROM embeddings WHERE id = ANY(%s)", (list(ids),)))
        by_seq = cosines(seqs, scores, list(seq_of.values()))
        return {key: by_seq[seq] for key, seq in seq_of.items() if seq in by_seq}

    def _count_memories(self) -> int:
        """How many memories there are: the planner's estimate once it is large (counting a
        million rows is a long read), else a count."""
        rows = self._read(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = 'memories'::regclass", ()
        )
        if rows and rows[0][0] >= WordCounts.REMEMBERED_FROM * 10:
            return int(rows[0][0])
        return int(self._read("SELECT count(*) FROM memories", ())[0][0])

    def _count_holding(self, words: Sequence[str]) -> dict[str, int]:
        """How many memories hold each word; a word the text search ignores (a stop word)
        counts as held by all, so that it weighs nothing."""
        held = word_holders(self._read, words)
        # idf counts a word held by more memories than there are as held by all.
        return {word: sys.maxsize if count is None else count for word, count in held.items()}

    def _memories(self, ids: Sequence[str]) -> Iterator[Memory]:
        rows = self._read(f"SELECT {COLUMNS} FROM memories WHERE id = ANY(%s)", (list(ids),))
        return (from_row(r) for r in rows)

    def _session_neighbours(self, ids: set[str]) -> dict[str, list[str]]:
        """For each memory, the ones just before and after it in its session."""
        if not ids:
            return {}
        rows = self._read(
            "SELECT m.id, "
            "(SELECT p.id FROM memories p WHERE p.session = m.session AND p.id < m.id "
            "ORDER BY p.id DESC LIMIT 1), "
            "(SELECT n.id FROM memories n WHERE n.session = m.session AND n.id > m.id "
            "ORDER BY n.id LIMIT 1) "
            "FROM memories m WHERE m.id = ANY(%s) AND m.session IS NOT NULL",
            (list(ids),),
        )
        return {key: [n for n in (before, after) if n is not None] for key, before, after in rows}
