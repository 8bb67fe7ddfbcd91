"""ProcessPipeline: the spool is the only queue, and a storing process stores from it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from zlib import crc32 as _crc32

from ..errors import QueueFullError, ValidationError
from ..frames import encode_frame, encode_record
from ..locks import SharedLock, shared_lock
from ..model import Memory
from ..pipelines import Parts, Pipeline
from ..retry import CircuitBreaker
from ..spool import Spool
from ..spooling import SpoolTrouble, open_spool
from ..stats import Latency
from .collecting import StoringProcess
from .inprocess import Shared
from .overflow import Overflow

__all__ = ["ProcessPipeline", "check_process_storer"]

CALLBACKS_NEED_THREAD = (
    "on_stored and on_failure callbacks run where memories are stored, which with "
    "storer='process' is another process: use storer='thread' to have callbacks"
)
CALLBACKS_AFTER_HANDOVER = (
    "on_stored and on_failure callbacks run where memories are stored, and this collector "
    "has handed its load to a storing process (storer='auto'): pass the callbacks to "
    "MemoryCollector() or register them before collecting, or use storer='thread'"
)


def check_process_storer(given_backend: bool, url: str, callbacks: bool) -> None:
    """What storer='process' cannot do, said before anything starts."""
    if callbacks:
        raise ValidationError(CALLBACKS_NEED_THREAD)
    if given_backend:
        raise ValidationError(
            "storer='process' opens the store again in the storing process: pass its URL, "
            "not a Backend object"
        )
    if url.startswith(("memory:", "MEMORY:")):
        raise ValidationError(
            "storer='process' needs a store both processes reach (sqlite://, postgresql://, "
            "http://), not memory://, which lives in one process's RAM"
        )


class ProcessPipeline(Pipeline):
    """Appends to the spool only; a storing process stores what it holds (storer="auto": a
    thread of this process until the load asks for a process)."""

    callbacks = False
    spool: Spool

    def __init__(self, parts: Parts, start_in_thread: bool = False) -> None:
        super().__init__(parts)
        self.spool = spool = open_spool(parts.config, None)
        # Left by a process that died: counted as accepted (and replayed) here, as the
        # worker thread counts what it reads back.
        self._accepted = spool.adopted_records
        parts.counters.replayed += spool.adopted_records
        # What the storing process last said of its circuit.
        self.mirror = CircuitBreaker(parts.config.max_retries, parts.config.retry_max)
        shared = (
            Shared(parts.backend, parts.fallback, parts.on_stored, parts.on_failure, parts.spans)
            if start_in_thread
            else None
        )
        self.storer = StoringProcess(
            spool, parts.config, parts.counters, self.mirror, parts.on_change, shared=shared
        )
        fallback = parts.fallback
        self._moving = shared_lock(fallback.move_lock_path() if fallback is not None else None)
        # What the spool refuses (a full disk) is stored from RAM, as the thread would.
        self._overflow = Overflow(parts)
        self._trouble = SpoolTrouble(
            spool,
            parts.clock,
            f"memories are kept in RAM (up to max_queue_size={parts.config.max_queue_size}) "
            f"and stored from there until the disk takes them again; beyond that, "
            f"on_full={parts.config.on_full!r} decides",
        )

    def start(self) -> None:
        """Start the storing process."""
        self.storer.start()

    def allow_callbacks(self) -> bool:
        """Whether callbacks can be called: while storing from a thread, which they keep."""
        return self.storer.pin()

    @property
    def accepted(self) -> int:
        """Memories accepted so far."""
        return self._accepted

    def count_accepted(self, n: int) -> None:
        """Count memories accepted that the spool did not take."""
        with self.spool.lock:
            self._accepted += n

    @property
    def moving(self) -> SharedLock:
        """The lock the storing process takes to move memories back from the fallback."""
        return self._moving

    @property
    def queue_depth(self) -> int:  # type: ignore[override]
        """Records in the spool not yet stored, and those the spool refused."""
        return self.spool.pending() + len(self._overflow)

    def circuit(self) -> CircuitBreaker:
        """The storing process's circuit, as it last said."""
        return self.mirror

    def latencies(self) -> tuple[Latency, Latency]:
        """The storing process's latencies, as it last said."""
        return self.storer.batch_latency, self.storer.store_latency

    def storer_pid(self) -> int | None:
        """The storing process's PID."""
        return self.storer.pid()

    @property
    def restarts(self) -> int:  # type: ignore[override]
        """How often the storing process was started again."""
        return self.storer.restarts

    def not_running(self) -> str | None:
        """Why the storing process does not store, if it does not."""
        storer = self.storer
        if self.closed or storer.alive():
            return None
        return (
            f"the storing process is not running (last exit code {storer.last_exit}, "
            f"{storer.restarts} restarts; {storer.last_error or 'starting'}): the spool keeps "
            "what is collected, and it is started again"
        )

    def put(self, memory: Memory) -> None:
        """Append one memory to the spool."""
        payload = encode_record(memory)
        crc = _crc32(payload)
        spool = self.spool
        # acquire/release, not `with`: half the cost, on every collect().
        lock = spool.lock
        lock.acquire()
        try:
            placed = spool.append_one_locked(payload, crc)
            if placed is not None:
                if placed[0].read_offset is None:  # else a no-op: the call is saved
                    spool.start_backlog_locked(*placed)
                self._accepted += 1
                return
        finally:
            lock.release()
        self._refused([memory])

    def put_many(self, memories: Sequence[Memory], force: bool = False) -> None:
        """Append memories to the spool, for the storing process to read."""
        spool = self.spool
        frames = [encode_frame(m) for m in memories]
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        with spool.lock:
            placed = spool.append_locked(data, len(frames))
            if placed is not None:
                spool.start_backlog_locked(*placed)
                self._accepted += len(memories)
                return
        self._refused(memories)

    def _refused(self, memories: Sequence[Memory]) -> None:
        """The spool refused: RAM keeps what it has room for, on_full decides the rest."""
        self._trouble.log()
        kept = self._overflow.take(memories)
        if kept:
            self.count_accepted(kept)
        if kept < len(memories):
            self._spool_full(memories[kept:])

    def _spool_full(self, memories: Sequence[Memory]) -> None:
        """The spool is the only queue: when it refuses, on_full says what happens."""
        for memory in memories:
            if self.rejected_as_closed(memory):
                continue
            policy = self.config.on_full
            if policy == "raise":
                raise QueueFullError(
                    f"the spool is full (max_spool_bytes={self.spool.max_bytes}) or the disk "
                    "refused (see health()): slow down, raise max_spool_bytes, or choose "
                    "on_full='drop_lowest' or 'block'"
                )
            if policy == "block" and self._append_when_room(memory):
                continue
            self.reject(memory, "queue_full")

    def _append_when_room(self, memory: Memory) -> bool:
        """Wait up to block_timeout for the storing process to make room in the spool."""
        spool = self.spool
        frame = encode_frame(memory)
        deadline = time.monotonic() + self.config.block_timeout
        with spool.lock:
            while True:
                placed = spool.append_locked(frame, 1)
                if placed is not None:
                    spool.start_backlog_locked(*placed)
                    self._accepted += 1
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    return False
                spool.drained.wait(min(remaining, 0.05))

    def flush(self, timeout: float | None) -> bool:
        """Wait until the storing process has answered everything appended so far."""
        if self.spool.fsync:
            self.spool.sync()  # accepted means on disk now, even if storing times out
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        return self._overflow.flush(deadline) & self.storer.flush(deadline)

    def close(self, timeout: float | None) -> None:
        """Let the storing process answer what it was sent, then end it; release the stores."""
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        self._overflow.close(deadline)
        self.storer.stop(deadline)
        self.spool.close()  # what the storing process did not answer waits on disk
        self.storer.after_storing(self._close_stores)

    def _close_stores(self) -> None:
        self.parts.backend.close()
        if self.parts.fallback is not None:
            self.parts.fallback.close()

    def release(self) -> None:
        """The storing process answers what it was sent and exits; the rest waits on disk."""
        self.storer.release()

    def let_go_after_fork(self) -> None:
        """In a forked child: the storing process and its pipes are the parent's."""
        self.storer.abandon_after_fork()
        super().let_go_after_fork()

    def pending(self, ids: list[str]) -> dict[str, Memory]:
        """Memories in the spool not yet answered, and those the spool refused, by id."""
        return self.spool.find_many(ids, everything=True) | self._overflow.find(ids)

    def rotate(self) -> None:
        """Start a new segment, so that the full one's stored bytes can go (at once, when
        all its records were answered: a delete() must leave no bytes of them behind)."""
        self.spool.rotate()
        self.spool.settle_ranges()
