"""Reads through the collector: scored search and its threshold, on every kind of store."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import memcollect as mc

Make = Callable[..., mc.MemoryCollector]


@pytest.fixture
def stored(make_collector: Make) -> mc.MemoryCollector:
    c = make_collector("memory://")
    c.collect("bug", "Login fails on Safari after a password reset", tags=["auth"])
    c.collect("bug", "Safari crashes at start")
    c.collect("note", "Lunch is at noon")
    assert c.flush(10)
    return c


def test_search_scored_gives_each_hit_its_score_and_how_it_was_found(
    stored: mc.MemoryCollector,
) -> None:
    hits = stored.search_scored("safari login reset")
    assert [round(h.score, 3) for h in hits] == [1.0, 0.375]
    assert all(isinstance(h, mc.Hit) and h.found_by == "text" for h in hits)
    assert [h.memory for h in hits] == stored.search("safari login reset")


def test_min_score_drops_weak_hits_from_either_form(stored: mc.MemoryCollector) -> None:
    assert [m.content for m in stored.search("safari login reset", min_score=0.5)] == [
        "Login fails on Safari after a password reset"
    ]
    assert len(stored.search_scored("safari login reset", min_score=0.375)) == 2
    assert stored.search_scored("safari login reset", min_score=1.0)[0].score == 1.0
    # Filters alone: every hit matches them fully.
    assert len(stored.search(category="bug", min_score=1.0)) == 2


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, float("nan")])
def test_a_threshold_outside_zero_to_one_is_one_clear_error(
    stored: mc.MemoryCollector, bad: object
) -> None:
    with pytest.raises(mc.ValidationError, match="min_score must be"):
        stored.search("safari", min_score=bad)  # type: ignore[arg-type]


def test_a_cached_answer_is_scored_and_filtered_alike(stored: mc.MemoryCollector) -> None:
    first = stored.search_scored("safari login reset")
    again = stored.search_scored("safari login reset", min_score=0.5)
    assert stored.stats().cache_hits >= 1
    assert again == first[:1]
