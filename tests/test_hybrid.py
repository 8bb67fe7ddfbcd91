"""Hybrid search's weighing: words by their rarity in the store, meaning on a scale of its
own, neighbours; the word counts it reads from the full-text indexes."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memcollect as mc
from memcollect.backends.scoring import WordCounts, idf, rare_word_stems, word_share
from memcollect.backends.sqlite.terms import TOKENIZER, PorterStems, held_by
from memcollect.backends.vectors import NEIGHBOUR_SHARE, hybrid_scores, meaning_scale
from memcollect.validate import make_memory

from .test_semantic import SemanticUrl, semantic_url

__all__ = ["semantic_url"]


def memory(content: str, agent: str | None = None) -> mc.Memory:
    return make_memory("note", content, None, None, None, None, agent, None, 1 << 20)


def counts(held: dict[str, int], total: int = 1000) -> Callable[[Sequence[str]], tuple]:
    return lambda words: (total, {w: held[w] for w in words if w in held})


def test_rare_words_weigh_more_than_a_questions_common_ones() -> None:
    held = {"when": 900, "did": 800, "melanie": 12, "paint": 40}
    stems = dict(rare_word_stems("When did Melanie paint?", counts(held)))
    assert stems["melanie"] > stems["paint"] > stems["did"] > stems["when"] > 0
    # A word no memory holds is the rarest of all; one more memories hold than there are
    # (a store's count of a stop word) weighs nothing at all.
    assert idf(1000, 0) > idf(1000, 1) and idf(1000, 10**9) == pytest.approx(idf(1000, 1000))
    assert rare_word_stems("?!", counts({})) == []
    # The share of a question a memory holds is by those weights: the name beats the "when".
    weights = rare_word_stems("when did melanie paint", counts(held))
    assert word_share(weights, memory("Melanie was there")) > 0.4
    assert word_share(weights, memory("when did it rain")) < 0.2
    # Who said it counts as held: what Melanie said never names her.
    assert word_share(weights, memory("I painted a sunrise", agent="Melanie")) > 0.4


def test_hybrid_scores_sum_meaning_and_weighed_words_and_lend_to_neighbours() -> None:
    similarities = np.array([0.1, 0.2, 0.2, 0.3, 0.9], dtype=np.float32)  # median 0.2
    stems = [("biscuit", 5.0), ("when", 0.1)]
    memories = {
        "word": memory("Biscuit is her name"),  # the rare word, meaning at the median
        "meaning": memory("our new puppy"),  # no word, the best meaning
        "common": memory("when was that"),  # the common word only
    }
    cosine = {"word": 0.2, "meaning": 0.9, "common": 0.55}
    assert meaning_scale(similarities) == pytest.approx((0.2, 0.9))
    scores = hybrid_scores(memories, cosine, (0.2, 0.9), stems, {"meaning": ["reply"]})
    # Meaning is the share of the way from the median to the best: 1 for the best, 0.5
    # halfway, and never below 0; the rare word makes up for the meaning it lacks.
    assert scores["meaning"] == pytest.approx(1.0)
    assert scores["common"] == pytest.approx(0.5 + 2.5 * (0.1 / 5.1) ** 2, rel=1e-4)
    assert scores["word"] == pytest.approx(2.5 * (5 / 5.1) ** 2, rel=1e-4)
    assert list(scores)[:3] == ["word", "meaning", "common"]  # best first
    # A neighbour found by session alone receives a share of its neighbour's score.
    assert scores["reply"] == pytest.approx(NEIGHBOUR_SHARE * scores["meaning"])
    # An empty store has no scale: meaning counts for nothing, words still do.
    assert meaning_scale(np.array([], dtype=np.float32)) == (0.0, 0.0)
    empty = hybrid_scores(memories, {}, (0.0, 0.0), stems, {})
    assert next(iter(empty)) == "word" and empty["meaning"] == 0.0


def test_word_counts_are_remembered_only_in_a_large_store_that_stays_its_size() -> None:
    asked: list[list[str]] = []
    size = [500]

    def holding(words: Sequence[str]) -> dict[str, int]:
        asked.append(list(words))
        return {w: 7 for w in words if w != "gone"}

    counts = WordCounts(lambda: size[0], holding)
    assert counts(["a", "gone"]) == (500, {"a": 7, "gone": 0})
    counts(["a"])
    assert asked == [["a", "gone"], ["a"]]  # small: counted afresh, exactly
    size[0] = 20_000
    counts(["a", "b"])
    counts(["a", "b"])
    size[0] = 21_000  # grown by less than a tenth: still remembered
    counts(["b"])
    assert asked[2:] == [["a", "b"]]
    size[0] = 23_000  # grown by more: counted again
    assert counts(["b"]) == (23_000, {"b": 7})
    assert asked[3:] == [["b"]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8))
def test_words_are_stemmed_as_the_index_stems_them(words: list[str]) -> None:
    """The index's own tokenizer stems: a word's terms are what a table with it indexes."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{TOKENIZER}')")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    stems = PorterStems()
    got = stems(words)
    for word in dict.fromkeys(words):
        conn.execute("DELETE FROM t")
        conn.execute("INSERT INTO t(x) VALUES (?)", (word,))
        expected = tuple(t for (t,) in conn.execute("SELECT term FROM v ORDER BY offset"))
        assert got[word] == expected
    assert stems(words) == got  # remembered, the same


def test_sqlite_counts_memories_holding_each_word(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/words.db"
    with mc.MemoryCollector(url, durability="memory", data_dir=str(tmp_path)) as c:
        for content in ("the cat runs", "the cats ran", "a dog running", "the end"):
            c.collect("note", content, tags=["cat"])
        assert c.flush(30)
    conn = sqlite3.connect(f"file:{tmp_path}/words.db?mode=ro", uri=True)
    conn.execute("PRAGMA query_only=1")  # as a reader is: the count needs no write
    found = held_by(conn, PorterStems(), ["cat", "running", "the", "zebra", "runs"])
    # By content only (the tag "cat" is not counted), stemmed as the index stems.
    assert found == {"cat": 2, "running": 2, "the": 3, "zebra": 0, "runs": 2}


def test_a_questions_rare_word_beats_its_common_ones_on_every_store(
    make_collector: Callable[..., mc.MemoryCollector], semantic_url: SemanticUrl
) -> None:
    """'When did ...' is held by many memories, the name by one: hybrid ranks the name's."""
    c = make_collector(semantic_url("rare"))
    for i in range(40):
        c.collect("note", f"When did visitor {i} visit us? When it did, at noon.", session="s")
    c.collect("note", "Zanzibar was lovely in the spring", agent="Ivo", session="t")
    assert c.flush(120)
    hits = c.search_scored("When did Ivo visit Zanzibar?", limit=3)
    assert hits[0].memory.content == "Zanzibar was lovely in the spring"
    assert hits[0].found_by in ("text", "both")
