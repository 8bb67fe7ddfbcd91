"""The read cache: LRU with TTL, bounded by entries and bytes, for get() and search()."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Cache", "CacheStats"]

_MISSING: Any = object()


class CacheStats:
    """Counts of what the cache did; read by stats()."""

    __slots__ = ("evictions", "expired", "hits", "misses")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expired = 0


class Cache:
    """A thread-safe LRU cache whose entries also expire `ttl` seconds after they were put.

    Two areas share the bounds: records by id (a stored memory never changes, so only TTL and
    LRU retire them) and search results (cleared whenever a batch is stored, since any new
    memory may belong in any result).
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (value, size in bytes, expiry time)
        self._entries: OrderedDict[Hashable, tuple[Any, int, float]] = OrderedDict()
        self._search_keys: set[Hashable] = set()
        self.bytes = 0
        self.stats = CacheStats()
        # Bumped whenever a batch is stored: a search result read before then is stale.
        self.generation = 0

    @property
    def enabled(self) -> bool:
        """False when configured with no room (cache_size=0)."""
        return self.max_entries > 0 and self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any:
        """The cached value, or the sentinel `Cache.MISSING`."""
        if not self.enabled:
            return _MISSING
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return _MISSING
            if entry[2] <= self._clock():
                self._remove(key)
                self.stats.expired += 1
                self.stats.misses += 1
                return _MISSING
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry[0]

    def put(
        self, key: Hashable, value: Any, size: int, *, search_generation: int | None = None
    ) -> None:
        """Cache a value of about `size` bytes; evicts least recently used entries for room.

        A search result passes the `generation` read before its query: if a batch was stored
        since, the result may miss it and is not cached.
        """
        if not self.enabled or size > self.max_bytes:
            return
        search = search_generation is not None
        with self._lock:
            if search and search_generation != self.generation:
                return
            if key in self._entries:
                self._remove(key)
            self._entries[key] = (value, size, self._clock() + self.ttl)
            self.bytes += size
            if search:
                self._search_keys.add(key)
            while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                oldest = next(iter(self._entries))
                self._remove(oldest)
                self.stats.evictions += 1

    def invalidate_searches(self) -> None:
        """Forget every cached search result (a batch was stored)."""
        with self._lock:
            self.generation += 1
            for key in self._search_keys:
                entry = self._entries.pop(key, None)
                if entry is not None:
                    self.bytes -= entry[1]
            self._search_keys.clear()

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()
            self._search_keys.clear()
            self.bytes = 0

    def _remove(self, key: Hashable) -> None:
        _, size, _ = self._entries.pop(key)
        self.bytes -= size
        self._search_keys.discard(key)

    MISSING = _MISSING
