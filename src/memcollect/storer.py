"""Storing in another process (`storer="process"`): the spool is the hand-over.

The collecting process only appends to its spool. A child process (`python -m
memcollect.storer`) stores what the spool holds: the collecting process sends it byte ranges
of spool segments over a pipe, the child reads, stores (with the same retries, bisection,
dead letters and fallback as the worker thread) and answers each range with what became of
its records. Only then are those records acknowledged in the spool, so a child that dies
loses nothing: its ranges are sent again to the next one, and stores ignore repeats.

Why a process: collecting and storing in one process share one GIL, which bounds the two
together; apart, each has a core of its own.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

import msgspec

from .backends import open_backend
from .config import Config
from .inbox import Inbox
from .retry import CircuitBreaker
from .spool import Segment, Spool, read_memories
from .stats import Counters, Latency
from .worker import Worker

__all__ = ["StoringProcess"]

log = logging.getLogger("memcollect")

# The version of what the two sides say to each other: a storing process started after an
# upgrade on disk must not misread an older collecting process.
PROTOCOL = 2
# How long the collecting side lets appended records gather before sending a range, unless a
# flush asks for them at once: bigger ranges cost fewer messages, and the child's batches
# are cut from them anyway.
_LINGER_S = 0.02
# Ranges sent and not yet answered, at most: bounds what a dead child makes us send again.
_MAX_IN_FLIGHT = 4
# How often the child reports its circuit, while it has no range to answer.
_HEARTBEAT_S = 0.5
_RESTART_PAUSE_S = 0.2
_MAX_RESTART_PAUSE_S = 10.0


class _Range(msgspec.Struct, array_like=True):
    """A stretch of a spool segment to store, whole frames only."""

    number: int
    path: str
    start: int
    end: int


# The child's counters that travel to the collecting process, as deltas, in this order.
_COUNTED = (
    "stored",
    "retried",
    "retried_memories",
    "failed",
    "dead_lettered",
    "batches",
    "stored_in_fallback",
    "moved_to_primary",
    "unstorable",
)


class _Done(msgspec.Struct, array_like=True):
    """The child's answer to a range, or a heartbeat (number -1)."""

    number: int
    records: int
    deltas: list[int]  # of _COUNTED since the last answer
    batch_latency: Latency
    store_latency: Latency
    circuit_failures: int
    circuit_open_for: float  # seconds since the circuit opened; -1 when closed
    circuit_error: str


_encode = msgspec.json.Encoder().encode
_decode_range = msgspec.json.Decoder(_Range).decode
_decode_done = msgspec.json.Decoder(_Done).decode

# Every StoringProcess of this process, so that a fork can let go of their pipes at once:
# a forked child holding the write end would keep the storing child waiting for more.
_live: weakref.WeakSet[StoringProcess] = weakref.WeakSet()


def _close_pipes_in_fork() -> None:
    for storer in list(_live):
        storer.abandon_after_fork()


os.register_at_fork(after_in_child=_close_pipes_in_fork)


