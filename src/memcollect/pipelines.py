"""The three ways of running, one Pipeline each, chosen once when a collector is built.

- RamPipeline: memories wait in RAM; a worker thread stores them (durability="memory").
- SpoolPipeline (spooling.py): every memory is also appended to the spool first
  (durability="spool" or "fsync"); the worker thread stores from RAM and reads back what
  spilled to disk.
- ProcessPipeline (storer/pipeline.py): the spool is the only queue; a storing process
  stores from it.

The collector talks to whichever it has through the same methods and never asks which.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .backends.base import Backend
from .config import Config
from .errors import MemcollectError, QueueFullError
from .inbox import Inbox
from .locks import SharedLock
from .model import PRIORITY_RANK, Memory
from .retry import CircuitBreaker, RetryPolicy
from .spool import Spool
from .stats import Counters, Latency
from .storing import FailureCallback, Interruptible, StoredCallback, Storing, notify_failure
from .tracing import Spans
from .worker import Worker

__all__ = ["Parts", "Pipeline", "RamPipeline", "describe"]

log = logging.getLogger("memcollect")

Clock = Callable[[], float]

_FOREVER = 1e9


class Parts:
    """What every pipeline is built from: the settings, the stores and the bookkeeping."""

    def __init__(
        self,
        config: Config,
        backend: Backend,
        fallback: Backend | None,
        counters: Counters,
        *,
        on_stored: list[StoredCallback],
        on_failure: list[FailureCallback],
        on_change: Callable[[], None],
        clock: Clock,
    ) -> None:
        self.config = config
        self.backend = backend
        self.fallback = fallback
        self.counters = counters
        self.on_stored = on_stored
        self.on_failure = on_failure
        # Stored memories changed: searches cached before are stale.
        self.on_change = on_change
        self.clock = clock
        self.breaker = CircuitBreaker(
            config.max_retries, config.retry_max, clock, config.circuit_open_after
        )
        self.spans = Spans(config.otel, backend.url)

    def write_through(self) -> Storing:
        """The storing engine for write-through (store_now): the same one, tried once."""
        config = self.config
        return Storing(
            self.backend,
            self.counters,
            self.breaker,
            RetryPolicy(config.retry_base, config.retry_max, 0),
            on_stored=self.on_stored,
            on_done=lambda memories: self.on_change(),
            clock=self.clock,
            spans=self.spans,
        )


class Pipeline:
    """Takes accepted memories to the store; the collector's one way of running."""

    #: Whether on_stored/on_failure callbacks can run (they run where memories are stored).
    callbacks = True
    spool: Spool | None = None

    def allow_callbacks(self) -> bool:
        """Whether on_stored and on_failure callbacks can be called from where it stores."""
        return self.callbacks

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.config = parts.config
        self.counters = parts.counters
        self.breaker = parts.breaker
        self.clock = parts.clock
        self.closed = False
        self._warned_closed = False
        self._reporting_drops = threading.local()

    # --- what each pipeline says for itself ------------------------------------------------

    def start(self) -> None:
        """Begin storing in the background."""

    @property
    def accepted(self) -> int:
        """Memories accepted so far (their ids returned)."""
        raise NotImplementedError

    def put(self, memory: Memory) -> None:
        """Accept one memory (the hot path of collect())."""
        raise NotImplementedError

    def put_many(self, memories: Sequence[Memory], force: bool = False) -> None:
        """Accept memories, in order; `force` admits them past a full RAM queue."""
        raise NotImplementedError

    async def put_async(self, memory: Memory) -> None:
        """put() for coroutines: never awaits I/O."""
        self.put(memory)

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything accepted so far is stored or dead-lettered."""
        raise NotImplementedError

    def close(self, timeout: float | None) -> None:
        """Store what is queued (up to `timeout`), then stop and release the stores."""
        raise NotImplementedError

    def release(self) -> None:
        """Let go without waiting (a collector never closed): what is queued still goes."""

    def let_go_after_fork(self) -> None:
        """In a forked child: drop the parent's spool, storing process and connections."""
        if self.spool is not None:
            self.spool.abandon_after_fork()
        self.parts.backend.after_fork()
        if self.parts.fallback is not None:
            self.parts.fallback.after_fork()

    def pending(self, ids: list[str]) -> dict[str, Memory]:
        """Memories accepted and not yet stored (on disk, queued or in flight), by id."""
        return {}

    @property
    def moving(self) -> SharedLock:
        """Held while memories move from the fallback back; delete() holds it too."""
        raise NotImplementedError

    # What stats() and health() read.
    queue_depth = 0
    #: Memories waiting in RAM (max_queue_size bounds them).
    ram_depth = 0
    in_flight = 0
    fallback_pending = False
    restarts = 0

    def writing_since(self) -> float | None:
        """When the write under way began, if one is."""
        return None

    def latencies(self) -> tuple[Latency, Latency]:
        """Batch write latency, and accept-to-stored latency."""
        return self.counters.batch_latency.snapshot(), self.counters.store_latency.snapshot()

    def storer_pid(self) -> int | None:
        """The storing process's PID, where there is one."""
        return None

    def not_running(self) -> str | None:
        """Why nothing stores now, or None while something does."""
        return None

    def circuit(self) -> CircuitBreaker:
        """The circuit of the writes to the store."""
        return self.breaker

    def rotate(self) -> None:
        """Let the spool's bytes of what is stored go now, not when their segment fills."""

    # --- full queues: shared by every pipeline --------------------------------------------

    def reject(self, memory: Memory, reason: str) -> None:
        """Count a memory accepted and dropped at once, and tell on_failure."""
        self.count_accepted(1)
        self.counters.drop(reason)
        self.report_drop(memory, reason)

    def count_accepted(self, n: int) -> None:
        """Count memories accepted that no queue took."""
        raise NotImplementedError

    def report_drop(self, memory: Memory, reason: str) -> None:
        """Tell the on_failure callbacks, in the caller's thread, that a memory was dropped."""
        on_failure = self.parts.on_failure
        if not on_failure:
            return
        reporting = self._reporting_drops
        # A callback that collects (say, a note of the drop) into the same full queue would
        # otherwise be called back for that drop too, and again, as deep as the stack goes.
        if getattr(reporting, "active", False):
            return
        reporting.active = True
        try:
            notify_failure(on_failure, [memory], QueueFullError(f"memory dropped: {reason}"))
        finally:
            reporting.active = False

    def rejected_as_closed(self, memory: Memory) -> bool:
        """After close(): drop the memory (once said in the log); False while open."""
        if not self.closed:
            return False
        self.reject(memory, "closed")
        if not self._warned_closed:
            self._warned_closed = True
            log.warning("collect() after close(): memories are counted as dropped")
        return True


