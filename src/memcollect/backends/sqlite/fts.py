"""Full-text search: FTS5 queries from plain words, BM25 ranking, word coverage."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec

from ...model import Memory
from .._sql import filter_clauses
from ..base import (
    SearchQuery,
    best_of,
    content_terms,
    delete_page_order,
    every_word_first,
)
from ..scoring import WordCounts
from .connection import SQLiteConnection
from .schema import _COLUMNS, _from_row
from .terms import PorterStems, held_by

log = logging.getLogger("memcollect")


# The window of the newest matches ranked for memories holding some word of a query, as a
# multiple of rank_window (see TextSearch._window).
ANY_WORD_WINDOW = 2


_TAG_CLAUSE = "EXISTS (SELECT 1 FROM json_each(m.tags) WHERE value = ?)"


def _filters(query: SearchQuery) -> tuple[str, list[Any]]:
    clauses, params = filter_clauses(query, "?", lambda tags: ([_TAG_CLAUSE] * len(tags), [*tags]))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


# Up to this many memories holding a filter's facet tokens, a filter-only search reads them
# through the full-text index instead of scanning past every other row (see _few_by_facets).
_FEW_FACET_MATCHES = 2000


def _facet_tokens(query: SearchQuery) -> list[str]:
    """The `facets` tokens a memory passing the query's filters holds (time is not one)."""
    tokens = [
        prefix + value.encode().hex()
        for prefix, value in (
            ("c", query.category),
            ("p", query.project),
            ("a", query.agent),
            ("s", query.session),
        )
        if value is not None
    ]
    return tokens + ["t" + tag.encode().hex() for tag in query.tags]


