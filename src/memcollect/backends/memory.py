"""memory:// — the reference backend: a dict in this process, lost at exit."""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Sequence

import msgspec

from ..model import Memory
from .base import Backend, DeadLetter, SearchQuery, content_terms, plain_terms

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """Memories in a dict; search ranks by term frequency weighted by rarity."""

    name = "memory"
    persistent = False

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        self._lock = threading.Lock()
        self._rows: dict[str, Memory] = {}
        self._dead: dict[str, DeadLetter] = {}

    def write_batch(self, batch: Sequence[Memory]) -> None:
        """Store memories; ids already stored are skipped."""
        with self._lock:
            for memory in batch:
                if memory.id not in self._rows:
                    # A copy, so that later changes to the caller's object do not leak in.
                    self._rows[memory.id] = msgspec.structs.replace(memory)

    def get(self, memory_id: str) -> Memory | None:
        """One memory by id."""
        with self._lock:
            return self._rows.get(memory_id)

    def get_many(self, ids: Sequence[str]) -> list[Memory]:
        """The memories with these ids, in the order asked; ids not stored are left out."""
        with self._lock:
            return [self._rows[i] for i in ids if i in self._rows]

    def recent(self, limit: int, category: str | None = None) -> list[Memory]:
        """The newest memories first."""
        return self.search(SearchQuery(category=category, limit=limit))

    def count(self, category: str | None = None) -> int:
        """How many memories are stored."""
        with self._lock:
            if category is None:
                return len(self._rows)
            return sum(1 for m in self._rows.values() if m.category == category)

    def count_by_category(self) -> dict[str, int]:
        """How many memories are stored, per category."""
        with self._lock:
            return dict(Counter(m.category for m in self._rows.values()))

    def search(self, query: SearchQuery) -> list[Memory]:
        """Memories matching any query word, those holding every word first, each group ranked
        by tf-idf; by recency without words."""
        with self._lock:
            rows = [m for m in self._rows.values() if query.matches(m)]
        # As the SQL stores: common words neither match nor rank, unless the query has
        # nothing else.
        terms = every = set(content_terms(query.text))
        if not query.text.strip():
            rows.sort(key=lambda m: m.id, reverse=True)
            return rows[: query.limit]
        if not terms:
            return []  # text without a word ("???") finds nothing, as on every store
        docs = [(m, Counter(plain_terms(m.content) + [t.lower() for t in m.tags])) for m in rows]
        df = {t: sum(1 for _, words in docs if t in words) for t in terms}
        scored = []
        for memory, words in docs:
            score = sum(
                words[t] / (1 + len(words)) * math.log(1 + len(docs) / df[t])
                for t in terms
                if words[t]
            )
            if score > 0:
                scored.append((all(words[t] for t in every), score, memory.id, memory))
        scored.sort(key=lambda s: (s[0], s[1], s[2]), reverse=True)
        return [memory for *_, memory in scored[: query.limit]]

    def scan(self, after: str | None, limit: int) -> list[Memory]:
        """Stored memories in id order, after the id `after`."""
        with self._lock:
            rows = [m for m in self._rows.values() if after is None or m.id > after]
        return sorted(rows, key=lambda m: m.id)[:limit]

    def delete(self, ids: Sequence[str]) -> None:
        """Remove memories."""
        with self._lock:
            for memory_id in ids:
                self._rows.pop(memory_id, None)

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep memories that could not be stored, with their errors."""
        with self._lock:
            for letter in letters:
                self._dead[letter.memory.id] = letter

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        with self._lock:
            return sorted(self._dead.values(), key=lambda d: d.failed_at)[:limit]

    def remove_dead_letters(self, ids: Sequence[str]) -> None:
        """Forget dead letters."""
        with self._lock:
            for memory_id in ids:
                self._dead.pop(memory_id, None)