def deadline_after(clock: Clock, timeout: float | None) -> float:
    """The clock's time `timeout` seconds from now (None: no deadline to speak of)."""
    return clock() + (timeout if timeout is not None else _FOREVER)


class RamPipeline(Pipeline):
    """Memories wait in RAM; one worker thread stores them."""

    durable = False

    def __init__(self, parts: Parts) -> None:
        super().__init__(parts)
        config = parts.config
        self.inbox = Inbox(config.max_queue_size, config.batch_size, self._evicted, parts.clock)
        self.wait = Interruptible(parts.clock)
        self.storing = Storing.configured(
            config,
            parts.backend,
            parts.counters,
            parts.breaker,
            fallback=parts.fallback,
            on_stored=parts.on_stored,
            on_failure=parts.on_failure,
            on_done=self._done,
            durable=self.durable,
            clock=parts.clock,
            wait=self.wait,
            spans=parts.spans,
        )
        self.worker = Worker(
            self.inbox,
            self.storing,
            self.wait,
            batch_size=config.batch_size,
            batch_timeout=config.batch_timeout,
            clock=parts.clock,
        )

    def start(self) -> None:
        """Start the worker thread, after noting what an earlier run left in the fallback."""
        self.storing.check_fallback()
        self.worker.start()

    @property
    def accepted(self) -> int:
        """Memories accepted so far."""
        return self.inbox.accepted

    def count_accepted(self, n: int) -> None:
        """Count memories accepted that no queue took."""
        self.inbox.count_accepted(n)

    @property
    def moving(self) -> SharedLock:
        """The storing engine's lock on moving memories back from the fallback."""
        return self.storing.moving

    @property
    def queue_depth(self) -> int:  # type: ignore[override]
        """Memories waiting in RAM."""
        return self.inbox.size

    @property
    def ram_depth(self) -> int:  # type: ignore[override]
        """Memories waiting in RAM."""
        return self.inbox.size

    @property
    def in_flight(self) -> int:  # type: ignore[override]
        """Memories in the batch being written."""
        return len(self.inbox.in_flight)

    @property
    def fallback_pending(self) -> bool:  # type: ignore[override]
        """Whether the fallback holds memories to move back."""
        return self.storing.fallback_pending

    def writing_since(self) -> float | None:
        """When the write under way began."""
        return self.storing.writing_since

    def not_running(self) -> str | None:
        """Why the worker thread does not store, if it does not."""
        worker = self.worker
        if not worker.alive():
            return "the worker thread is not running"
        if worker.error is not None:
            return f"the worker fails, and tries again: {worker.error}"
        return None

    def put(self, memory: Memory) -> None:
        """Queue one memory in RAM; a full queue does as on_full says."""
        if not self.inbox.put(memory):
            self._full(memory)

    def put_many(self, memories: Sequence[Memory], force: bool = False) -> None:
        """Queue memories in RAM while there is room, the rest as on_full says."""
        queued = self.inbox.put_many(memories, force=force)
        for memory in memories[queued:]:
            self.put(memory)

    async def put_async(self, memory: Memory) -> None:
        """put(), yielding to the event loop while a full queue makes room (on_full='block')."""
        if self.config.on_full != "block":
            self.put(memory)
            return
        import asyncio  # here, not at the top: it costs 30 ms of `import memcollect`

        deadline = self.clock() + self.config.block_timeout
        delay = 0.0005
        while not self.inbox.put(memory):
            if self.clock() >= deadline or self.closed:
                self.reject(memory, "queue_full")
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _full(self, memory: Memory) -> None:
        if self.rejected_as_closed(memory):
            return
        policy = self.config.on_full
        if policy == "raise":
            raise QueueFullError(
                f"the queue holds max_queue_size={self.config.max_queue_size} memories: "
                "slow down, raise max_queue_size, or choose on_full='drop_lowest' or 'block'"
            )
        if policy == "block":
            deadline = self.clock() + self.config.block_timeout
            while self.inbox.wait_for_room(deadline):
                if self.inbox.put(memory):
                    return
            self.reject(memory, "queue_full")
            return
        # drop_lowest: make room by evicting the oldest memory of the lowest priority queued,
        # unless the newcomer is itself the lowest, in which case it is the one dropped.
        evicted = []
        while not self.inbox.put(memory):
            victim = self.inbox.evict_lowest(PRIORITY_RANK[memory.priority])
            if victim is None:
                self.reject(memory, "queue_full")
                break
            evicted.append(victim)
        # Reported once the newcomer has its place: a callback collecting into the queue
        # before then would take the freed place, and be evicted for the newcomer in turn.
        for victim in evicted:
            self.report_drop(victim, "queue_full")

    def _evicted(self, memory: Memory) -> None:
        self.counters.drop("queue_full")
        self._done([memory])

    def _done(self, memories: Sequence[Memory]) -> None:
        """Memories were stored or dead-lettered."""
        self.parts.on_change()

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything queued before this call is stored or dead-lettered."""
        self._check_not_on_worker()
        deadline = deadline_after(self.clock, timeout)
        marks = self.inbox.marks()
        return self._wait_done(marks, deadline)

    def _check_not_on_worker(self) -> None:
        if self.worker.on_thread():
            raise MemcollectError(
                "flush() was called from an on_stored or on_failure callback, which runs on "
                "the worker: it would wait for itself; flush from another thread"
            )

    def _wait_done(self, marks: list[int], deadline: float) -> bool:
        if not self.worker.alive():
            self.worker.drain(deadline)
        return self.inbox.wait_done(marks, deadline)

    def close(self, timeout: float | None) -> None:
        """Store what is queued (up to `timeout`), stop the worker, release the stores."""
        deadline = deadline_after(self.clock, timeout)
        worker = self.worker
        worker.stop(deadline)
        if worker.on_thread():
            # Called by a callback, on the worker itself, which cannot wait for itself: once
            # the callback returns it stores what is queued (up to the deadline), then
            # finishes closing as it exits.
            worker.when_exited(self._finish_close)
            return
        if worker.alive():
            assert worker.thread is not None
            worker.thread.join(max(0.0, deadline - self.clock()))
        else:
            # At interpreter exit no thread may be started: store from this thread.
            worker.drain(deadline)
        self._count_left()
        # A worker still in a write past the deadline releases the stores as it ends:
        # closing them under it would fail its write, and leaving them open leaks sockets.
        worker.when_exited(self._release_stores)

    def release(self) -> None:
        """Let the worker store what is queued and exit on its own; never block."""
        self.worker.stop(self.clock() + self.config.exit_timeout)

    def _finish_close(self) -> None:
        self._count_left()
        self._release_stores()

    def _count_left(self) -> None:
        """After the worker stopped: count what it left in RAM as dropped."""
        left = self.inbox.drain_all()
        if left:
            self.counters.drop("shutdown_deadline", len(left))
            log.warning("%d memories were not stored before close() timed out", len(left))

    def _release_stores(self) -> None:
        self.parts.backend.close()
        if self.parts.fallback is not None:
            self.parts.fallback.close()

    def pending(self, ids: list[str]) -> dict[str, Memory]:
        """Memories queued or in flight, by id."""
        found = {}
        for memory_id in ids:
            queued = self.inbox.find(memory_id)
            if queued is not None:
                found[memory_id] = queued
        return found


def describe(pipeline: Pipeline) -> dict[str, Any]:
    """The spool's part of stats(), where there is a spool."""
    spool = pipeline.spool
    if spool is None:
        return {}
    return {
        "spool_bytes": spool.bytes,
        "spool_segments": spool.segment_count(),
        "spool_pending": spool.pending(),
        "corrupt_skipped": spool.corrupt,
    }
