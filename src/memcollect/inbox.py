"""The bounded, priority-aware queue between collect() and the worker."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from .model import PRIORITY_RANK, Memory

__all__ = ["Inbox"]

Clock = Callable[[], float]


class Inbox:
    """One FIFO per priority; the worker takes from the highest non-empty one first.

    Completion is tracked so that flush() can wait for exactly what was accepted before it:
    every item leaves its FIFO in order (taken into a batch, or evicted), and batches finish in
    the order they were taken. So "everything accepted before now is done" is: every FIFO has
    popped past its length at that moment, and the batch that took the last of them finished.
    """

    def __init__(
        self,
        max_size: int,
        batch_size: int,
        on_evict: Callable[[Memory], None],
        clock: Clock = time.monotonic,
    ) -> None:
        self.max_size = max_size
        self.batch_size = batch_size
        self._on_evict = on_evict
        self._clock = clock
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.wakeup = threading.Event()
        self.queues: tuple[deque[Memory], ...] = tuple(deque() for _ in PRIORITY_RANK)
        self.popped = [0] * len(self.queues)
        self.size = 0
        # Everything ever admitted (under the lock, so threads cannot lose an increment).
        self.accepted = 0
        self.batches_taken = 0
        self.batches_done = 0
        self.in_flight: list[Memory] = []
        self.flush_waiters = 0
        self.closing = False

    def put(self, memory: Memory) -> bool:
        """Queue one memory; False when the queue is full (nothing was queued)."""
        # acquire/release, not `with`: half the cost, on every collect().
        lock = self.lock
        lock.acquire()
        try:
            return self.put_locked(memory)
        finally:
            lock.release()

    def put_locked(self, memory: Memory) -> bool:
        """put() for a caller that holds `lock` (the spool shares it)."""
        size = self.size
        if size >= self.max_size or self.closing:
            return False
        self.queues[PRIORITY_RANK[memory.priority]].append(memory)
        self.size = size + 1
        self.accepted += 1
        # Wake the worker when a batch starts (its linger clock starts) or fills up.
        if (size == 0 or size + 1 == self.batch_size) and not self.wakeup.is_set():
            self.wakeup.set()
        return True

    def put_many(self, memories: Iterable[Memory], force: bool = False, count: bool = True) -> int:
        """Queue memories while there is room (all of them with force); how many were queued.

        count=False for memories already counted as accepted (read back from the spool).
        """
        with self.lock:
            return self.put_many_locked(memories, force, count)

    def put_many_locked(
        self, memories: Iterable[Memory], force: bool = False, count: bool = True
    ) -> int:
        """put_many() for a caller that holds `lock`."""
        queued = 0
        before = self.size
        for memory in memories:
            # Forced puts (records read back from the spool) are part of the drain,
            # so they go in even while closing; new memories do not.
            if not force and (self.closing or self.size >= self.max_size):
                break
            self.queues[PRIORITY_RANK[memory.priority]].append(memory)
            self.size += 1
            queued += 1
        if count:
            self.accepted += queued
        if queued and (before == 0 or before < self.batch_size <= self.size):
            self.wakeup.set()
        return queued

    def count_accepted(self, n: int = 1) -> None:
        """Count memories accepted (their ids returned) that did not enter the RAM queue."""
        with self.lock:
            self.accepted += n

    def evict_lowest(self, rank: int) -> Memory | None:
        """Drop the oldest memory of the lowest priority at or below `rank`, if there is one."""
        with self.lock:
            for r in range(rank + 1):
                queue = self.queues[r]
                if queue:
                    victim = queue.popleft()
                    self.popped[r] += 1
                    self.size -= 1
                    self.changed.notify_all()
                    break
            else:
                return None
        self._on_evict(victim)
        return victim

    def wait_for_room(self, deadline: float) -> bool:
        """Block until the queue has room or the deadline (monotonic) passes."""
        with self.lock:
            while self.size >= self.max_size:
                remaining = deadline - self._clock()
                if remaining <= 0 or self.closing:
                    return False
                self.changed.wait(remaining)
            return True

    def take(self, limit: int) -> list[Memory]:
        """Take up to `limit` memories, highest priority first, as the batch in flight."""
        batch: list[Memory] = []
        with self.lock:
            for rank in range(len(self.queues) - 1, -1, -1):
                queue = self.queues[rank]
                n = min(limit - len(batch), len(queue))
                if n:
                    if n == len(queue):
                        batch.extend(queue)
                        queue.clear()
                    else:
                        popleft = queue.popleft
                        batch.extend([popleft() for _ in range(n)])
                    self.popped[rank] += n
                if len(batch) >= limit:
                    break
            self.size -= len(batch)
            if batch:
                self.batches_taken += 1
                self.in_flight = batch
                self.changed.notify_all()
        return batch

    def put_back(self, batch: list[Memory]) -> None:
        """Return the batch in flight to the front of its queues, as if it had never been
        taken: a flush that waited for it goes on waiting for it."""
        with self.lock:
            for memory in reversed(batch):
                rank = PRIORITY_RANK[memory.priority]
                self.queues[rank].appendleft(memory)
                self.popped[rank] -= 1
            self.size += len(batch)
            self.wakeup.set()
            self.changed.notify_all()

    def finish(self) -> None:
        """Mark the batch in flight as done (stored, dead-lettered or dropped)."""
        with self.lock:
            self.in_flight = []
            self.batches_done = self.batches_taken
            self.changed.notify_all()

    def marks(self) -> list[int]:
        """Where each FIFO will have popped to once what is queued now has left it."""
        with self.lock:
            return [p + len(q) for p, q in zip(self.popped, self.queues, strict=True)]

    def wait_done(self, marks: list[int], deadline: float) -> bool:
        """Wait until everything before `marks` has left the queue and its batch has finished."""
        with self.lock:
            self.flush_waiters += 1
            try:
                while any(p < m for p, m in zip(self.popped, marks, strict=True)):
                    if not self._wait(deadline):
                        return False
                last_batch = self.batches_taken
                while self.batches_done < last_batch:
                    if not self._wait(deadline):
                        return False
                return True
            finally:
                self.flush_waiters -= 1

    def _wait(self, deadline: float) -> bool:
        remaining = deadline - self._clock()
        if remaining <= 0:
            return False
        self.wakeup.set()
        self.changed.wait(min(remaining, 0.5))
        return True

    def find(self, memory_id: str) -> Memory | None:
        """A memory still queued or in flight, by id."""
        with self.lock:
            for memory in self.in_flight:
                if memory.id == memory_id:
                    return memory
            for queue in self.queues:
                for memory in queue:
                    if memory.id == memory_id:
                        return memory
        return None

    def drain_all(self) -> list[Memory]:
        """Remove and return everything queued (not the batch in flight)."""
        with self.lock:
            out: list[Memory] = []
            for rank, queue in enumerate(self.queues):
                self.popped[rank] += len(queue)
                out.extend(queue)
                queue.clear()
            self.size = 0
            self.changed.notify_all()
        return out