class StoringProcess:
    """The collecting side: hands spool ranges to a child process and takes its answers."""

    def __init__(
        self,
        spool: Spool,
        config: Config,
        counters: Counters,
        on_circuit: Callable[[int, float, str], None],
        on_done: Callable[[], None],
    ) -> None:
        self.spool = spool
        self.config = config
        self.counters = counters
        self.on_circuit = on_circuit
        self.on_done = on_done
        self.batch_latency = Latency()
        self.store_latency = Latency()
        # Records answered by a child, all told: ranges are answered in order, so everything
        # appended before a flush is done once this reaches what was pending then.
        self.acked = 0
        self.restarts = 0
        self._restart_pause = _RESTART_PAUSE_S
        self.last_exit: int | None = None
        self._changed = threading.Condition()
        self._wake = threading.Event()
        self._stopping = False
        self._stopped = threading.Event()  # set with _stopping: cuts a restart's pause short
        self.last_error = ""
        self._in_flight: deque[tuple[_Range, Segment]] = deque()
        self._next_number = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._send_lock = threading.Lock()
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="memcollect-dispatch", daemon=True
        )
        self._reader: threading.Thread | None = None
        self._abandoned = False
        _live.add(self)

    # --- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the child process and the thread that feeds it; a child that cannot start
        is tried again by that thread, with backoff, for as long as it takes."""
        self._spawn()
        self._dispatcher.start()

    def _spawn(self) -> None:
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        # The child imports this very memcollect, wherever the parent found it.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            child = subprocess.Popen(
                child_command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            # No process at all (out of memory or descriptors, a missing interpreter): the
            # dispatcher tries again after a pause.
            self.last_error = f"it could not be started ({type(exc).__name__}: {exc})"
            log.error("the storing process %s: trying again", self.last_error)
            self._child = None
            return
        assert child.stdin is not None and child.stdout is not None
        settings = msgspec.structs.asdict(self.config)
        settings.update(durability="memory", storer="thread")
        with contextlib.suppress(OSError, ValueError):
            # A child that died at once: its exit is seen by the dispatcher, which starts
            # another.
            child.stdin.write(_encode({"protocol": PROTOCOL, "config": settings}) + b"\n")
            child.stdin.flush()
        self._child = child
        reader = threading.Thread(
            target=self._read_loop, args=(child, child.stdout), name="memcollect-answers",
            daemon=True,
        )  # fmt: skip
        self._reader = reader
        reader.start()
        # Whatever a dead child was given and did not answer goes to this one, in order.
        for item, _ in self._in_flight:
            self._send(child, item)

    def alive(self) -> bool:
        """Whether the storing process runs now (not exited, not between restarts)."""
        child = self._child
        return (
            not self._stopping
            and self._dispatcher.is_alive()
            and child is not None
            and child.poll() is None
        )

    def pid(self) -> int | None:
        """The storing process's PID."""
        return self._child.pid if self._child is not None else None

    def flush(self, deadline: float) -> bool:
        """Wait until everything appended so far is answered, or the monotonic deadline."""
        # Read under the spool's lock, where an answer moves its records from pending to
        # acked in one step: read apart, a range answered in between would count twice.
        with self.spool.lock:
            target = self.acked + self.spool.pending_locked()
        with self._changed:
            while self.acked < target:
                self._wake.set()  # send what is appended now, without lingering
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
            return True

    def stop(self, deadline: float) -> None:
        """Let the child answer what it was sent (until the monotonic deadline), then end it."""
        self.flush(deadline)
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        if self._dispatcher.is_alive():
            self._dispatcher.join(max(0.0, deadline - time.monotonic()) + 1.0)
        child = self._child
        if child is None:
            return
        with contextlib.suppress(OSError, ValueError), self._send_lock:
            assert child.stdin is not None
            child.stdin.close()  # the child finishes what it has, then exits
        try:
            child.wait(max(0.0, deadline - time.monotonic()) + 1.0)
        except subprocess.TimeoutExpired:
            # Still storing past the deadline: what it has not answered stays in the spool.
            child.kill()
            child.wait()
        if self._reader is not None:
            self._reader.join(1.0)
        if child.stdout is not None:
            child.stdout.close()
        _live.discard(self)
        self._settle()

    def _settle(self) -> None:
        """Let segments whose records were all sent and answered be deleted at close."""
        spool = self.spool
        with spool.lock:
            for segment in list(spool.backlog):
                if segment.outstanding <= 0 and (segment.read_offset or 0) >= segment.size:
                    segment.read_offset = None
                    spool.backlog.remove(segment)

    def release(self) -> None:
        """Stop without waiting: the child answers what it was sent, then exits."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        child = self._child
        if child is not None and child.stdin is not None:
            with contextlib.suppress(OSError, ValueError), self._send_lock:
                child.stdin.close()
        _live.discard(self)

    def abandon_after_fork(self) -> None:
        """In a forked child: close the parent's pipes here; the storing process is theirs."""
        if self._abandoned:
            return
        self._abandoned = True
        self._stopping = True
        self._stopped.set()
        child = self._child
        if child is not None:
            # Point the pipe descriptors at /dev/null: that lets go of the pipes, and the file
            # objects around them may still flush or close later without touching a
            # descriptor number the process has since reused.
            null = os.open(os.devnull, os.O_RDWR)
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError, ValueError):
                        os.dup2(null, pipe.fileno())
            os.close(null)
            # The Popen object belongs to the parent: never wait on or kill it from here.
            child.returncode = 0
        _live.discard(self)

    # --- the collecting side's two threads ---------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._stopping:
            try:
                self._dispatch_once()
            except Exception:  # a bug: logged, and dispatching goes on after a pause
                log.exception("memcollect dispatcher failed; the spool keeps what is collected")
                self._pause_before_restart()

    def _dispatch_once(self) -> None:
        self._wake.wait(_LINGER_S)
        self._wake.clear()
        child = self._child
        if child is None or child.poll() is not None:
            self._restart()
            return
        while len(self._in_flight) < _MAX_IN_FLIGHT:
            taken = self._take_range()
            if taken is None:
                break
            self._in_flight.append(taken)
            self._send(child, taken[0])

    def _restart(self) -> None:
        child = self._child
        if child is not None:
            self.last_exit = child.wait()
            self.last_error = f"it exited with code {self.last_exit}"
            if self._reader is not None:
                self._reader.join(1.0)
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            self._child = None
            log.error(
                "the storing process exited (code %s): starting another; %d ranges are sent "
                "again", self.last_exit, len(self._in_flight),
            )  # fmt: skip
        self.restarts += 1
        self._pause_before_restart()
        if not self._stopping:
            self._spawn()

    def _pause_before_restart(self) -> None:
        """A child that cannot start (a broken environment) must not spin: wait longer after
        each failure with nothing answered in between, waking early for stop()."""
        self._stopped.wait(self._restart_pause)
        self._restart_pause = min(_MAX_RESTART_PAUSE_S, self._restart_pause * 2)

    def _take_range(self) -> tuple[_Range, Segment] | None:
        """The oldest appended stretch not yet sent, whole frames only."""
        spool = self.spool
        with spool.lock:
            while spool.backlog:
                segment = spool.backlog[0]
                start = segment.read_offset or 0
                end = segment.size
                if end > start:
                    segment.read_offset = end
                    item = _Range(self._next_number, str(segment.path), start, end)
                    self._next_number += 1
                    return item, segment
                if not segment.sealed:
                    return None  # the segment being written: more comes later
                # Sealed and all sent: it leaves the backlog, and goes once answered.
                spool.backlog.popleft()
                segment.read_offset = None
                spool.delete_if_done_locked(segment)
            return None

    def _send(self, child: subprocess.Popen[bytes], item: _Range) -> None:
        with self._send_lock:
            try:
                assert child.stdin is not None
                child.stdin.write(_encode(item) + b"\n")
                child.stdin.flush()
            except (OSError, ValueError):
                pass  # it died: the dispatcher restarts it and sends this again

    def _read_loop(self, child: subprocess.Popen[bytes], answers: IO[bytes]) -> None:
        for line in answers:
            try:
                done = _decode_done(line)
            except msgspec.DecodeError:
                log.warning("storing process said something unexpected: %r", line[:200])
                continue
            try:
                self._apply(done)
            except Exception:  # pragma: no cover - a bug; the reader must keep reading
                log.exception("could not apply the storing process's answer")
        with self._changed:
            self._changed.notify_all()
        self._wake.set()  # the dispatcher sees the exit and starts another

    def _apply(self, done: _Done) -> None:
        self.on_circuit(done.circuit_failures, done.circuit_open_for, done.circuit_error)
        self.batch_latency, self.store_latency = done.batch_latency, done.store_latency
        self.counters.absorb(dict(zip(_COUNTED, done.deltas, strict=True)))
        if done.number < 0:
            return
        if not self._in_flight or self._in_flight[0][0].number != done.number:
            log.warning("storing process answered range %d out of order", done.number)
            return
        answered, segment = self._in_flight.popleft()
        spool = self.spool
        with spool.lock:
            segment.done_offset = answered.end
            spool.ack_locked(segment, done.records)
            self.acked += done.records
        with self._changed:
            self._changed.notify_all()
        self._restart_pause = _RESTART_PAUSE_S
        self.on_done()
        self._wake.set()


