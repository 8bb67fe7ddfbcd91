"""Embeddings: the in-RAM vector matrix, embedding what is stored, semantic and hybrid search."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any

import msgspec

from ...model import Memory
from ...query import Hit
from ..base import (
    SearchQuery,
)
from ..scoring import rare_word_stems, word_share
from ..vectors import (
    VectorMatrix,
    cosines,
    embed_texts,
    found_by,
    hybrid_scores,
    meaning_scale,
    numpy,
)
from .fts import TextSearch, _filters
from .schema import _COLUMNS, _DELETIONS, _from_row

log = logging.getLogger("memcollect")


# Memories embedded in one step of the worker's idle time: about a third of a second of the
# model (~5 ms a memory on 2 cores), or of static vectors (~0.05 ms).
_EMBED_CHUNK = {"model": 64, "static": 4096}


# A semantic search embeds at most this many chunks of memories still without a vector,
# oldest first (when the worker keeps up: those stored since it was last quiet); the worker
# embeds the rest of a backlog.
_SEARCH_EMBEDS_CHUNKS = 4


# Rows between a memory and the next one of its session, at most, for the two to count as
# neighbours in hybrid search (bounds the look, which has no index on session).
_NEIGHBOUR_SPAN = 200


def _insert_vectors(conn: sqlite3.Connection, stored: list[tuple[bytes, int, str]]) -> None:
    # Only beside the memory that was embedded: not if it was deleted meanwhile, nor beside
    # a new row that took its seq.
    conn.executemany(
        "INSERT OR REPLACE INTO embeddings SELECT seq, ? FROM memories WHERE seq = ? AND id = ?",
        stored,
    )


class SemanticSearch(TextSearch):
    """Search by meaning over the stored embeddings, and hybrid search fusing it with words."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._vectors = VectorMatrix()
        self._embedding = threading.Lock()

    def after_fork(self) -> None:
        """Forget the parent's connections and vectors (they are read again here)."""
        super().after_fork()
        self._vectors = VectorMatrix()
        self._embedding = threading.Lock()

    def _embed(self, texts: Sequence[str]) -> Any:
        return embed_texts(self.model_dir, self.embedder_kind, texts)

    def _embed_missing(self, limit: int) -> int:
        """Embed up to `limit` stored memories without a vector, oldest first (written since
        the last call, by any process, or before semantic recall was on); how many."""
        with self._embedding:  # the worker or a search, one at a time
            after = self._embedded_upto
            top = self._read("SELECT coalesce(max(seq), 0) FROM memories")[0][0]
            rows = self._read(
                "SELECT m.seq, m.id, m.content, m.agent FROM memories m "
                "LEFT JOIN embeddings e ON e.seq = m.seq "
                "WHERE m.seq > ? AND m.seq <= ? AND e.seq IS NULL ORDER BY m.seq LIMIT ?",
                (after, top, limit),
            )
            if rows:
                from ...semantic import embedded_text

                vectors = self._embed(
                    [embedded_text(content, agent) for *_, content, agent in rows]
                )
                stored = [
                    (vectors[i].tobytes(), seq, memory_id)
                    for i, (seq, memory_id, *_) in enumerate(rows)
                ]
                self._write(partial(_insert_vectors, stored=stored))
                self._vectors.add_written([seq for seq, *_ in rows], vectors)
            # Every row up to here has its vector now (or had one).
            self._embedded_upto = rows[-1][0] if len(rows) == limit else top
            return len(rows)

    def _sync_vectors(self) -> None:
        """Load the vectors stored since the last call (by any process) into RAM, after
        embedding up to a search's share of the memories still without one."""
        np = numpy()

        chunk = _EMBED_CHUNK[self.embedder_kind]
        for _ in range(_SEARCH_EMBEDS_CHUNKS):
            if self._embed_missing(chunk) < chunk:
                break
        with self._vectors.loading:
            deletions = self._read(_DELETIONS)[0][0]
            if deletions != self._vectors.deletions_seen:
                if self._vectors.deletions_seen is not None:
                    # Another process deleted memories: let go of the vectors whose rows are
                    # gone. (Searches skip deleted rows anyway; this keeps RAM to what is
                    # stored.) At the first sync nothing is held yet: nothing to look for.
                    checked = self._vectors.checked_seq
                    held = self._read("SELECT seq FROM embeddings WHERE seq <= ?", (checked,))
                    self._vectors.keep_only({seq for (seq,) in held}, upto=checked)
                self._vectors.deletions_seen = deletions
            seen, upto = self._vectors.checked_seq, self._embedded_upto
            if upto <= seen:
                return
            rows = self._read(
                "SELECT m.seq, e.vector FROM memories m JOIN embeddings e ON e.seq = m.seq "
                "WHERE m.seq > ? AND m.seq <= ? ORDER BY m.seq",
                (seen, upto),
            )
            vectors = [np.frombuffer(vector, np.float32) for _, vector in rows]
            matrix = np.vstack(vectors) if vectors else None
            self._vectors.add_synced([seq for seq, _ in rows], matrix, checked=upto)

    def _similarities(self, text: str) -> tuple[Any, Any]:
        """Every embedded row's seq, and its cosine similarity to `text`."""
        self._sync_vectors()
        seqs, matrix = self._vectors.snapshot()
        if not len(seqs):
            return seqs, seqs
        return seqs, matrix @ self._embed([text])[0]

    def _semantic_seqs(self, query: SearchQuery, want: int, seqs: Any, scores: Any) -> list[int]:
        """Row seqs passing the filters, nearest in meaning first."""
        np = numpy()
        if not len(seqs):
            return []
        where, params = _filters(query)
        found: list[int] = []
        pool = min(len(seqs), max(want * 20, 200))
        while True:
            # The nearest `pool` rows, best first, then the filters in SQL.
            top = np.argpartition(-scores, pool - 1)[:pool] if pool < len(seqs) else None
            order = top[np.argsort(-scores[top])] if top is not None else np.argsort(-scores)
            candidates = [int(seqs[i]) for i in order]
            if where or len(candidates) > want:
                marks = ",".join("?" * len(candidates))
                clause = f"{where} AND" if where else " WHERE"
                passing = {
                    r[0]
                    for r in self._read(
                        f"SELECT m.seq FROM memories m{clause} m.seq IN ({marks})",
                        [*params, *candidates],
                    )
                }
                found = [seq for seq in candidates if seq in passing]
            else:
                found = candidates
            if len(found) >= want or pool >= len(seqs):
                return found[:want]
            pool = min(len(seqs), pool * 4)

    def _rows_by_seq(self, seqs: Sequence[int]) -> list[tuple[int, Memory]]:
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs))
        rows = self._read(f"SELECT seq, {_COLUMNS} FROM memories WHERE seq IN ({marks})", seqs)
        by_seq = {r[0]: _from_row(r[1:]) for r in rows}
        return [(seq, by_seq[seq]) for seq in seqs if seq in by_seq]

    def _semantic_hits(self, query: SearchQuery) -> list[Hit]:
        seqs, scores = self._similarities(query.text)
        nearest = self._semantic_seqs(query, query.limit, seqs, scores)
        cosine = cosines(seqs, scores, nearest)
        return [Hit(m, cosine[seq], "meaning") for seq, m in self._rows_by_seq(nearest)]

    def _hybrid_hits(self, query: SearchQuery) -> list[Hit]:
        """Both halves ranked in full (text: any word, by BM25; meaning: by cosine), each
        candidate scored by its meaning and its rarity-weighed words, lending part of its
        score to its session's neighbours."""
        depth = max(50, query.limit * 5)
        wide = msgspec.structs.replace(query, limit=depth)
        text_hits = self._text(wide)
        by_text = self._seqs_of(text_hits)
        seqs, scores = self._similarities(query.text)
        by_meaning = self._semantic_seqs(wide, depth, seqs, scores)
        candidates = dict(zip(by_text, text_hits, strict=True))
        missing = [seq for seq in by_meaning if seq not in candidates]
        candidates.update(self._rows_by_seq(missing))
        stems = rare_word_stems(query.text, self._word_counts) if text_hits else []
        near = self._session_neighbours(set(candidates))
        cosine = cosines(seqs, scores, [*candidates, *(n for ns in near.values() for n in ns)])
        fused = list(hybrid_scores(candidates, cosine, meaning_scale(scores), stems, near))
        # Neighbours were found by session alone: they must pass the other filters too.
        rows = [(s, m) for s, m in self._rows_by_seq(fused[: depth * 2]) if query.matches(m)]
        rows = rows[: query.limit]
        texts, meanings = set(by_text), set(by_meaning)
        hits = []
        for seq, memory in rows:
            score = max(word_share(stems, memory), cosine.get(seq, 0.0))
            hits.append(Hit(memory, score, found_by(seq, texts, meanings)))
        return hits

    def _seqs_of(self, memories: Sequence[Memory]) -> list[int]:
        """The row seqs of memories, in their order."""
        if not memories:
            return []
        marks = ",".join("?" * len(memories))
        rows = self._read(f"SELECT id, seq FROM memories WHERE id IN ({marks})",
                          [m.id for m in memories])  # fmt: skip
        seq_of = dict(rows)
        return [seq_of[m.id] for m in memories if m.id in seq_of]

    def _session_neighbours(self, seqs: set[int]) -> dict[int, list[int]]:
        """For each row, the rows just before and after it in its session (within
        _NEIGHBOUR_SPAN rows: farther apart, they are no neighbours)."""
        if not seqs:
            return {}
        marks = ",".join("?" * len(seqs))
        rows = self._read(
            f"SELECT m.seq, (SELECT max(p.seq) FROM memories p WHERE p.session = m.session "
            f"AND p.seq < m.seq AND p.seq >= m.seq - {_NEIGHBOUR_SPAN}), "
            f"(SELECT min(n.seq) FROM memories n WHERE n.session = m.session "
            f"AND n.seq > m.seq AND n.seq <= m.seq + {_NEIGHBOUR_SPAN}) "
            f"FROM memories m WHERE m.seq IN ({marks}) AND m.session IS NOT NULL",
            list(seqs),
        )
        return {seq: [n for n in (before, after) if n is not None] for seq, before, after in rows}
