"""Helpers for testing code that uses memcollect: an in-memory collector, a backend that fails
on demand, one that passes everything through, and a clock that only moves when told."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .backends.base import Backend
from .backends.memory import MemoryBackend
from .collector import MemoryCollector
from .errors import PermanentBackendError, TransientBackendError
from .model import Memory

__all__ = ["DelegatingBackend", "FakeClock", "FaultyBackend", "memory_collector"]


def memory_collector(**fields: Any) -> MemoryCollector:
    """A collector that keeps everything in this process and stores batches at once."""
    backend = fields.pop("backend_instance", None) or MemoryBackend()
    fields.setdefault("durability", "memory")
    fields.setdefault("batch_timeout", 0.0)
    return MemoryCollector(backend, **fields)


class FakeClock:
    """A monotonic clock that moves only when told, or when code sleeps or waits on it.

    Pass it as `clock=`, its `sleep` where a sleep is injected, and its `wait` where a wait
    for an event is: time then passes at once, and a test sees every pause that was asked for
    in `slept`, without waiting for any of them.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        """The current time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass."""
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        """A sleep: note it, and let the time pass at once."""
        self.slept.append(seconds)
        self.now += seconds

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Event.wait: True at once if the event is set, else the timeout passes at once."""
        if event.is_set():
            return True
        if timeout is None:
            raise RuntimeError("a wait with no timeout on a fake clock would never end")
        self.sleep(timeout)
        return event.is_set()


class DelegatingBackend(Backend):
    """A backend that hands every call of the Backend protocol to another one; subclass it
    and override what a test needs to change. Its methods are made from the protocol itself,
    so it cannot fall behind it."""

    name = "delegating"

    def __init__(self, inner: Backend, url: str | None = None) -> None:
        self.inner = inner
        super().__init__(url or inner.url)
        self.supports_semantic = inner.supports_semantic


def _forward(name: str) -> Callable[..., Any]:
    def method(self: DelegatingBackend, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"As the wrapped backend's {name}()."
    return method


#: The protocol's methods, every one of which DelegatingBackend hands on.
PROTOCOL_METHODS = tuple(
    name for name, value in vars(Backend).items() if callable(value) and not name.startswith("_")
)
for _name in PROTOCOL_METHODS:
    setattr(DelegatingBackend, _name, _forward(_name))
DelegatingBackend.__abstractmethods__ = frozenset()


class FaultyBackend(DelegatingBackend):
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
        inner = inner or MemoryBackend()
        super().__init__(inner, f"faulty+{inner.url}")
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
