"""Counters, latency percentiles, and the Stats and Health snapshots."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Literal

import msgspec

__all__ = ["Health", "Latency", "Stats"]

HealthStatus = Literal["ok", "degraded", "failing"]


class Latency(msgspec.Struct, frozen=True):
    """Percentiles of a latency, in milliseconds, over the most recent samples."""

    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    max_ms: float = 0.0
    samples: int = 0


class Stats(msgspec.Struct, frozen=True):
    """A snapshot of what a collector has done since it started."""

    accepted: int
    stored: int
    retried: int
    retried_memories: int
    failed: int
    dead_lettered: int
    dropped: int
    dropped_by_reason: dict[str, int]
    queue_depth: int
    in_flight: int
    batches: int
    batch_write_latency: Latency
    #: From collect() to stored, over the last 4,096 samples: at most 256 memories a batch,
    #: evenly spaced from its oldest.
    accept_to_stored_latency: Latency
    throughput_per_s: float
    recent_throughput_per_s: float
    uptime_s: float
    backend: str
    circuit: str
    spool_bytes: int = 0
    spool_segments: int = 0
    spool_pending: int = 0
    replayed: int = 0
    corrupt_skipped: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0
    cache_expired: int = 0
    cache_size: int = 0
    stored_in_fallback: int = 0
    moved_to_primary: int = 0
    #: Memories deleted by delete() (stored ones and dead letters).
    deleted: int = 0
    #: Memories stored but not yet embedded for semantic recall (the worker embeds them).
    pending_embeddings: int = 0
    #: The storing process (storer="process", or "auto" once a process took the load; None
    #: while a thread stores), and how often it was started again.
    storer_pid: int | None = None
    storer_restarts: int = 0

    def to_dict(self) -> dict[str, object]:
        """The snapshot as plain builtins (JSON-ready)."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


class Health(msgspec.Struct, frozen=True):
    """Whether a collector is storing what it accepts, and if not, why."""

    status: HealthStatus
    reasons: list[str]
    backend: str

    @property
    def ok(self) -> bool:
        """True when status is "ok"."""
        return self.status == "ok"


class Reservoir:
    """The most recent latency samples (seconds), for percentiles."""

    def __init__(self, size: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        """Record one sample."""
        self._samples.append(seconds)

    def extend(self, seconds: Iterable[float]) -> None:
        """Record many samples."""
        self._samples.extend(seconds)

    def snapshot(self) -> Latency:
        """Percentiles over the samples held now."""
        data = sorted(self._samples)
        if not data:
            return Latency()
        n = len(data)
        return Latency(
            p50_ms=data[(n - 1) // 2] * 1000.0,
            p99_ms=data[min(n - 1, int(n * 0.99))] * 1000.0,
            max_ms=data[-1] * 1000.0,
            mean_ms=sum(data) / n * 1000.0,
            samples=n,
        )


class Counters:
    """The worker's counters; written by the worker thread, read by anyone."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = self.clock()
        self.stored = 0
        self.retried = 0
        self.retried_memories = 0
        self.stored_in_fallback = 0
        self.moved_to_primary = 0
        self.deleted = 0
        self.failed = 0
        self.dead_lettered = 0
        self.batches = 0
        self.replayed = 0
        self.dropped: Counter[str] = Counter()
        self.last_drop: float | None = None
        self.batch_latency = Reservoir()
        self.store_latency = Reservoir()
        # (time, stored) pairs, one a batch, for the throughput of the last minute.
        self._window: deque[tuple[float, int]] = deque(maxlen=4096)
        self._lock = threading.Lock()

    def record_stored(self, count: int, write_seconds: float, created: Iterable[float]) -> None:
        """Account for one batch written to the backend."""
        now_wall = time.time()
        with self._lock:
            self.stored += count
            self.batches += 1
            self._window.append((self.clock(), self.stored))
        self.batch_latency.add(write_seconds)
        self.store_latency.extend(now_wall - t for t in created)

    def absorb(self, deltas: dict[str, int], dropped: dict[str, int]) -> None:
        """Add counts made elsewhere (the storing process): counters and drops by reason."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)
            for reason, count in dropped.items():
                if count:
                    self.dropped[reason] += count
                    self.last_drop = self.clock()
            if deltas.get("stored"):
                self._window.append((self.clock(), self.stored))

    def drop(self, reason: str, count: int = 1) -> None:
        """Account for memories that were discarded, with why."""
        with self._lock:
            self.dropped[reason] += count
            self.last_drop = self.clock()

    def throughput(self) -> tuple[float, float]:
        """Stored per second since start, and over the last 60 seconds."""
        now = self.clock()
        since = max(self.started, now - 60.0)
        with self._lock:
            stored = self.stored
            base_t, base_n, found = since, 0, False
            for t, n in self._window:
                if t > since:
                    break
                base_n, found = n, True
            if not found and len(self._window) == self._window.maxlen:
                # Older batches fell out of the window: measure from the oldest kept.
                base_t, base_n = self._window[0]
        overall = stored / max(now - self.started, 1e-9)
        recent = (stored - base_n) / max(now - base_t, 1e-9)
        return overall, recent