# --- the storing process ---------------------------------------------------------------


class _Child:
    """The storing process: stores the ranges it is sent, answers each, exits at EOF."""

    def __init__(self, config: Config, answers: IO[bytes]) -> None:
        self.config = config
        self.answers = answers
        self.backend = open_backend(_background_checkpoints(config.backend_url))
        self.backend.open()
        self.fallback = open_backend(config.fallback) if config.fallback else None
        if self.fallback is not None:
            self.fallback.open()
        self.counters = Counters()
        self.breaker = CircuitBreaker(
            config.max_retries, config.retry_max, open_after=config.circuit_open_after
        )
        self.worker = Worker.configured(
            config,
            Inbox(1, config.batch_size, lambda memory: None),
            self.backend,
            self.counters,
            self.breaker,
            on_stored=[],
            on_failure=[],
            durable=True,
            fallback=self.fallback,
        )
        if self.fallback is not None:
            self.worker.fallback_pending = self.fallback.count() > 0
        self.ranges: deque[_Range] = deque()
        self.arrived = threading.Condition()
        self.ended = False
        self._answer_lock = threading.Lock()
        self._reported = _counts(self.counters)

    def answer(self, number: int, records: int) -> None:
        """Tell the collecting process what became of a range (number -1: a heartbeat)."""
        with self._answer_lock:
            now = _counts(self.counters)
            delta = [a - b for a, b in zip(now, self._reported, strict=True)]
            self._reported = now
            opened = self.breaker.opened_at
            done = _Done(
                number,
                records,
                delta,
                batch_latency=self.counters.batch_latency.snapshot(),
                store_latency=self.counters.store_latency.snapshot(),
                circuit_failures=self.breaker.failures,
                circuit_open_for=-1.0 if opened is None else time.monotonic() - opened,
                circuit_error=self.breaker.last_error,
            )
            self.answers.write(_encode(done) + b"\n")
            self.answers.flush()

    def listen(self, requests: IO[bytes]) -> None:
        """Queue the ranges sent; note the end of input."""
        for line in requests:
            item = _decode_range(line)
            with self.arrived:
                self.ranges.append(item)
                self.arrived.notify()
        with self.arrived:
            self.ended = True
            self.arrived.notify()

    def heartbeat(self, stop: threading.Event) -> None:
        """Report the circuit while a range takes long (an outage, retries)."""
        while not stop.wait(_HEARTBEAT_S):
            with contextlib.suppress(OSError, ValueError):
                self.answer(-1, 0)

    def run(self) -> None:
        """Store ranges as they come; between them, the backend's put-off work."""
        worker, breaker = self.worker, self.breaker
        while True:
            with self.arrived:
                if not self.ranges and not self.ended:
                    moving = worker.fallback_pending and breaker.state != "open"
                    if not (worker.idle_due or moving):
                        self.arrived.wait(_HEARTBEAT_S)
                item = self.ranges.popleft() if self.ranges else None
                ended = self.ended
            if item is not None:
                self.answer(item.number, self.store_range(item))
            elif ended:
                return
            elif worker.fallback_pending and breaker.state != "open":
                with worker.moving:
                    worker.move_from_fallback()
            elif worker.idle_due:
                worker.idle_due = worker.idle_step()

    def store_range(self, item: _Range) -> int:
        """Store the records of one range, batch by batch; how many records it held."""
        with open(item.path, "rb") as f:
            f.seek(item.start)
            data = f.read(item.end - item.start)
        memories = read_memories(data)
        size = self.config.batch_size
        for start in range(0, len(memories), size):
            self.worker.store(memories[start : start + size])
        return len(memories)

    def close(self) -> None:
        """Release the stores."""
        self.backend.close()
        if self.fallback is not None:
            self.fallback.close()


def child_command() -> list[str]:
    """The command that starts a storing process."""
    return [sys.executable, "-m", "memcollect.storer"]


def _background_checkpoints(url: str) -> str:
    """A SQLite URL with checkpoints in a thread of their own: this process only stores, and
    its commits need not wait for the log's copy and its fsyncs (+20-40% measured alone)."""
    if not url.startswith("sqlite:") or "checkpoint=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "checkpoint=background"


def _counts(c: Counters) -> list[int]:
    return [getattr(c, name) for name in _COUNTED]


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
    config = Config(**hello["config"])
    child = _Child(config, answers)
    stop = threading.Event()
    threading.Thread(target=child.listen, args=(requests,), daemon=True).start()
    threading.Thread(target=child.heartbeat, args=(stop,), daemon=True).start()
    try:
        child.run()
    finally:
        stop.set()
        child.close()


if __name__ == "__main__":
    main()