def fts_all_words(text: str) -> str | None:
    """An FTS5 MATCH expression requiring every word of a query."""
    kept = content_terms(text)
    return " ".join(f'"{t}"' for t in dict.fromkeys(kept)) or None


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression for any text, as plain words: each is quoted, and they are
    OR-ed. Quotes, AND/OR/NOT, parentheses, `*` and every other character are just text, so
    no query can be malformed, and a query means what it means on every backend."""
    kept = content_terms(text)
    if not kept:
        return None
    return " OR ".join(f'"{t}"' for t in dict.fromkeys(kept))


def rarest(held: dict[str, int], most: int) -> list[str]:
    """The rarest words (by how many memories hold each, none for a word no memory holds),
    as many as together are held by at most `most` memories."""
    chosen, count = [], 0
    for word, holding in sorted(held.items(), key=lambda item: item[1]):
        if holding and count + holding > most:
            break
        if holding:
            chosen.append(word)
            count += holding
    return chosen


class TextSearch(SQLiteConnection):
    """Full-text search over the FTS5 index, ranked by BM25; a scan where there is none."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._stems = PorterStems()
        self._word_counts = WordCounts(self._count_memories, self._count_holding)

    def after_fork(self) -> None:
        """Forget the parent's connections and what they counted."""
        super().after_fork()
        self._stems = PorterStems()
        self._word_counts = WordCounts(self._count_memories, self._count_holding)

    def _count_memories(self) -> int:
        """How many memories there are, about (deletions in the middle are not counted)."""
        total = self._read(
            "SELECT coalesce((SELECT max(seq) FROM memories) - (SELECT min(seq) FROM memories)"
            " + 1, 0)"
        )
        return int(total[0][0])

    def _count_holding(self, words: Sequence[str]) -> dict[str, int]:
        """How many memories hold each word, by the index's counts."""
        if not self.has_fts:
            return {}
        return self._reading(lambda conn: held_by(conn, self._stems, words))

    def _text(self, query: SearchQuery) -> list[Memory]:
        if not self._opened:
            self._open()  # before has_fts is read: opening is what finds the index
        where, params = _filters(query)
        text = query.text.strip()
        if not text:
            few = self._few_by_facets(query, where, params, _COLUMNS, "m.id DESC")
            if few is not None:
                return [_from_row(r) for r in few]
            sql = f"SELECT {_COLUMNS} FROM memories m{where} ORDER BY m.id DESC LIMIT ?"
            return [_from_row(r) for r in self._read(sql, [*params, query.limit])]
        if not self.has_fts:
            return self._scan(query, where, params)
        some = fts_query(text)
        if some is None:
            return []
        every = fts_all_words(text) or some
        return every_word_first(
            lambda match, limit: (
                self._every_word(query, match, limit)
                if match == every
                else self._some_words(query, match, limit)
            ),
            every,
            some,
            query.limit,
        )

    def _every_word(self, query: SearchQuery, match: str, limit: int) -> list[Memory]:
        """The best memories holding every word of the query (the newest rank_window)."""
        window = self._window(every_word=True)
        return [m for _, m in self._ranked(match, query, limit, window=window, rows=True)]

    def _some_words(self, query: SearchQuery, match: str, limit: int) -> list[Memory]:
        """The best memories holding some word of the query: the newest window of them, and
        every memory holding one of its rarest words (at most half a window of them), by
        BM25. A rare word's old holder is the answer a window of newer memories holding
        a common word would hide ("psycopg timeout": the pool error of last month)."""
        window = self._window(every_word=False)
        ranked = self._ranked(match, query, limit, window=window)
        if not window or len(ranked) < limit:
            return [m for _, m in ranked]
        terms = list(dict.fromkeys(content_terms(query.text)))
        _, held = self._word_counts(terms)
        if sum(held.values()) <= window:
            return [m for _, m in ranked]  # the window held every match
        rare = rarest(held, window // 2)
        if not rare:
            return [m for _, m in ranked]
        # Few hold them: each checked against its row's filters costs less than merging
        # their lists with a filter's that a third of the store may hold.
        also = self._ranked(" OR ".join(f'"{t}"' for t in rare), query, limit, window=0, rows=True)
        # BM25 (lower is better in FTS5, hence negated) is the same function of the same
        # counts in both: a memory in both scores better where all its words counted.
        return best_of([(-score, memory) for score, memory in [*ranked, *also]], limit)

    def _window(self, every_word: bool) -> int:
        """How many of the newest matches are ranked (0: all of them). Memories holding
        every word differ little in BM25: the newest rank_window. Those holding some word can
        be a tenth of the store (a common word at a million memories), where ranking them all
        made the slowest searches 110-130 ms: the newest ANY_WORD_WINDOW times as many are
        ranked (and every holder of a rare word), which at the sizes the recall benchmarks
        measure is all of them."""
        if self.rank_window <= 0:
            return 0
        return self.rank_window if every_word else self.rank_window * ANY_WORD_WINDOW

    def filtered_ids(self, query: SearchQuery) -> list[str]:
        """Ids of memories that pass the filters, in the order of delete_page_order."""
        if not self._opened:
            self._open()
        where, params = _filters(query)
        order = delete_page_order(query)
        few = self._few_by_facets(query, where, params, "m.id", f"m.seq {order}")
        if few is not None:
            return [row[0] for row in few]
        # By the (category, id) index when a category is named, else in the table's order:
        # either way no page sorts every match again.
        column = "m.id" if query.category is not None else "m.seq"
        sql = f"SELECT m.id FROM memories m{where} ORDER BY {column} {order} LIMIT ?"
        return [row[0] for row in self._read(sql, [*params, query.limit])]

    def _few_by_facets(
        self,
        query: SearchQuery,
        where: str,
        params: list[Any],
        columns: str,
        order: str,
    ) -> list[Any] | None:
        """Rows passing filters that no index covers (project, agent, session, tags), found
        by their facet tokens; None when there are none of those filters or many memories
        hold their tokens."""
        if not (self.has_fts and (query.project or query.agent or query.session or query.tags)):
            return None
        # Reading in id or row order, a scan passes every memory before an old session's
        # (or a new one's); the index lists a rare value's few rows at once. For a common
        # value the scan finds its first rows sooner: a cheap count, capped, chooses.
        facets = " AND ".join(f'"{t}"' for t in _facet_tokens(query))
        match = f"facets : ({facets})"
        many = self._read(
            "SELECT count(*) FROM (SELECT rowid FROM memories_fts WHERE memories_fts MATCH ? "
            "LIMIT ?)",
            [match, _FEW_FACET_MATCHES + 1],
        )[0][0]
        if many > _FEW_FACET_MATCHES:
            return None
        sql = (
            f"SELECT {columns} FROM memories m{where}"
            f"{' AND' if where else ' WHERE'} m.seq IN "
            f"(SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?) ORDER BY {order} LIMIT ?"
        )
        return self._read(sql, [*params, match, query.limit])

    def _ranked(
        self, match: str, query: SearchQuery, limit: int, *, window: int, rows: bool = False
    ) -> list[tuple[float, Memory]]:
        """The `limit` best memories for an FTS5 MATCH expression with their BM25 scores,
        best first, with the query's filters; with a `window`, only that many (at least
        `limit`) newest matches are ranked."""
        # The user's words look in content and tags; filter values are tokens in `facets`.
        expression = f"{{content tags}} : ({match})"
        # A category or tag is often held by a large share of the store (a sixth of a million
        # memories), and merging its facet list with the words' cost 20-45 ms. The memories
        # holding every word are few: checking each against its row costs less. Those holding
        # some word can be a tenth of the store: for them the facet list is the cheaper way.
        by_rows = rows and (query.category is not None or bool(query.tags))
        facets = _facet_tokens(
            msgspec.structs.replace(query, category=None, tags=()) if by_rows else query
        )
        if facets:
            expression += " AND facets : (" + " AND ".join(f'"{t}"' for t in facets) + ")"
        # The words are quoted, so nothing in them can reach around the facet terms.
        return self._read_ranked(expression, query, limit, window, by_rows)

    def _read_ranked(
        self, match: str, query: SearchQuery, limit: int, window: int, by_rows: bool
    ) -> list[tuple[float, Memory]]:
        # Rank only (rowid, score) over the matches, then fetch whole rows for the top k:
        # sorting full rows (content, metadata) for thousands of matches costs more than bm25.
        exact = by_rows or query.since is not None or query.until is not None
        where, params = _filters(query) if exact else ("", [])
        if where:
            matches = (
                "FROM memories_fts f JOIN memories m ON m.seq = f.rowid "
                f"WHERE memories_fts MATCH ?{where.replace(' WHERE', ' AND', 1)}"
            )
        else:
            matches = "FROM memories_fts f WHERE memories_fts MATCH ?"
        inner = f"SELECT f.rowid AS seq, bm25(memories_fts, 1.0, 1.0, 0.0) AS score {matches}"
        args: list[Any] = [match, *params]
        if window:
            # The newest matches and their scores in one pass of the index, which walks them
            # newest first and stops at the window (a bound found first, then a second pass
            # ranking what is above it, evaluated the match twice).
            inner = f"SELECT seq, score FROM ({inner} ORDER BY f.rowid DESC LIMIT ?)"
            args.append(max(window, limit))
        columns = ", ".join("m." + c for c in _COLUMNS.split(", "))
        sql = (
            f"SELECT hits.score, {columns} FROM ({inner} ORDER BY score, seq DESC LIMIT ?) "
            "hits JOIN memories m ON m.seq = hits.seq ORDER BY hits.score, hits.seq DESC"
        )
        rows = self._read(sql, [*args, limit])
        return [(r[0], _from_row(r[1:])) for r in rows]

    def _scan(self, query: SearchQuery, where: str, params: list[Any]) -> list[Memory]:
        terms = content_terms(query.text)
        if not terms:
            return []
        like = "(m.content LIKE ? ESCAPE '\\')"
        matched = " + ".join(like for _ in terms)
        # Without the index, rank by how many of the words a memory holds, then by recency.
        sql = (
            f"SELECT {_COLUMNS} FROM memories m{where}"
            f"{' AND' if where else ' WHERE'} ({matched}) > 0 "
            f"ORDER BY ({matched}) DESC, m.id DESC LIMIT ?"
        )
        escaped = [
            "%" + t.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            for t in terms
        ]
        rows = self._read(sql, [*params, *escaped, *escaped, query.limit])
        return [_from_row(r) for r in rows]
