"""The storing process: stores the spool ranges it is sent, answers each, exits at EOF."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import IO

import msgspec

from ..backends import open_backend
from ..config import Config
from ..errors import failure_sentence
from ..frames import read_batches
from ..model import Memory
from ..retry import CircuitBreaker
from ..stats import Counters
from ..storing import Storing, hash_contents
from .inprocess import Shared
from .protocol import COUNTED, PROTOCOL, Done, Range, decode_range, encode, tell_stopped

__all__ = ["main"]

log = logging.getLogger("memcollect")

# Memories of a range, with the offset just past the last one's frame.
Batch = tuple[list[Memory], int]
# A storing thread's batches while a storing process starts to take over from it.
_STEP_WHILE_PROMOTING = 256

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
        # A process storing into a server reads each range as it arrives, while the main
        # thread waits for the server's answer to the range before (the GIL is free then);
        # into SQLite, the two threads would only take the GIL from each other.
        self.read_ahead = shared is None and self.backend.waits_on_server
        self.ranges: deque[tuple[Range, list[Batch] | None]] = deque()
        self.arrived = threading.Condition()
        self.ended = False
        self._answer_lock = threading.Lock()
        self._reported = _counts(self.counters)
        self._reported_drops: Counter[str] = Counter()

    def answer(self, number: int, records: int, stored_to: int = -1) -> None:
        """Tell the collecting process what became of a range (number -1: a heartbeat);
        `stored_to`: where a thread handing over to a process stopped short of its end."""
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
                stored_to=stored_to,
            )
            self.answers.write(encode(done) + b"\n")
            self.answers.flush()

    def listen(self, requests: IO[bytes]) -> None:
        """Queue the ranges sent; note the end of input."""
        for line in requests:
            item = decode_range(line)
            batches = None
            if self.read_ahead:
                # What cannot be read here is read again, and reported, by the main thread.
                with contextlib.suppress(Exception):
                    batches = self.read_range(item)
            with self.arrived:
                self.ranges.append((item, batches))
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
            # A thread handing over to a process ends soon: put-off work is the process's.
            handing_over = self.shared is not None and self.shared.hand_over.is_set()
            with self.arrived:
                idle = not (self.ranges or self.ended)
                if idle and (handing_over or not (storing.idle_due or storing.may_move)):
                    self.arrived.wait(HEARTBEAT_S)
                item = self.ranges.popleft() if self.ranges else None
                ended = self.ended
            if item is not None:
                self.answer(item[0].number, *self.store_range(*item))
            elif ended:
                return
            elif handing_over:
                continue
            elif storing.may_move:
                storing.move_from_fallback()
            elif storing.idle_due:
                storing.idle_step()

    def read_range(self, item: Range) -> list[Batch]:
        """The range's memories, batch by batch, their contents hashed."""
        batches = list(read_batches(_read(item), self.config.batch_size))
        for batch, _ in batches:
            hash_contents(batch)
        return batches

    def store_range(self, item: Range, batches: list[Batch] | None = None) -> tuple[int, int]:
        """Store the records of one range (read ahead, or read now), batch by batch; how many
        records were stored, and where a storing thread stopped for a process taking over
        (-1: at the range's end)."""
        if self.shared is not None:
            return self._store_handing_over(item, self.shared)
        if batches is None:
            return self._store_batches(read_batches(_read(item), self.config.batch_size)), -1
        return self._store_batches(batches), -1

    def _store_batches(self, batches: Iterable[Batch]) -> int:
        stored = 0
        for batch, _ in batches:
            self.storing.store(batch)
            stored += len(batch)
        return stored

    def _store_handing_over(self, item: Range, shared: Shared) -> tuple[int, int]:
        """A storing thread's store_range: it may stop short for a process taking over."""
        size, most = item.end - item.start, self.config.batch_size
        stored = 0
        batch: list[Memory] = []
        # Read in small steps: a whole batch is stored at once, unless a process is starting,
        # when the thread stores each step, to stop soon after the process says it is ready.
        for part, end in read_batches(_read(item), min(most, _STEP_WHILE_PROMOTING)):
            batch.extend(part)
            if len(batch) < most and not shared.promoting.is_set():
                continue
            self.storing.store(batch)
            stored += len(batch)
            batch = []
            if shared.hand_over.is_set() and end < size:
                # The process stores the rest on the other core, instead of waiting for this
                # thread to store a range of the whole backlog.
                return stored, item.start + end
        if batch:
            self.storing.store(batch)
            stored += len(batch)
        return stored, -1

    def close(self) -> None:
        """Release the stores (those of the collecting process are its own to close)."""
        if self.shared is not None:
            return
        self.backend.close()
        if self.fallback is not None:
            self.fallback.close()


def _read(item: Range) -> bytes:
    with open(item.path, "rb") as f:
        f.seek(item.start)
        return f.read(item.end - item.start)


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
    try:
        serve(Config(**hello["config"]), requests, answers)
    except Exception as exc:  # noqa: BLE001 - said in one line; the collecting side restarts
        why = failure_sentence(exc)
        log.error("stopped, the collecting process starts another: %s", why)
        tell_stopped(answers, why)
        logging.shutdown()
        # Not sys.exit(): the thread reading stdin holds its lock, and the interpreter would
        # abort on it as it shuts down ("Fatal Python error"), after a traceback.
        os._exit(1)


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
