"""Scores every store gives alike: the share of a query's words a memory holds."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

from ..model import Memory
from ..query import Hit, SearchQuery
from .base import content_terms, plain_terms

__all__ = [
    "TermStats",
    "WordCounts",
    "idf",
    "query_stems",
    "rare_word_stems",
    "text_hits",
    "word_share",
]

#: A store's word statistics: for a query's words, how many memories it holds, and how many
#: of them hold each word (a word missing from the answer is held by none).
TermStats = Callable[[Sequence[str]], tuple[int, dict[str, int]]]


def query_stems(text: str) -> list[tuple[str, int]]:
    """Each distinct word of a query as its stem and its weight (its length, a rough
    stand-in for rarity), for word_share."""
    return [(stem(t), len(t)) for t in set(content_terms(text))]


class WordCounts:
    """A store's TermStats, with the counts of each word remembered while the store has not
    grown or shrunk by a tenth (counting a common word in a large store is a long read)."""

    #: Below this many memories every search counts afresh: it is cheap, and exact.
    REMEMBERED_FROM = 10_000

    def __init__(
        self, total: Callable[[], int], holding: Callable[[Sequence[str]], dict[str, int]]
    ) -> None:
        self._total = total
        self._holding = holding
        self._lock = threading.Lock()
        self._counted_at = 0
        self._known: dict[str, int] = {}

    def __call__(self, words: Sequence[str]) -> tuple[int, dict[str, int]]:
        """How many memories the store holds, and how many of them hold each word."""
        total = self._total()
        with self._lock:
            if total < self.REMEMBERED_FROM or abs(total - self._counted_at) * 10 > total:
                self._known, self._counted_at = {}, total
            new = [w for w in words if w not in self._known]
        if new:
            counted = self._holding(new)
            with self._lock:
                self._known.update({w: counted.get(w, 0) for w in new})
        with self._lock:
            return total, {w: self._known.get(w, 0) for w in words}


def rare_word_stems(text: str, stats: TermStats) -> list[tuple[str, float]]:
    """Each distinct word of a query as its stem and its weight by rarity in the store (its
    inverse document frequency, as BM25 weighs it), for word_share: a question's "when" and
    "did" weigh next to nothing, a name or a code most of all."""
    words = sorted(set(plain_terms(text)))
    if not words:
        return []
    total, held_by = stats(words)
    weights: dict[str, float] = {}
    for word in words:
        key = stem(word)
        weights[key] = max(weights.get(key, 0.0), idf(total, held_by.get(word, 0)))
    return list(weights.items())


def idf(total: int, holding: int) -> float:
    """BM25's inverse document frequency of a word `holding` of `total` memories hold."""
    holding = min(holding, total)
    return math.log(1.0 + (total - holding + 0.5) / (holding + 0.5))


def word_share(stems: Sequence[tuple[str, float]], memory: Memory) -> float:
    """How much of a query's words (query_stems) a memory holds, 0 to 1, by weight."""
    if not stems:
        return 0.0
    # Its words, tags and who recorded it: a question about Caroline is answered by what
    # she said, which never names her (the agent is embedded with the content too).
    said = " ".join([memory.content, *memory.tags, memory.agent or ""])
    held = {stem(w) for w in plain_terms(said)}
    weight = sum(w for _, w in stems)
    return sum(w for s, w in stems if s in held) / weight if weight else 0.0


def stem(word: str) -> str:
    """A crude stem, to tell "group" and "groups" alike (the indexes stem with Porter)."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def text_hits(query: SearchQuery, memories: Sequence[Memory]) -> list[Hit]:
    """Hits of a search by words (or by filters alone, for a query with no words)."""
    if not query.text.strip():
        return [Hit(m, 1.0, "filters") for m in memories]
    stems = query_stems(query.text)
    return [Hit(m, word_share(stems, m), "text") for m in memories]
