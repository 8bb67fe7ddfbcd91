"""The storing process: stores the spool ranges it is sent, answers each, exits at EOF."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import threading
import time
from collections import Counter, deque
from typing import IO

import msgspec

from ..backends import open_backend
from ..config import Config
from ..frames import read_memories
from ..retry import CircuitBreaker
from ..stats import Counters
from ..storing import Storing
from .inprocess import Shared
from .protocol import COUNTED, PROTOCOL, Done, Range, decode_range, encode

__all__ = ["main"]

log = logging.getLogger("memcollect")

# How often the child reports its circuit, while it has no range to answer.
HEARTBEAT_S = 0.5


class Child:
    """Stores ranges as they come and, between them, the work the stores put off."""

    def __init__(self, config: Config, answers: IO[bytes], shared: Shared | None = None) -> None:
        self.config = config
        self.answers = answers
        # In a thread of the collecting process, its stores and callbacks are this one's.
        self.shared = shared
        if shared is not None:
            self.backend, self.fallback = shared.backend, shared.fallback
        else:
            self.backend = open_backend(_background_checkpoints(config.backend_url))
            self.backend.open()
            self.fallback = open_backend(config.fallback) if config.fallback else None
            if self.fallback is not None:
                self.fallback.open()
        self.counters = Counters()
        self.breaker = CircuitBreaker(
            config.max_retries, config.retry_max, open_after=config.circuit_open_after
        )
        self.storing = Storing.configured(
            config,
            self.backend,
            self.counters,
            self.breaker,
            fallback=self.fallback,
            durable=True,
            **(shared.options() if shared is not None else {}),
        )
        self.storing.check_fallback()
        self.ranges: deque[Range] = deque()
        self.arrived = threading.Condition()
        self.ended = False
        self._answer_lock = threading.Lock()
        self._reported = _counts(self.counters)
        self._reported_drops: Counter[str] = Counter()

    def answer(self, number: int, records: int) -> None:
        """Tell the collecting process what became of a range (number -1: a heartbeat)."""
        if self.abandoned():
            return
        with self._answer_lock:
            now = _counts(self.counters)
            delta = [a - b for a, b in zip(now, self._reported, strict=True)]
            self._reported = now
            drops = Counter(self.counters.dropped)
            dropped = dict(drops - self._reported_drops)
            self._reported_drops = drops
            opened = self.breaker.opened_at
            done = Done(
                number,
                records,
                delta,
                dropped,
                batch_latency=self.counters.batch_latency.snapshot(),
                store_latency=self.counters.store_latency.snapshot(),
                circuit_failures=self.breaker.failures,
                circuit_open_for=-1.0 if opened is None else time.monotonic() - opened,
                circuit_error=self.breaker.last_error,
            )
            self.answers.write(encode(done) + b"\n")
            self.answers.flush()

    def listen(self, requests: IO[bytes]) -> None:
        """Queue the ranges sent; note the end of input."""
        for line in requests:
            item = decode_range(line)
            with self.arrived:
                self.ranges.append(item)
                self.arrived.notify()
        with self.arrived:
            self.ended = True
            self.arrived.notify()

    def heartbeat(self, stop: threading.Event) -> None:
        """Report the circuit while a range takes long (an outage, retries)."""
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError, ValueError):
                self.answer(-1, 0)

    def abandoned(self) -> bool:
        """Whether the collecting side gave up on this storing thread."""
        return self.shared is not None and self.shared.abandoned.is_set()

    def run(self) -> None:
        """Store ranges as they come; between them, the backend's put-off work."""
        storing = self.storing
        while not self.abandoned():
            with self.arrived:
                idle = not (self.ranges or self.ended)
                if idle and not (storing.idle_due or storing.may_move):
                    self.arrived.wait(HEARTBEAT_S)
                item = self.ranges.popleft() if self.ranges else None
                ended = self.ended
            if item is not None:
                self.answer(item.number, self.store_range(item))
            elif ended:
                return
            elif storing.may_move:
                storing.move_from_fallback()
            elif storing.idle_due:
                storing.idle_step()

    def store_range(self, item: Range) -> int:
        """Store the records of one range, batch by batch; how many records it held."""
        with open(item.path, "rb") as f:
            f.seek(item.start)
            data = f.read(item.end - item.start)
        memories = read_memories(data)
        size = self.config.batch_size
        for start in range(0, len(memories), size):
            self.storing.store(memories[start : start + size])
        return len(memories)

    def close(self) -> None:
        """Release the stores (those of the collecting process are its own to close)."""
        if self.shared is not None:
            return
        self.backend.close()
        if self.fallback is not None:
            self.fallback.close()


def _background_checkpoints(url: str) -> str:
    """A SQLite URL with checkpoints in a thread of their own: this process only stores, and
    its commits need not wait for the log's copy and its fsyncs (+20-40% measured alone)."""
    if not url.startswith("sqlite:") or "checkpoint=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "checkpoint=background"


def _counts(c: Counters) -> list[int]:
    return [getattr(c, name) for name in COUNTED]


def main() -> None:
    """Store the ranges read from stdin; answer each on stdout; exit at end of input."""
    logging.basicConfig(level=logging.WARNING, format="memcollect storer: %(message)s")
    # This process only reads, stores and frees memories, which make no reference cycles:
    # collecting after every 700 allocations cost it ~15% of its rate. Cycles (a retried
    # error's traceback) are still collected, only less often.
    gc.set_threshold(100_000, 50, 100)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    hello = msgspec.json.decode(requests.readline())
    if hello.get("protocol") != PROTOCOL:
        # memcollect was upgraded on disk under a running application: its collecting side
        # speaks the old protocol, this process the new one.
        log.error("the collecting process runs another memcollect version: restart it")
        sys.exit(3)
    serve(Config(**hello["config"]), requests, answers)


def serve(
    config: Config, requests: IO[bytes], answers: IO[bytes], shared: Shared | None = None
) -> None:
    """Store the ranges read from `requests`, answering each on `answers`, until their end."""
    child = Child(config, answers, shared)
    # Ready: the collecting side may hand this child the ranges from now on.
    child.answer(-1, 0)
    stop = threading.Event()
    threading.Thread(target=child.listen, args=(requests,), daemon=True).start()
    threading.Thread(target=child.heartbeat, args=(stop,), daemon=True).start()
    try:
        child.run()
    finally:
        stop.set()
        child.close()
