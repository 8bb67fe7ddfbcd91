"""The threads that write the other parts of a PostgreSQL batch split over connections."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Any

__all__ = ["WriterThreads"]


class WriterThreads:
    """Daemon threads that run calls handed to them. Not a ThreadPoolExecutor: it refuses
    work once the interpreter starts to shut down, when the at-exit flush still writes."""

    def __init__(self, count: int) -> None:
        self._calls: SimpleQueue[tuple[Callable[[], None], Future[None]] | None] = SimpleQueue()
        self._count = count
        self.started = True
        try:
            for n in range(count):
                name = f"memcollect-pg-writer-{n + 1}"
                threading.Thread(target=self._run, name=name, daemon=True).start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            self.started = False

    def submit(self, call: Callable[..., None], *args: Any) -> Future[None]:
        """Run call(*args) on a helper thread; its future."""
        future: Future[None] = Future()
        self._calls.put((lambda: call(*args), future))
        return future

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future = item
            try:
                call()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting writer
                future.set_exception(exc)
            else:
                future.set_result(None)

    def stop(self) -> None:
        """Let the threads end once the calls handed to them are done."""
        for _ in range(self._count):
            self._calls.put(None)
