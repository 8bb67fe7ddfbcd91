"""The collecting side of storer="process": hands spool ranges to a child, takes its answers."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

import msgspec

from ..config import Config
from ..retry import CircuitBreaker
from ..spool import Segment, Spool
from ..stats import Counters, Latency
from .inprocess import InProcessChild, Shared
from .protocol import COUNTED, PROTOCOL, Done, Range, child_command, decode_done, encode

if TYPE_CHECKING:
    import subprocess

__all__ = ["StoringProcess"]

log = logging.getLogger("memcollect")

# How long the collecting side lets appended records gather before sending a range, unless a
# flush asks for them at once: bigger ranges cost fewer messages, and the child's batches
# are cut from them anyway.
_LINGER_S = 0.02
# Ranges sent and not yet answered, at most: bounds what a dead child makes us send again.
_MAX_IN_FLIGHT = 4
_RESTART_PAUSE_S = 0.2
_MAX_RESTART_PAUSE_S = 10.0
# Records collected and not yet stored at which a storing thread hands the load to a
# storing process (storer="auto"). A thread shares the GIL with the code calling collect();
# a process stores on the other core. A burst smaller than 20,000 never starts one (measured:
# a script collecting 15,000 and closing took 315 ms to close with a process started at
# 10,000, 103 ms without); a sustained load passes it within a second. A process started for
# a burst that ends before it is ready is stopped at close() without being waited for.
PROMOTE_AT = 20_000
# After a storing process failed to start for a promotion, the thread goes on alone this long.
_PROMOTE_RETRY_S = 30.0
# A load with no collect() for this long has ended: a promotion not yet done is given up, for
# the thread alone, with the GIL to itself, stores a backlog about as fast as a process that
# must still start and, at close(), stop (measured: 20,000 memories at close, 215 ms by the
# thread against 290 ms by a process taking over, plus ~70 ms to stop it). Longer than a
# process takes to start, so that bursts with pauses between them still count as one load;
# while a flush() waits, a short pause is enough: whoever collected is waiting for the store.
_LOAD_GONE_S = 0.25
_LOAD_GONE_WHILE_FLUSHING_S = 0.03
# After a promotion given up that way, the next one waits this long, twice as long after
# each one given up in a row (up to _PROMOTE_RETRY_S): bursts with pauses between them must
# not start and stop a process each.
_PROMOTE_PAUSE_S = 1.0

# Every StoringProcess of this process, so that a fork can let go of their pipes at once:
# a forked child holding the write end would keep the storing child waiting for more.
_live: weakref.WeakSet[StoringProcess] = weakref.WeakSet()


def _timeout_expired() -> type[Exception]:
    """subprocess.TimeoutExpired, looked up only once a wait() raised (an except clause's
    class is evaluated then), when whatever raised it has imported subprocess already."""
    import subprocess

    return subprocess.TimeoutExpired


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
        circuit: CircuitBreaker,
        on_done: Callable[[], None],
        *,
        shared: Shared | None = None,
    ) -> None:
        self.spool = spool
        self.config = config
        self.counters = counters
        # The child's circuit as last reported, for stats() and health() here.
        self.circuit = circuit
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
        self._stopped_because = ""
        self._in_flight: deque[tuple[Range, Segment]] = deque()
        self._next_number = 0
        self._child: subprocess.Popen[bytes] | InProcessChild | None = None
        self._send_lock = threading.Lock()
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="memcollect-dispatch", daemon=True
        )
        self._reader: threading.Thread | None = None
        self._abandoned = False
        # storer="auto": a storing thread first (shared: the collector's stores), handed to a
        # storing process once the load asks for one (unless callbacks pin it).
        self._shared = shared
        self.in_process = shared is not None
        self.pinned = False
        self._next: subprocess.Popen[bytes] | None = None
        self._next_reader: threading.Thread | None = None
        self._next_ready = threading.Event()
        self._promote_after = 0.0
        self._promote_pause = _PROMOTE_PAUSE_S
        self._promotion = threading.Lock()
        # Where the spool's appends were at the last look, and when they last moved.
        self._last_position = (-1, -1)
        self._appended_at = 0.0
        self._closing = False
        self._flushing = 0  # flush() calls waiting now
        # The first range in flight is the rest of one a storing thread stopped short of, for
        # the process taking over: it waits to be sent to that process.
        self._handed_back = False
        _live.add(self)

    # --- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the child process and the thread that feeds it; a child that cannot start
        is tried again by that thread, with backoff, for as long as it takes."""
        self._spawn()
        self._dispatcher.start()

    def _spawn(self) -> None:
        child = self._start_child()
        if child is None:
            return
        self._child = child
        self._reader = self._start_reader(child)
        # Whatever a dead child was given and did not answer goes to this one, in order.
        self._resend_in_flight(child)

    def _resend_in_flight(self, child: subprocess.Popen[bytes] | InProcessChild) -> None:
        """Send the child every range in flight, in order."""
        self._handed_back = False
        for item, _ in self._in_flight:
            self._send(child, item)

    def _start_child(self) -> subprocess.Popen[bytes] | InProcessChild | None:
        """A storing thread (before a promotion) or process, sent its settings."""
        if self.in_process:
            assert self._shared is not None
            thread = InProcessChild(self.config, self._shared)
            self._hello(thread)
            return thread
        return self._start_process()

    def _start_process(self) -> subprocess.Popen[bytes] | None:
        # Imported here: a collector whose storing stays in its thread never pays for it (4 ms
        # of a short script's start).
        import subprocess

        package_root = str(Path(__file__).resolve().parents[2])
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
            return None
        self._hello(child)
        return child

    def _hello(self, child: subprocess.Popen[bytes] | InProcessChild) -> None:
        assert child.stdin is not None
        settings = msgspec.structs.asdict(self.config)
        settings.update(durability="memory", storer="thread")
        with contextlib.suppress(OSError, ValueError):
            # A child that died at once: its exit is seen by the dispatcher, which starts
            # another.
            child.stdin.write(encode({"protocol": PROTOCOL, "config": settings}) + b"\n")
            child.stdin.flush()

    def _start_reader(self, child: subprocess.Popen[bytes] | InProcessChild) -> threading.Thread:
        reader = threading.Thread(
            target=self._read_loop, args=(child, child.stdout), name="memcollect-answers",
            daemon=True,
        )  # fmt: skip
        reader.start()
        return reader

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
        """The storing process's PID (None while a thread of this process stores)."""
        if self.in_process or self._child is None:
            return None
        return self._child.pid

    def flush(self, deadline: float) -> bool:
        """Wait until everything appended so far is answered, or the monotonic deadline."""
        # Read under the spool's lock, where an answer moves its records from pending to
        # acked in one step: read apart, a range answered in between would count twice.
        with self.spool.lock:
            target = self.acked + self.spool.pending_locked()
        with self._changed:
            self._flushing += 1  # a pause in collect() now likely ends the load: see _load_goes_on
            try:
                while self.acked < target:
                    self._wake.set()  # send what is appended now, without lingering
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._changed.wait(min(remaining, 0.05))
                return True
            finally:
                self._flushing -= 1

    def stop(self, deadline: float) -> None:
        """Let the child answer what it was sent (until the monotonic deadline), then end it."""
        self._closing = True  # no promotion from here on: nothing more is collected
        self.flush(deadline)
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        if self._dispatcher.is_alive():
            self._dispatcher.join(max(0.0, deadline - time.monotonic()) + 1.0)
        self._drop_next()
        child = self._child
        if child is None:
            return
        with contextlib.suppress(OSError, ValueError), self._send_lock:
            assert child.stdin is not None
            child.stdin.close()  # the child finishes what it has, then exits
        try:
            child.wait(max(0.0, deadline - time.monotonic()) + 1.0)
        except _timeout_expired():
            # Still storing past the deadline: what it has not answered stays in the spool.
            child.kill()
            child.wait()
        if self._reader is not None:
            self._reader.join(1.0)
        if child.stdout is not None:
            child.stdout.close()
        _live.discard(self)
        self.spool.settle_ranges()

    def after_storing(self, action: Callable[[], None]) -> None:
        """Run `action` (closing the stores) now, or once an abandoned storing thread ends:
        it may still be writing through them."""
        child = self._child
        if isinstance(child, InProcessChild):
            child.when_ended(action)
        else:
            action()

    def release(self) -> None:
        """Stop without waiting: the child answers what it was sent, then exits."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        for child in (self._child, self._next):
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
        for child in (self._child, self._next):
            if child is None:
                continue
            # Point the pipe descriptors at /dev/null: that lets go of the pipes, and the file
            # objects around them may still flush or close later without touching a
            # descriptor number the process has since reused.
            null = os.open(os.devnull, os.O_RDWR)
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError, ValueError):
                        os.dup2(null, pipe.fileno())
            os.close(null)
            # The Popen object belongs to the parent (a storing thread is not here at all):
            # never wait on or kill it from here.
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
        self.spool.release_when_idle()
        child = self._child
        if child is None or child.poll() is not None:
            self._restart()
            return
        if self.in_process and self._promoting():
            return
        child = self._child
        assert child is not None
        # A storing thread is sent one range at a time: what it holds when a process takes
        # over is what the process waits for.
        most = 1 if self.in_process else _MAX_IN_FLIGHT
        while len(self._in_flight) < most:
            taken = self._take_range()
            if taken is None:
                break
            self._in_flight.append(taken)
            self._send(child, taken[0])

    # --- storer="auto": from a storing thread to a storing process ---------------------

    def pin(self) -> bool:
        """Keep storing in this process's thread from now on (callbacks need it); False if the
        load was handed to a storing process already."""
        with self._promotion:
            if not self.in_process:
                return False
            self.pinned = True
            return True

    def _promoting(self) -> bool:
        """Whether ranges wait for a promotion under way; starts one when the load asks.

        The thread stores on while the process starts. Once the process says it is ready,
        the thread is sent nothing more; once it has answered what it holds, it ends and the
        process takes the ranges: answers keep coming in order.
        """
        nxt = self._next
        load_goes_on = self._load_goes_on()
        if nxt is None:
            if self._handed_back and self._child is not None:
                # The thread stopped short for a promotion given up meanwhile: the rest is its.
                self._resend_in_flight(self._child)
            if not load_goes_on or self.pinned or time.monotonic() < self._promote_after:
                return False
            with self.spool.lock:
                backlog = self.spool.pending_locked()
            if backlog >= PROMOTE_AT:
                self._begin_promotion()
            return False
        if nxt.poll() is not None:
            log.error(
                "the storing process for a heavier load exited as it started (code %s): "
                "storing goes on in this process's thread", nxt.returncode,
            )  # fmt: skip
            self._stay_on_thread()
            self._promote_after = time.monotonic() + _PROMOTE_RETRY_S
            return False
        if self.pinned:
            self._stay_on_thread()
            return False
        if not load_goes_on and not self._shared_hand_over():
            self._give_up_promotion()  # ready or not: once the thread hands over, it goes on
            return False
        if not self._next_ready.is_set():
            return False  # the thread stores on while the process starts
        if self._in_flight and not self._handed_back:
            # From now on the thread is sent nothing: it stops after the batch it stores and
            # answers how far it got, which wakes this.
            assert self._shared is not None
            self._shared.hand_over.set()
            return True
        with self._promotion:
            if not self._pinned_now():
                self._switch_to_next()
                return False
        self._stay_on_thread()
        return False

    def _load_goes_on(self) -> bool:
        """Whether collect() calls still come: the spool grew within the last _LOAD_GONE_S
        (_LOAD_GONE_WHILE_FLUSHING_S while a flush() waits), and close() has not begun."""
        now = time.monotonic()
        position = self.spool.position()
        if position != self._last_position:
            self._last_position, self._appended_at = position, now
        window = _LOAD_GONE_WHILE_FLUSHING_S if self._flushing else _LOAD_GONE_S
        return not self._closing and now - self._appended_at < window

    def _shared_hand_over(self) -> bool:
        """Whether the thread was told to hand over (then the switch goes through)."""
        return self._shared is not None and self._shared.hand_over.is_set()

    def _give_up_promotion(self) -> None:
        log.info("memcollect: the load ended before the storing process was needed: "
                 "storing goes on in this process's thread")  # fmt: skip
        self._stay_on_thread()
        self._promote_after = time.monotonic() + self._promote_pause
        self._promote_pause = min(self._promote_pause * 2, _PROMOTE_RETRY_S)

    def _pinned_now(self) -> bool:
        """Whether pin() came, from another thread, since the last look."""
        return self.pinned

    def _begin_promotion(self) -> None:
        nxt = self._start_process()
        if nxt is None:
            self._promote_after = time.monotonic() + _PROMOTE_RETRY_S
            return
        self._next_ready.clear()
        self._next = nxt
        assert self._shared is not None
        self._shared.promoting.set()
        self._next_reader = self._start_reader(nxt)
        log.info("memcollect: a sustained load; starting a storing process (pid %s)", nxt.pid)

    def _switch_to_next(self) -> None:
        """The thread has answered everything: let the process store, and end the thread."""
        thread, reader = self._child, self._reader
        assert thread is not None
        self._child, self._reader = self._next, self._next_reader
        self._next = self._next_reader = None
        self.in_process = False
        assert self._child is not None
        # The rest of what the thread stopped short of, first: the thread is sent nothing more
        # and has answered all it was sent, so the process need not wait for it to end.
        self._resend_in_flight(self._child)
        with contextlib.suppress(OSError, ValueError), self._send_lock:
            assert thread.stdin is not None
            thread.stdin.close()
        thread.wait(None)
        if reader is not None:
            reader.join(1.0)
        if thread.stdout is not None:
            thread.stdout.close()
        log.info("memcollect: the storing process (pid %s) took over", self.pid())

    def _stay_on_thread(self) -> None:
        """Give up a promotion: the thread stores on, the rest of its range too."""
        self._drop_next()
        assert self._shared is not None
        self._shared.promoting.clear()
        self._shared.hand_over.clear()
        if self._handed_back and self._child is not None:
            self._resend_in_flight(self._child)

    def _drop_next(self) -> None:
        """End the process started for a promotion that will not happen."""
        nxt, self._next = self._next, None
        if nxt is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert nxt.stdin is not None
            nxt.stdin.close()
        # It was sent nothing to store: no need to wait for it to finish starting (a close()
        # soon after a burst would wait ~200 ms for an interpreter that has nothing to do).
        with contextlib.suppress(OSError):
            nxt.kill()
        nxt.wait()
        if self._next_reader is not None:
            self._next_reader.join(1.0)
        if nxt.stdout is not None:
            nxt.stdout.close()
        self._next_reader = None

    def _restart(self) -> None:
        child = self._child
        if child is not None:
            self.last_exit = child.wait()
            if self._reader is not None:
                self._reader.join(1.0)  # it reads the process's last word, if it said one
            told, self._stopped_because = self._stopped_because, ""
            self.last_error = told or f"it exited with code {self.last_exit}"
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            self._child = None
            log.error(
                "the storing %s exited (code %s): starting another; %d ranges are sent again",
                "thread" if isinstance(child, InProcessChild) else "process", self.last_exit,
                len(self._in_flight),
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

    def _take_range(self) -> tuple[Range, Segment] | None:
        """The oldest appended stretch not yet sent, numbered for its answer."""
        with self.spool.lock:
            taken = self.spool.take_range_locked()
            if taken is None:
                return None
            segment, start, end = taken
            item = Range(self._next_number, str(segment.path), start, end)
            self._next_number += 1
            return item, segment

    def _send(self, child: subprocess.Popen[bytes] | InProcessChild, item: Range) -> None:
        with self._send_lock:
            try:
                assert child.stdin is not None
                child.stdin.write(encode(item) + b"\n")
                child.stdin.flush()
            except (OSError, ValueError):
                pass  # it died: the dispatcher restarts it and sends this again

    def _read_loop(
        self, child: subprocess.Popen[bytes] | InProcessChild, answers: IO[bytes]
    ) -> None:
        for line in answers:
            try:
                done = decode_done(line)
            except msgspec.DecodeError:
                log.warning("storing process said something unexpected: %r", line[:200])
                continue
            if done.stopped:
                self._stopped_because = done.stopped  # its last word: it exits now
                continue
            if child is self._next:
                # A process started for a promotion: its first word says it is ready.
                self._next_ready.set()
                self._wake.set()
            try:
                self._apply(done)
            except Exception:  # pragma: no cover - a bug; the reader must keep reading
                log.exception("could not apply the storing process's answer")
        with self._changed:
            self._changed.notify_all()
        self._wake.set()  # the dispatcher sees the exit and starts another

    def _apply(self, done: Done) -> None:
        circuit = self.circuit
        circuit.failures, circuit.last_error = done.circuit_failures, done.circuit_error
        opened = done.circuit_open_for
        circuit.opened_at = None if opened < 0 else time.monotonic() - opened
        self.batch_latency, self.store_latency = done.batch_latency, done.store_latency
        self.counters.absorb(dict(zip(COUNTED, done.deltas, strict=True)), done.dropped)
        if done.number < 0:
            return
        if not self._in_flight or self._in_flight[0][0].number != done.number:
            log.warning("storing process answered range %d out of order", done.number)
            return
        answered, segment = self._in_flight[0]
        stopped_short = 0 <= done.stored_to < answered.end
        spool = self.spool
        with spool.lock:
            spool.ack_range_locked(
                segment, done.stored_to if stopped_short else answered.end, done.records
            )
            self.acked += done.records
        if stopped_short:
            # A storing thread handing over: the rest, under the same number, is the first
            # range the storing process is sent.
            self._in_flight[0] = (Range(answered.number, answered.path, done.stored_to,
                                        answered.end), segment)  # fmt: skip
            self._handed_back = True
        else:
            self._in_flight.popleft()
        with self._changed:
            self._changed.notify_all()
        self._restart_pause = _RESTART_PAUSE_S
        self.on_done()
        self._wake.set()
