"""Text search on PostgreSQL: plain words against the generated tsvector and its GIN index,
ranked by ts_rank_cd, memories holding every word first."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ..model import Memory
from ..query import SearchQuery
from .base import best_of, content_terms, every_word_first
from .pgrows import COLUMNS, from_row, row_filters, websearch_all_words, websearch_text

__all__ = ["RANK_POOL", "RARE_MOST", "RECENT_SPAN", "PgTextSearch", "word_holders"]

# Rows ranked cheaply (ts_rank) before the top ones are ranked by cover density (ts_rank_cd).
RANK_POOL = 1000
# A text search first ranks the matches among this many newest memories, and all of them only
# when those are too few. A GIN index lists matches but not their order: ranking a common
# word's tens of thousands of matches in a million reads each row (70-120 ms), where the
# newest span's are a few thousand (bench/search_million.py). The bound is looked up again
# after RECENT_BOUND_S, a cheap walk of the primary key.
RECENT_SPAN = 20_000
RECENT_BOUND_S = 5.0
# Beside the newest span, every holder of a query's words that at most this many memories
# hold is ranked too: an old memory holding a rare word is the answer a span of newer ones
# holding a common word would hide ("psycopg timeout": the pool error of last month).
RARE_MOST = 1000

Read = Callable[[str, Sequence[Any]], list[Any]]


def word_holders(
    read: Read, words: Sequence[str], most: int | None = None
) -> dict[str, int | None]:
    """How many memories hold each word, by the GIN index (each count stopping at `most`:
    a common word's holders are never all read); None for a word the text search ignores
    (a stop word of its English configuration)."""
    rows = read(
        "SELECT w.word, CASE WHEN numnode(q) > 0 THEN (SELECT count(*) FROM (SELECT 1 "
        "FROM memories m WHERE m.search @@ q LIMIT %s) held) END "
        "FROM unnest(%s::text[]) AS w(word), plainto_tsquery('english', w.word) AS q",
        (most, list(words)),
    )
    return {word: None if count is None else int(count) for word, count in rows}


class PgTextSearch:
    """Search by words, with the query's filters."""

    def __init__(self, read: Read) -> None:
        self._read = read
        # Where the newest RECENT_SPAN memories begin, and when that was looked up.
        self._bound: str | None = None
        self._bound_checked = -RECENT_BOUND_S

    def search(self, query: SearchQuery) -> list[Memory]:
        """The best memories for the query's words (the newest, for a query with none)."""
        clauses, params = row_filters(query)
        text = query.text.strip()
        if not text:
            where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
            sql = f"SELECT {COLUMNS} FROM memories m{where} ORDER BY m.id DESC LIMIT %s"
            return [from_row(r) for r in self._read(sql, [*params, query.limit])]
        some = websearch_text(text)
        if not some:
            return []
        every = websearch_all_words(text) or some
        terms = [] if every == some else list(dict.fromkeys(content_terms(text)))
        return every_word_first(
            lambda words, limit: self._ranked(
                words, terms if words == some else [], clauses, params, limit
            ),
            every,
            some,
            query.limit,
        )

    def _ranked(
        self, words: str, terms: list[str], clauses: list[str], params: list[Any], limit: int
    ) -> list[Memory]:
        """The `limit` best memories for a websearch_to_tsquery text: among the newest
        RECENT_SPAN memories when enough of them match (and every holder of its rare
        `terms`), else among all."""
        bound = self._recent_bound()
        if bound is None:
            return [m for _, m in self._rank(words, clauses, params, limit)]
        found = self._rank(words, [*clauses, "m.id >= %s"], [*params, bound], limit)
        if len(found) < limit:
            return [m for _, m in self._rank(words, clauses, params, limit)]
        rare = self._rare(terms)
        if not rare:
            return [m for _, m in found]
        # ts_rank_cd is a function of the memory and the query's words alone: a memory in
        # both rankings scores higher where all its words counted.
        return best_of([*found, *self._rank(" or ".join(rare), clauses, params, limit)], limit)

    def _rare(self, terms: list[str]) -> list[str]:
        """Those of `terms` that at least one and at most RARE_MOST memories hold (each
        count stops there: a common word's is never read through)."""
        if len(terms) < 2:
            return []
        held = word_holders(self._read, terms, most=RARE_MOST + 1)
        return [word for word, count in held.items() if count and count <= RARE_MOST]

    def _recent_bound(self) -> str | None:
        """The id RECENT_SPAN memories back from the newest (None in a smaller store)."""
        now = time.monotonic()
        if now >= self._bound_checked + RECENT_BOUND_S:
            rows = self._read(
                "SELECT id FROM memories ORDER BY id DESC OFFSET %s LIMIT 1", [RECENT_SPAN]
            )
            self._bound, self._bound_checked = (rows[0][0] if rows else None), now
        return self._bound

    def _rank(
        self, words: str, clauses: list[str], params: list[Any], limit: int
    ) -> list[tuple[float, Memory]]:
        """The `limit` best memories for a websearch_to_tsquery text with their ts_rank_cd,
        best first."""
        where = " AND ".join(["m.search @@ q", *clauses])
        columns = ", ".join("c." + c for c in COLUMNS.split(", "))
        # ts_rank_cd costs ~30 ms over the tens of thousands of rows a common word matches in
        # a million; ts_rank a tenth of that. So ts_rank picks a pool, and ts_rank_cd orders
        # the pool: on 1,000,000 rows the top 10 were identical for 40 of 40 queries, and
        # p50 / p99 fell from 58 / 339 ms to 48 / 180 ms.
        pool = max(RANK_POOL, limit * 10)
        sql = (
            f"SELECT ts_rank_cd(c.search, c.q), {columns} FROM (SELECT m.*, q FROM memories m, "
            f"websearch_to_tsquery('english', %s) q WHERE {where} "
            "ORDER BY ts_rank(m.search, q) DESC LIMIT %s) c "
            "ORDER BY 1 DESC, c.id DESC LIMIT %s"
        )
        rows = self._read(sql, [words, *params, pool, limit])
        return [(float(r[0]), from_row(r[1:])) for r in rows]
