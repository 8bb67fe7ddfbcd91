"""The read cache: TTL on an injected clock, LRU order, byte bound, invalidation on store."""

from __future__ import annotations

from collections.abc import Callable

import memcollect as mc
from memcollect.cache import Cache
from memcollect.testing import FaultyBackend

Make = Callable[..., mc.MemoryCollector]


def test_entries_expire_after_ttl_on_the_injected_clock() -> None:
    now = [100.0]
    cache = Cache(max_entries=10, max_bytes=10_000, ttl=5.0, clock=lambda: now[0])
    cache.put("a", 1, 10)
    now[0] = 104.9
    assert cache.get("a") == 1
    now[0] = 105.0
    assert cache.get("a") is Cache.MISSING
    assert (cache.stats.hits, cache.stats.misses, cache.stats.expired) == (1, 1, 1)
    assert len(cache) == 0 and cache.bytes == 0


def test_least_recently_used_is_evicted_first() -> None:
    cache = Cache(max_entries=3, max_bytes=10_000, ttl=60.0)
    for key in "abc":
        cache.put(key, key, 10)
    assert cache.get("a") == "a"  # a is now the most recently used
    cache.put("d", "d", 10)
    assert cache.get("b") is Cache.MISSING
    assert [cache.get(k) for k in "acd"] == ["a", "c", "d"]
    assert cache.stats.evictions == 1


def test_the_byte_bound_evicts_until_it_fits() -> None:
    cache = Cache(max_entries=100, max_bytes=100, ttl=60.0)
    cache.put("a", "a", 40)
    cache.put("b", "b", 40)
    cache.put("c", "c", 40)  # 120 bytes: a goes
    assert cache.get("a") is Cache.MISSING and cache.bytes == 80
    cache.put("huge", "h", 101)  # larger than the whole cache: never cached
    assert cache.get("huge") is Cache.MISSING and cache.get("b") == "b"


def test_search_results_are_dropped_when_a_batch_is_stored() -> None:
    cache = Cache(max_entries=100, max_bytes=10_000, ttl=60.0)
    cache.put("record", "r", 10)
    cache.put("search", ("hit",), 10, search_generation=cache.generation)
    cache.invalidate_searches()
    assert cache.get("search") is Cache.MISSING
    assert cache.get("record") == "r"  # records never change: they stay


def test_a_search_read_before_a_store_is_not_cached_after_it() -> None:
    cache = Cache(max_entries=100, max_bytes=10_000, ttl=60.0)
    generation = cache.generation  # the query starts ...
    cache.invalidate_searches()  # ... a batch lands while it runs ...
    cache.put("search", ("stale",), 10, search_generation=generation)  # ... it must not stick
    assert cache.get("search") is Cache.MISSING


def test_collector_caches_get_and_search_and_reports_it(make_collector: Make) -> None:
    backend = FaultyBackend()
    c = make_collector(backend, cache_size=100)
    mid = c.collect("bug", "checkout hangs on firefox")
    assert c.flush()
    first = c.get(mid)
    reads_before = backend.inner.get
    calls = []
    backend.inner.get = lambda i: calls.append(i) or reads_before(i)  # type: ignore[method-assign]
    assert c.get(mid) == first and calls == []  # served from the cache
    assert [m.id for m in c.search("firefox")] == [mid]
    assert [m.id for m in c.search("firefox")] == [mid]
    s = c.stats()
    assert s.cache_hits == 2 and s.cache_misses >= 2 and s.cache_size == 2
    # A new memory is stored: the cached search must not hide it.
    other = c.collect("bug", "firefox crashes on print")
    assert c.flush()
    assert {m.id for m in c.search("firefox")} == {mid, other}


def test_cache_size_zero_turns_it_off(make_collector: Make) -> None:
    c = make_collector(cache_size=0)
    mid = c.collect("note", "uncached")
    assert c.flush()
    c.get(mid)
    c.get(mid)
    s = c.stats()
    assert (s.cache_hits, s.cache_misses, s.cache_size) == (0, 0, 0)
