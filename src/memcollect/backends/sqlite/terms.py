"""How many memories hold each word: the full-text index's own counts, for weighing words."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

__all__ = ["PorterStems", "held_by"]

# The index's tokenizer: a word's stem here is the term the index keeps for it.
TOKENIZER = "porter unicode61 remove_diacritics 2"
# Words whose stems are remembered; past this the memory starts again (a store's vocabulary
# is bounded, a stream of ids and codes is not).
_REMEMBERED = 50_000


class PorterStems:
    """Stems words as the index does, by running them through its tokenizer in a private
    in-memory database (the index's terms are its stems; a stemmer of our own would differ)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._known: dict[str, tuple[str, ...]] = {}

    def __call__(self, words: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """Each word's terms in the index (one, or more for a word it splits; none for a
        word it drops)."""
        with self._lock:
            new = [w for w in dict.fromkeys(words) if w not in self._known]
            if new:
                if len(self._known) + len(new) > _REMEMBERED:
                    self._known.clear()
                self._known.update(self._tokenize(new))
            return {w: self._known[w] for w in words}

    def _tokenize(self, words: list[str]) -> dict[str, tuple[str, ...]]:
        conn = self._conn
        if conn is None:
            conn = self._conn = sqlite3.connect(":memory:", check_same_thread=False)
            conn.execute(f"CREATE VIRTUAL TABLE words USING fts5(word, tokenize='{TOKENIZER}')")
            conn.execute("CREATE VIRTUAL TABLE terms USING fts5vocab(words, instance)")
        with conn:
            conn.executemany("INSERT INTO words(rowid, word) VALUES (?, ?)", enumerate(words))
            found: dict[int, list[str]] = {}
            for term, doc in conn.execute("SELECT term, doc FROM terms ORDER BY doc, offset"):
                found.setdefault(doc, []).append(term)
            conn.execute("DELETE FROM words")
        return {word: tuple(found.get(i, ())) for i, word in enumerate(words)}


def held_by(conn: sqlite3.Connection, stems: PorterStems, words: Sequence[str]) -> dict[str, int]:
    """How many memories hold each word in their content, by the index's counts (a word it
    splits counts as its rarest part)."""
    _ensure_vocabulary(conn)
    terms_of = stems(words)
    wanted = sorted({t for terms in terms_of.values() for t in terms})
    if not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    sql = f"SELECT term, doc FROM temp.memories_terms WHERE col = 'content' AND term IN ({marks})"
    docs = dict(conn.execute(sql, wanted).fetchall())
    return {w: min(docs.get(t, 0) for t in terms) for w, terms in terms_of.items() if terms}


def _ensure_vocabulary(conn: sqlite3.Connection) -> None:
    # A read-only view of the index's terms, in this connection's own temporary schema: a
    # reader is query_only, which forbids even that, so it is lifted for the one statement.
    exists = conn.execute(
        "SELECT 1 FROM temp.sqlite_master WHERE name = 'memories_terms'"
    ).fetchone()
    if exists:
        return
    (query_only,) = conn.execute("PRAGMA query_only").fetchone()
    conn.execute("PRAGMA query_only=0")
    try:
        conn.execute(
            "CREATE VIRTUAL TABLE temp.memories_terms USING fts5vocab(main, memories_fts, col)"
        )
    finally:
        conn.execute(f"PRAGMA query_only={int(query_only)}")
