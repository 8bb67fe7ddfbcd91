"""Helpers for testing code that uses memcollect: an in-memory collector, a faulty backend."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .backends.base import Backend, DeadLetter, SearchQuery
from .backends.memory import MemoryBackend
from .collector import MemoryCollector
from .errors import PermanentBackendError, TransientBackendError
from .model import Memory
from .retry import ErrorKind

__all__ = ["FaultyBackend", "memory_collector"]


def memory_collector(**fields: Any) -> MemoryCollector:
    """A collector that keeps everything in this process and stores batches at once."""
    backend = fields.pop("backend_instance", None) or MemoryBackend()
    fields.setdefault("durability", "memory")
    fields.setdefault("batch_timeout", 0.0)
    return MemoryCollector(backend, **fields)


class FaultyBackend(Backend):
    """Wraps a backend and fails its writes on demand: outages, scheduled errors, poison records.

    - `fail_next(n, error)`: the next n writes raise `error` (transient by default).
    - `go_down(error)` / `come_back()`: every write fails until it comes back.
    - `poison`: a predicate; a batch holding a matching memory fails permanently.
    Reads and dead letters go straight to the wrapped backend.
    """

    name = "faulty"

    def __init__(
        self,
        inner: Backend | None = None,
        *,
        poison: Callable[[Memory], bool] | None = None,
    ) -> None:
        self.inner = inner or MemoryBackend()
        super().__init__(f"faulty+{self.inner.url}")
        self.poison = poison
        self._lock = threading.Lock()
        self._scheduled: deque[BaseException] = deque()
        self._down: BaseException | None = None
        self.write_calls = 0
        self.failed_calls = 0
        self.written: list[str] = []

    def fail_next(self, n: int = 1, error: BaseException | None = None) -> None:
        """Make the next n writes fail with `error`."""
        with self._lock:
            for _ in range(n):
                self._scheduled.append(error or TransientBackendError("injected failure"))

    def go_down(self, error: BaseException | None = None) -> None:
        """Fail every write until come_back()."""
        self._down = error or TransientBackendError("injected outage")

    def come_back(self) -> None:
        """End the outage."""
        self._down = None

    def open(self) -> None:
        """Open the wrapped backend."""
        self.inner.open()

    def write_batch(self, batch: Sequence[Memory]) -> None:
        """Write through, unless a failure is due."""
        with self._lock:
            self.write_calls += 1
            error = self._down or (self._scheduled.popleft() if self._scheduled else None)
            if error is None and self.poison is not None:
                bad = [m.id for m in batch if self.poison(m)]
                if bad:
                    error = PermanentBackendError(f"poison record {bad[0]}")
            if error is not None:
                self.failed_calls += 1
                raise error
        self.inner.write_batch(batch)
        with self._lock:
            self.written.extend(m.id for m in batch)

    def classify(self, exc: BaseException) -> ErrorKind | None:
        """As the wrapped backend classifies."""
        return self.inner.classify(exc)

    def get(self, memory_id: str) -> Memory | None:
        """Read through."""
        return self.inner.get(memory_id)

    def recent(self, limit: int, category: str | None = None) -> list[Memory]:
        """Read through."""
        return self.inner.recent(limit, category)

    def count(self, category: str | None = None) -> int:
        """Read through."""
        return self.inner.count(category)

    def count_by_category(self) -> dict[str, int]:
        """Read through."""
        return self.inner.count_by_category()

    def search(self, query: SearchQuery) -> list[Memory]:
        """Read through."""
        return self.inner.search(query)

    def filtered_ids(self, query: SearchQuery) -> list[str]:
        """Read through."""
        return self.inner.filtered_ids(query)

    def take_oldest(self, limit: int) -> list[Memory]:
        """Read through."""
        return self.inner.take_oldest(limit)

    def delete(self, ids: Sequence[str]) -> None:
        """Write through."""
        self.inner.delete(ids)

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Write through (dead letters are not failed on purpose)."""
        self.inner.add_dead_letters(letters)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read through."""
        return self.inner.dead_letters(limit)

    def remove_dead_letters(self, ids: Sequence[str]) -> None:
        """Write through."""
        self.inner.remove_dead_letters(ids)

    def move_lock_path(self) -> str | None:
        """As the wrapped backend."""
        return self.inner.move_lock_path()

    def after_fork(self) -> None:
        """As the wrapped backend."""
        self.inner.after_fork()

    def close(self) -> None:
        """Close the wrapped backend."""
        self.inner.close()
