"""Scores every store gives alike: the share of a query's words a memory holds."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import Memory
from ..query import Hit, SearchQuery
from .base import content_terms, plain_terms

__all__ = ["query_stems", "text_hits", "word_share"]


def query_stems(text: str) -> list[tuple[str, int]]:
    """Each distinct word of a query as its stem and its weight (its length, a rough
    stand-in for rarity), for word_share."""
    return [(stem(t), len(t)) for t in set(content_terms(text))]


def word_share(stems: list[tuple[str, int]], memory: Memory) -> float:
    """How much of a query's words (query_stems) a memory holds, 0 to 1, by weight."""
    if not stems:
        return 0.0
    # Its words, tags and who recorded it: a question about Caroline is answered by what
    # she said, which never names her (the agent is embedded with the content too).
    said = " ".join([memory.content, *memory.tags, memory.agent or ""])
    held = {stem(w) for w in plain_terms(said)}
    return sum(w for s, w in stems if s in held) / sum(w for _, w in stems)


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
