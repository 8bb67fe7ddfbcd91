"""What the spool refuses (a full disk) with storer="process" or "auto": kept in RAM and
stored from a thread of this process, as the storing thread would store it."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

from ..model import Memory
from ..pipelines import Parts
from ..retry import CircuitBreaker
from ..storing import Interruptible, Storing

__all__ = ["Overflow"]


class Overflow:
    """Memories the spool could not take, up to max_queue_size, stored from RAM."""

    def __init__(self, parts: Parts) -> None:
        config = parts.config
        self.room = config.max_queue_size
        self.batch_size = config.batch_size
        self.counters = parts.counters
        self._changed = threading.Condition()
        self._queue: deque[Memory] = deque()
        self._in_flight: list[Memory] = []
        self._closing = False
        self._wait = Interruptible(time.monotonic)
        breaker = CircuitBreaker(
            config.max_retries, config.retry_max, open_after=config.circuit_open_after
        )
        self._storing = Storing.configured(
            config,
            parts.backend,
            parts.counters,
            breaker,
            fallback=parts.fallback,
            on_done=lambda batch: parts.on_change(),
            wait=self._wait,
            spans=parts.spans,
        )
        self._thread: threading.Thread | None = None

    def take(self, memories: Sequence[Memory]) -> int:
        """Keep what there is room for, to be stored from here; how many were kept."""
        with self._changed:
            if self._closing:
                return 0
            kept = max(0, min(len(memories), self.room - len(self._queue)))
            self._queue.extend(memories[:kept])
            self._changed.notify_all()
            if kept and self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="memcollect-overflow", daemon=True
                )
                self._thread.start()
            return kept

    def __len__(self) -> int:
        return len(self._queue) + len(self._in_flight)

    def find(self, ids: Sequence[str]) -> dict[str, Memory]:
        """The memories held here with these ids."""
        wanted = set(ids)
        with self._changed:
            return {m.id: m for m in (*self._in_flight, *self._queue) if m.id in wanted}

    def flush(self, deadline: float) -> bool:
        """Wait until what is held now is stored, or the monotonic deadline."""
        with self._changed:
            while len(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
            return True

    def close(self, deadline: float) -> None:
        """Store what is held until the deadline; what is left then is counted as dropped."""
        self.flush(deadline)
        self._wait.stop(deadline)
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        with self._changed:
            left = len(self._queue)
            self._queue.clear()
        if left:
            self.counters.drop("shutdown_deadline", left)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closing:
                    self._changed.wait()
                if self._closing:
                    return
                size = min(self.batch_size, len(self._queue))
                self._in_flight = [self._queue.popleft() for _ in range(size)]
            try:
                self._storing.store(self._in_flight)
            finally:
                with self._changed:
                    self._in_flight = []
                    self._changed.notify_all()
