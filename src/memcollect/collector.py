"""MemoryCollector: the front door. collect() validates, queues and returns an id."""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from zlib import crc32 as _crc32

import msgspec

from .backends import open_backend
from .backends.base import Backend, DeadLetter, SearchQuery
from .cache import Cache
from .config import Config, load_config
from .errors import MemcollectError, QueueFullError, TransientBackendError, ValidationError
from .inbox import Inbox
from .model import (
    PRIORITY_RANK,
    Memory,
    check_category,
    check_labels,
    check_memory,
    check_tags,
    make_memory,
    memory_from_dict,
)
from .retry import CircuitBreaker
from .spool import Segment, Spool, encode_frame, encode_record
from .stats import Counters, Health, Stats
from .worker import (
    FailureCallback,
    StoredCallback,
    Worker,
    content_hash,
    latency_sample,
    notify_failure,
    notify_stored,
)

__all__ = ["SEARCH_MODES", "MemoryCollector"]

SEARCH_MODES = ("text", "semantic", "hybrid")

log = logging.getLogger("memcollect")

Clock = Callable[[], float]

# A drop degrades health for this long: an alert, not a scar.
RECENT_DROP_S = 300.0
# A write that has not answered for this long makes health degraded while it waits.
SLOW_WRITE_S = 1.0
# Spool write failures of one kind are logged once, then counted in a line this often.
SPOOL_LOG_INTERVAL_S = 60.0


_CALLBACKS_NEED_THREAD = (
    "on_stored and on_failure callbacks run where memories are stored, which with "
    "storer='process' is another process: use storer='thread' to have callbacks"
)


def _check_process_storer(backend: Backend | None, config: Config, callbacks: bool) -> None:
    """What storer='process' cannot do, said before anything starts."""
    if callbacks:
        raise ValidationError(_CALLBACKS_NEED_THREAD)
    if backend is not None:
        raise ValidationError(
            "storer='process' opens the store again in the storing process: pass its URL, "
            "not a Backend object"
        )
    if config.backend_url.startswith(("memory:", "MEMORY:")):
        raise ValidationError(
            "storer='process' needs a store both processes reach (sqlite://, postgresql://, "
            "http://), not memory://, which lives in one process's RAM"
        )


class _Process:
    """The current PID, refreshed by an at-fork hook so the hot path needs no syscall."""

    pid = os.getpid()


def _refresh_pid() -> None:
    _Process.pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


class MemoryCollector:
    """Collects memories without blocking the caller and stores them in the background."""

    def __init__(
        self,
        target: str | Config | Mapping[str, Any] | Backend | None = None,
        /,
        *,
        on_stored: StoredCallback | None = None,
        on_failure: FailureCallback | None = None,
        clock: Clock = time.monotonic,
        **fields: Any,
    ) -> None:
        backend: Backend | None = None
        if isinstance(target, Backend):
            backend, target = target, None
        elif isinstance(target, str):
            fields.setdefault("backend", target)
            target = None
        self.config = load_config(target, **fields)
        if self.config.storer == "process":
            _check_process_storer(backend, self.config, bool(on_stored or on_failure))
        self._backend = backend or open_backend(self.config.backend_url)
        self._backend.open()
        self._fallback = open_backend(self.config.fallback) if self.config.fallback else None
        if self._fallback is not None:
            self._fallback.open()
        self._clock = clock
        self._on_stored: list[StoredCallback] = [on_stored] if on_stored else []
        self._on_failure: list[FailureCallback] = [on_failure] if on_failure else []
        # Closed until fully built, so that a failed construction never warns from __del__.
        self._closed = True
        try:
            self._start()
        except BaseException:
            self._backend.close()
            raise
        self._closed = False
        # A script that never calls close() still stores what it collected.
        self_ref = weakref.ref(self)
        self._atexit = lambda: _close_at_exit(self_ref)
        atexit.register(self._atexit)

    def _start(self) -> None:
        config = self.config
        self._pid = _Process.pid
        self._close_lock = threading.Lock()
        self.counters = Counters(self._clock)
        self.breaker = CircuitBreaker(
            config.max_retries, config.retry_max, self._clock, config.circuit_open_after
        )
        self._inbox = Inbox(config.max_queue_size, config.batch_size, self._evicted, self._clock)
        self._cache = Cache(config.cache_size, config.cache_bytes, config.cache_ttl, self._clock)
        self._spool: Spool | None = None
        # The spool segment of each memory in RAM that is also on disk, to acknowledge it.
        self._segment_of: dict[str, Segment] = {}
        self._logged_write_errors = 0
        self._logged_error = ""
        self._next_spool_log = 0.0
        if config.durability != "memory":
            root = Path(config.data_dir) / "spool"
            try:
                self._spool = Spool(
                    root,
                    fsync=config.durability == "fsync",
                    fsync_interval=config.fsync_interval,
                    max_bytes=config.max_spool_bytes,
                    lock=self._inbox.lock,
                )
            except OSError as exc:
                raise MemcollectError(
                    f"cannot use {root} for the spool ({exc.strerror or exc}): choose a "
                    "writable data_dir, or durability='memory' to keep memories in RAM only"
                ) from None
        self._worker = Worker.configured(
            config,
            self._inbox,
            self._backend,
            self.counters,
            self.breaker,
            on_stored=self._on_stored,
            on_failure=self._on_failure,
            on_done=self._done,
            refill=self._refill if self._spool is not None else None,
            durable=self._spool is not None,
            fallback=self._fallback,
            clock=self._clock,
        )
        self._warned_closed = False
        self._reporting_drops = threading.local()
        self._max_bytes = config.max_content_bytes
        self._storer: StoringProcess | None = None
        if config.storer == "process":
            from .storer import StoringProcess  # here: it costs `import subprocess`

            assert self._spool is not None  # the config insists on a spool
            # Left by a process that died: counted as accepted (and replayed) here, as the
            # worker thread counts what it reads back.
            self._inbox.accepted += self._spool.adopted_records
            self.counters.replayed += self._spool.adopted_records
            self._storer = StoringProcess(
                self._spool,
                config,
                self.counters,
                self._mirror_circuit,
                self._cache.invalidate_searches,
            )
            self._storer.start()
            return
        if self._fallback is not None:
            # Left there by an earlier run whose primary was down: move it on.
            self._worker.fallback_pending = self._fallback.count() > 0
        self._worker.start()

    def _mirror_circuit(self, failures: int, open_for: float, error: str) -> None:
        """The storing process's circuit, as seen here (for stats() and health())."""
        breaker = self.breaker
        breaker.failures, breaker.last_error = failures, error
        breaker.opened_at = None if open_for < 0 else self._clock() - open_for

    def _check_fork(self) -> None:
        if self._pid != _Process.pid:
            self._after_fork()

    def _after_fork(self) -> None:
        # The parent's worker thread does not exist here and its locks may be held forever;
        # what it had queued is the parent's to store. Start afresh with its own worker,
        # connections and spool.
        self._let_go_after_fork()
        self._start()

    def _let_go_after_fork(self) -> None:
        """In a forked child: drop the parent's spool, storing process and connections."""
        if self._storer is not None:
            self._storer.abandon_after_fork()
        if self._spool is not None:
            self._spool.abandon_after_fork()
        self._backend.after_fork()
        if self._fallback is not None:
            self._fallback.after_fork()

    # --- collect -------------------------------------------------------------------------

    def collect(
        self,
        category: str,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        priority: str | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        agent: str | None = None,
        session: str | None = None,
    ) -> str:
        """Queue one memory and return its id at once; raises only ValidationError."""
        if self._pid != _Process.pid:
            self._after_fork()
        memory = make_memory(
            category, content, metadata, priority, tags, project, agent, session, self._max_bytes
        )
        if self._spool is not None:
            self._put_spooled_one(memory)
        elif not self._inbox.put(memory):
            self._full(memory)
        return memory.id

    def _put_spooled_one(self, memory: Memory) -> None:
        """_put_spooled for one memory: the same steps, without the batch bookkeeping."""
        spool = self._spool
        assert spool is not None
        payload = encode_record(memory)
        crc = _crc32(payload)
        inbox = self._inbox
        with spool.lock:  # the inbox's lock too
            placed = spool.append_one_locked(payload, crc)
            if placed is not None:
                segment, offset = placed
                if not spool.backlog and self._storer is None:
                    self._segment_of[memory.id] = segment
                    if inbox.put_locked(memory):
                        return
                    del self._segment_of[memory.id]
                spool.start_backlog_locked(segment, offset)
                inbox.accepted += 1
                return
        self._log_spool_trouble()
        if self._storer is not None:
            self._spool_full([memory])
        elif not inbox.put(memory):
            self._full(memory)

    def _log_spool_trouble(self) -> None:
        spool = self._spool
        assert spool is not None
        # Once per kind of write error, then a count at most once a minute: a full disk
        # fails every collect(), and must not write a log line for each.
        failed = spool.write_errors - self._logged_write_errors
        if not failed:
            return
        now = self._clock()
        if spool.last_error == self._logged_error and now < self._next_spool_log:
            return
        self._logged_write_errors = spool.write_errors
        self._next_spool_log = now + SPOOL_LOG_INTERVAL_S
        if spool.last_error == self._logged_error:
            log.error("%d more spool writes failed (%s)", failed, spool.last_error)
            return
        self._logged_error = spool.last_error
        if self._storer is None:
            fate = "memories are kept in RAM only until the disk takes them again"
        else:
            fate = (
                f"with storer='process' the spool is the only queue, so memories are handled "
                f"as on_full={self.config.on_full!r} says (drop_lowest drops them)"
            )
        log.error("spool write failed (%s): %s", spool.last_error, fate)

    def _put_spooled(self, memories: list[Memory], force: bool = False) -> None:
        """Append to the spool, then queue in RAM while there is room and no backlog on disk."""
        spool = self._spool
        assert spool is not None
        frames = [encode_frame(m) for m in memories]
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        inbox = self._inbox
        with spool.lock:  # the inbox's lock too: only the *_locked inbox calls in here
            placed = spool.append_locked(data, len(frames))
            if placed is not None:
                segment, offset = placed
                if self._storer is not None or (spool.spilling and not force):
                    # Behind older records still on disk: this one waits there too, so its
                    # segment must be read back from here (a no-op when it already is).
                    spool.start_backlog_locked(segment, offset)
                    inbox.accepted += len(memories)
                    return
                for index, memory in enumerate(memories):
                    self._segment_of[memory.id] = segment
                    if not inbox.put_locked(memory) and not (
                        force and inbox.put_many_locked([memory], force=True)
                    ):
                        # RAM is full: this one and the rest wait on disk, read back later.
                        del self._segment_of[memory.id]
                        spool.start_backlog_locked(segment, offset)
                        inbox.accepted += len(memories) - index
                        return
                    offset += len(frames[index])
                return
        # The spool is full (max_spool_bytes) or the disk refused: RAM and its policy.
        self._log_spool_trouble()
        if self._storer is not None:
            self._spool_full(memories)
            return
        for memory in memories:
            if not self._inbox.put(memory):
                self._full(memory)

    def _refill(self) -> int:
        """Worker: read records waiting on disk back into RAM, oldest first."""
        spool = self._spool
        assert spool is not None
        if not spool.backlog:
            return 0
        inbox = self._inbox
        with spool.lock:  # the inbox's lock too
            room = inbox.max_size - inbox.size
            records = spool.read_back_locked(max(room, 0))
            replayed = 0
            for memory, segment in records:
                self._segment_of[memory.id] = segment
                replayed += segment.adopted
            inbox.put_many_locked([m for m, _ in records], force=True, count=False)
            inbox.accepted += replayed
        self.counters.replayed += replayed
        return len(records)

    def _done(self, memories: Sequence[Memory]) -> None:
        """Worker: memories were stored or dead-lettered; release them from the spool."""
        self._cache.invalidate_searches()
        if self._spool is None:
            return
        pop = self._segment_of.pop
        segments = [seg for seg in (pop(m.id, None) for m in memories) if seg is not None]
        if segments:
            self._spool.ack(segments)

    def collect_batch(self, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """Queue many memories (dicts with collect()'s argument names); all valid or none."""
        memories = []
        for index, item in enumerate(items):
            try:
                memories.append(memory_from_dict(item, self._max_bytes))
            except ValidationError as exc:
                raise ValidationError(f"item {index}: {exc}") from None
        return self._queue_checked(memories)

    def collect_memories(self, memories: Sequence[Memory]) -> list[str]:
        """Queue Memory objects built elsewhere (a replay, another store), keeping their ids
        and times; each is checked as collect() checks its arguments: all valid or none."""
        checked = []
        for index, memory in enumerate(memories):
            if not isinstance(memory, Memory):
                raise ValidationError(
                    f"memory {index} is a {type(memory).__name__}, not a memcollect Memory: "
                    "use collect_batch() for dicts"
                )
            try:
                checked.append(check_memory(memory, self._max_bytes))
            except ValidationError as exc:
                raise ValidationError(f"memory {index}: {exc}") from None
        return self._queue_checked(checked)

    def _queue_checked(self, memories: Sequence[Memory]) -> list[str]:
        """Queue memories already checked (by memory_from_record: the server, the CLI's import),
        keeping their ids: collect_memories() without checking them twice."""
        if self._pid != _Process.pid:
            self._after_fork()
        if not memories:
            return []
        if self._spool is not None:
            # A record resent while its first copy still waits here is already on its way;
            # queueing it twice would orphan the first copy's place in the spool.
            pending, seen = self._segment_of, set()
            fresh = []
            for memory in memories:
                if memory.id not in pending and memory.id not in seen:
                    seen.add(memory.id)
                    fresh.append(memory)
            if fresh:
                self._put_spooled(fresh)
            return [m.id for m in memories]
        queued = self._inbox.put_many(memories)
        for memory in memories[queued:]:
            if not self._inbox.put(memory):
                self._full(memory)
        return [m.id for m in memories]

    def store_now(self, memories: Sequence[Memory]) -> None:
        """Store memories in the caller's thread before returning (write-through), counted in
        stats; raises what the store raised. For callers that keep their own copy until this
        returns, such as a server whose clients retry: no queue, no spool, no retries here."""
        self._check_fork()
        if self._closed:
            raise ValidationError("this collector is closed: store before close()")
        if not memories:
            return
        for memory in memories:
            if not memory.content_hash:
                memory.content_hash = content_hash(memory.content)
        started = self._clock()
        try:
            self._backend.write_batch(memories)
        except Exception:
            self.counters.failed += 1
            raise
        self._inbox.count_accepted(len(memories))
        self.counters.record_stored(
            len(memories), self._clock() - started, latency_sample(memories)
        )
        self._cache.invalidate_searches()
        notify_stored(self._on_stored, list(memories))

    async def collect_async(
        self,
        category: str,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        priority: str | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        agent: str | None = None,
        session: str | None = None,
    ) -> str:
        """collect() for coroutines: never awaits I/O; with on_full="block" it yields instead."""
        if self.config.on_full != "block" or self._spool is not None:
            return self.collect(
                category,
                content,
                metadata,
                priority=priority,
                tags=tags,
                project=project,
                agent=agent,
                session=session,
            )
        if self._pid != _Process.pid:
            self._after_fork()
        memory = make_memory(
            category, content, metadata, priority, tags, project, agent, session, self._max_bytes
        )
        import asyncio  # here, not at the top: it costs 30 ms of `import memcollect`

        deadline = self._clock() + self.config.block_timeout
        delay = 0.0005
        while not self._inbox.put(memory):
            if self._clock() >= deadline or self._closed:
                self._reject(memory, "queue_full")
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return memory.id

    def _full(self, memory: Memory) -> None:
        if self._closed:
            self._reject(memory, "closed")
            if not self._warned_closed:
                self._warned_closed = True
                log.warning("collect() after close(): memories are counted as dropped")
            return
        policy = self.config.on_full
        if policy == "raise":
            raise QueueFullError(
                f"the queue holds max_queue_size={self.config.max_queue_size} memories: "
                "slow down, raise max_queue_size, or choose on_full='drop_lowest' or 'block'"
            )
        if policy == "block":
            deadline = self._clock() + self.config.block_timeout
            while self._inbox.wait_for_room(deadline):
                if self._inbox.put(memory):
                    return
            self._reject(memory, "queue_full")
            return
        # drop_lowest: make room by evicting the oldest memory of the lowest priority queued,
        # unless the newcomer is itself the lowest, in which case it is the one dropped.
        evicted = []
        while not self._inbox.put(memory):
            victim = self._inbox.evict_lowest(PRIORITY_RANK[memory.priority])
            if victim is None:
                self._reject(memory, "queue_full")
                break
            evicted.append(victim)
        # Reported once the newcomer has its place: a callback collecting into the queue
        # before then would take the freed place, and be evicted for the newcomer in turn.
        for victim in evicted:
            self._report_drop(victim, "queue_full")

    def _spool_full(self, memories: list[Memory]) -> None:
        """With storer='process' the spool is the only queue: when it refuses, on_full says
        what happens (there is no RAM queue to fall back on)."""
        spool = self._spool
        assert spool is not None
        for memory in memories:
            if self._closed:
                self._reject(memory, "closed")
                continue
            policy = self.config.on_full
            if policy == "raise":
                raise QueueFullError(
                    f"the spool is full (max_spool_bytes={spool.max_bytes}) or the disk "
                    "refused (see health()): slow down, raise max_spool_bytes, or choose "
                    "on_full='drop_lowest' or 'block'"
                )
            if policy == "block" and self._append_when_room(memory):
                continue
            self._reject(memory, "queue_full")

    def _append_when_room(self, memory: Memory) -> bool:
        """Wait up to block_timeout for the storing process to make room in the spool."""
        spool = self._spool
        assert spool is not None
        frame = encode_frame(memory)
        deadline = time.monotonic() + self.config.block_timeout
        with spool.lock:
            while True:
                placed = spool.append_locked(frame, 1)
                if placed is not None:
                    spool.start_backlog_locked(*placed)
                    self._inbox.accepted += 1
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                spool.drained.wait(min(remaining, 0.05))

    def _reject(self, memory: Memory, reason: str) -> None:
        self._inbox.count_accepted()
        self.counters.drop(reason)
        self._report_drop(memory, reason)

    def _evicted(self, memory: Memory) -> None:
        self.counters.drop("queue_full")
        self._done([memory])

    def _report_drop(self, memory: Memory, reason: str) -> None:
        """Tell the on_failure callbacks, in the caller's thread, that a memory was dropped."""
        if not self._on_failure:
            return
        reporting = self._reporting_drops
        # A callback that collects (say, a note of the drop) into the same full queue would
        # otherwise be called back for that drop too, and again, as deep as the stack goes.
        if getattr(reporting, "active", False):
            return
        reporting.active = True
        try:
            notify_failure(self._on_failure, [memory], QueueFullError(f"memory dropped: {reason}"))
        finally:
            reporting.active = False

    # --- flush / close -------------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything accepted so far is stored or dead-lettered; False on timeout."""
        if self._pid != _Process.pid:
            self._after_fork()
        if self._storer is not None:
            assert self._spool is not None
            if self._spool.fsync:
                self._spool.sync()  # accepted means on disk now, even if storing times out
            limit = time.monotonic() + (timeout if timeout is not None else 1e9)
            return self._storer.flush(limit)
        if self._worker.thread is threading.current_thread():
            raise MemcollectError(
                "flush() was called from an on_stored or on_failure callback, which runs on "
                "the worker: it would wait for itself; flush from another thread"
            )
        deadline = self._clock() + (timeout if timeout is not None else 1e9)
        # Memories waiting on disk only (a backlog) are not in the RAM queue's marks: then the
        # spool is sealed and drained too. Checked before the marks are taken: with no backlog
        # then, everything accepted so far is in RAM (or done) and the marks cover it, and a
        # flush costs no new segment file.
        spilled = self._spool is not None and self._spool.spilling
        marks = self._inbox.marks()
        sealed = self._spool.seal() if self._spool is not None and spilled else None
        if self._spool is not None and self._spool.fsync:
            self._spool.sync()  # accepted means on disk now, even if storing times out
        if not self._worker.alive():
            self._drain_inline(deadline)
        if not self._inbox.wait_done(marks, deadline):
            return False
        if self._spool is None or sealed is None:
            return True
        # What spilled to disk before this call must have been read back and stored too.
        monotonic_deadline = time.monotonic() + max(0.0, deadline - self._clock())
        while not self._spool.wait_drained(
            sealed, min(monotonic_deadline, time.monotonic() + 0.05)
        ):
            if time.monotonic() >= monotonic_deadline:
                return False
            self._inbox.wakeup.set()
        return True

    async def aflush(self, timeout: float | None = 10.0) -> bool:
        """flush() without blocking the event loop."""
        import asyncio

        return await asyncio.to_thread(self.flush, timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Store what is queued (up to `timeout`), stop the worker, release the backend."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self._atexit)
        if self._pid != _Process.pid:
            # Forked, and nothing collected here since (that would have started afresh):
            # there is nothing to store, so start nothing just to stop it.
            self._let_go_after_fork()
            return
        if self._storer is not None:
            assert self._spool is not None
            self._storer.stop(time.monotonic() + (timeout if timeout is not None else 1e9))
            self._spool.close()  # what the storing process did not answer waits on disk
            self._release_backends()
            return
        deadline = self._clock() + (timeout if timeout is not None else 1e9)
        self._worker.stop(deadline)
        if self._worker.thread is threading.current_thread():
            # Called by a callback, on the worker itself, which cannot wait for itself: once
            # the callback returns it stores what is queued (up to the deadline), then
            # finishes closing as it exits.
            self._worker.when_exited(self._finish_close)
            return
        if self._worker.alive():
            assert self._worker.thread is not None
            self._worker.thread.join(max(0.0, deadline - self._clock()))
        else:
            # At interpreter exit no thread may be started: store from this thread.
            self._drain_inline(deadline)
        self._count_left()
        # A worker still in a write past the deadline releases the backends as it ends:
        # closing them under it would fail its write, and leaving them open leaks sockets.
        self._worker.when_exited(self._release_backends)

    def _finish_close(self) -> None:
        self._count_left()
        self._release_backends()

    def _count_left(self) -> None:
        """After the worker stopped: count what it left in RAM, and release the spool."""
        left = self._inbox.drain_all()
        if left and self._spool is None:
            self.counters.drop("shutdown_deadline", len(left))
            log.warning("%d memories were not stored before close() timed out", len(left))
        if self._spool is not None:
            # Always, even if the worker outlived the deadline: the lock must be free for the
            # next owner. A late worker's acks are then ignored; what it stores is replayed
            # once more by the next owner, and idempotent writes make that harmless.
            self._spool.close()

    def _release_backends(self) -> None:
        self._backend.close()
        if self._fallback is not None:
            self._fallback.close()

    async def aclose(self, timeout: float | None = 10.0) -> None:
        """close() without blocking the event loop."""
        import asyncio

        await asyncio.to_thread(self.close, timeout)

    def _drain_inline(self, deadline: float) -> None:
        while self._clock() < deadline:
            if self._spool is not None:
                self._refill()
            batch = self._inbox.take(self.config.batch_size)
            if not batch:
                return
            self._worker.process(batch)

    def __enter__(self) -> MemoryCollector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> MemoryCollector:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- read ----------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory | None:
        """One memory by id, including one still queued (read-your-writes)."""
        if not isinstance(memory_id, str):
            raise ValidationError(f"id must be a str, not {type(memory_id).__name__}")
        self._check_fork()
        on_disk = self._on_disk([memory_id])
        if on_disk:
            return on_disk[memory_id]
        near = self._queued_or_cached(memory_id)
        if near is not Cache.MISSING:
            return near
        stored = self._get_stored(memory_id)
        if stored is not None:
            self._cache.put(memory_id, stored, _footprint(stored))
        return stored

    def get_many(self, ids: Iterable[str]) -> list[Memory]:
        """Memories by id, including ones still queued, in the order asked; unknown ids are
        left out."""
        asked = _check_ids(ids)
        if asked is None:
            raise ValidationError("ids must be a list of ids, not None")
        self._check_fork()
        unique = list(dict.fromkeys(asked))
        # Where get() looks, in the same order, each place once for every id.
        found = self._on_disk(unique)
        elsewhere: list[str] = []
        for memory_id in unique:
            if memory_id in found:
                continue
            near = self._queued_or_cached(memory_id)
            if near is Cache.MISSING:
                elsewhere.append(memory_id)
            else:
                found[memory_id] = near
        for stored in self._get_many_stored(elsewhere):
            found[stored.id] = stored
            self._cache.put(stored.id, stored, _footprint(stored))
        return [found[memory_id] for memory_id in unique if memory_id in found]

    # Look where a memory goes next only after where it is now: disk, RAM (queued or in
    # flight), then the store. A memory moving on while we look is found further along.

    def _on_disk(self, ids: list[str]) -> dict[str, Memory]:
        """Memories waiting in the spool and nowhere else yet, by id."""
        if self._spool is None or not (self._spool.spilling or self._storer is not None):
            return {}
        return self._spool.find_many(ids, everything=self._storer is not None)

    def _queued_or_cached(self, memory_id: str) -> Memory | Any:
        """A memory queued or in flight, or cached; Cache.MISSING to ask the store."""
        queued = self._inbox.find(memory_id)
        if queued is not None:
            return queued
        # A stored memory never changes: a cached one is good until it expires.
        return self._cache.get(memory_id)

    def _get_stored(self, memory_id: str) -> Memory | None:
        if self._fallback is None:
            return self._backend.get(memory_id)
        found = self._get_many_stored([memory_id])
        return found[0] if found else None

    def _get_many_stored(self, ids: list[str]) -> list[Memory]:
        if not ids:
            return []
        fallback = self._fallback
        if fallback is None:
            return self._backend.get_many(ids)
        # During an outage the primary cannot answer, and what it missed is in the fallback.
        try:
            found = self._backend.get_many(ids)
        except Exception as exc:  # noqa: BLE001 - the fallback answers instead
            log.debug("primary read failed (%s): reading the fallback", exc)
            found = []
        held = {m.id for m in found}
        missed = [memory_id for memory_id in ids if memory_id not in held]
        return found + fallback.get_many(missed) if missed else found

    def search(
        self,
        query: str = "",
        *,
        category: str | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        since: float | Any | None = None,
        until: float | Any | None = None,
        limit: int = 10,
        mode: str | None = None,
    ) -> list[Memory]:
        """Stored memories matching `query`, best first, with filters: by its words
        (mode="text"), by meaning (mode="semantic") or both (mode="hybrid"); by default
        hybrid where the store has embeddings, text where it has none."""
        if not isinstance(query, str):
            raise ValidationError(f"query must be a str, not {type(query).__name__}")
        _check_limit(limit)
        if mode is not None and mode not in SEARCH_MODES:
            raise ValidationError(f"mode must be 'text', 'semantic' or 'hybrid', not {mode!r}")
        chosen = mode is None
        if mode is None:
            mode = self._backend.default_mode()
        elif mode != "text" and not self._backend.supports_semantic:
            raise ValidationError(
                f"search mode {mode!r} needs a store with embeddings: "
                "sqlite:///memories.db?semantic=1 (pip install 'memcollect[semantic]')"
            )
        request = _query(
            category=category,
            tags=tags,
            project=project,
            agent=agent,
            session=session,
            since=since,
            until=until,
            limit=limit,
            text=query,
            mode=mode,
        )
        key = ("search", request)
        cached = self._cache.get(key)
        if cached is not Cache.MISSING:
            return list(cached)
        generation = self._cache.generation
        try:
            hits = self._backend.search(request)
        except TransientBackendError as exc:
            if not chosen or mode != "hybrid":
                raise
            # Meaning is not to be had now (a model that cannot load; health says why):
            # the default search still answers by words.
            log.debug("hybrid search failed (%s): searching by words", exc)
            return self._backend.search(msgspec.structs.replace(request, mode="text"))
        size = sum(map(_footprint, hits)) + 64
        self._cache.put(key, tuple(hits), size, search_generation=generation)
        return hits

    def delete(
        self,
        ids: str | Iterable[str] | None = None,
        *,
        category: str | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        since: float | Any | None = None,
        until: float | Any | None = None,
        timeout: float | None = 10.0,
    ) -> int:
        """Delete memories for good, by ids and/or filters, wherever they are kept; how many."""
        self._check_fork()
        if self._closed:
            raise ValidationError("this collector is closed: delete before close()")
        id_list = _check_ids(ids)
        filters: dict[str, Any] = {
            "category": category,
            "tags": tags,
            "project": project,
            "agent": agent,
            "session": session,
            "since": since,
            "until": until,
        }
        given = any(value is not None for value in filters.values())
        if id_list is None and not given:
            raise ValidationError(
                "delete() needs ids or a filter (category, tags, project, agent, session, "
                "since, until); it never deletes everything"
            )
        query = _query(**filters, limit=_DELETE_PAGE) if given else None
        if id_list is None and query == SearchQuery(limit=_DELETE_PAGE):
            # tags=[] and the like: filters that filter nothing would delete everything.
            raise ValidationError("delete() got filters that match every memory: name one")
        # What was collected before this call must be stored first, or it would be stored
        # after the delete, and stay.
        if not self.flush(timeout):
            raise TransientBackendError(
                f"delete() found memories still waiting to be stored after {timeout} s "
                "(is the store down?): nothing was deleted; try again once it is reachable"
            )
        if self._spool is not None:
            # The spool's bytes of what was stored stay on disk until their segment is
            # deleted, which waits for the segment being written to fill up: not for these.
            self._spool.rotate()
        deleted: set[str] = set()
        with self._worker.moving:  # one delete at a time, and no move from the fallback
            try:
                for store in (self._fallback, self._backend):
                    if store is not None:
                        deleted |= _delete_from_or_say_why(store, id_list, query)
            finally:
                # Also after a failure part way: nothing deleted may be read from the cache.
                self.counters.deleted += len(deleted)
                self._cache.clear()
        if deleted:
            log.info("deleted %d memories", len(deleted))
        return len(deleted)

    def recent(self, limit: int = 20, category: str | None = None) -> list[Memory]:
        """The newest stored memories first."""
        return self.search(category=category, limit=limit)

    def count(self, category: str | None = None) -> int:
        """How many memories are stored."""
        return self._backend.count(check_category(category) if category is not None else None)

    def count_by_category(self) -> dict[str, int]:
        """How many memories are stored, per category."""
        return self._backend.count_by_category()

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Memories the backend refused for good, with their errors, oldest first."""
        _check_limit(limit)
        return self._backend.dead_letters(limit)

    def retry_dead_letters(self) -> int:
        """Queue every dead letter again; how many were queued."""
        self._check_fork()
        if self._closed:
            raise ValidationError("this collector is closed: retry dead letters before close()")
        total = 0
        invalid: set[str] = set()
        while True:
            letters = [
                d for d in self._backend.dead_letters(1000 + len(invalid))
                if d.memory.id not in invalid
            ]  # fmt: skip
            if not letters:
                if invalid:
                    log.warning("%d dead letters are not valid memories: left as they are",
                                len(invalid))  # fmt: skip
                return total
            memories = []
            for letter in letters:
                try:
                    memories.append(check_memory(letter.memory, self._max_bytes))
                except ValidationError:
                    invalid.add(letter.memory.id)  # kept by an older version: never stored
            if not memories:
                continue
            if self._spool is not None:
                self._put_spooled(memories, force=True)
            else:
                self._inbox.put_many(memories, force=True)
            self._backend.remove_dead_letters([m.id for m in memories])
            total += len(memories)

    # --- callbacks, stats, health --------------------------------------------------------

    def on_stored(self, callback: StoredCallback) -> StoredCallback:
        """Call `callback(batch)` in the worker after each batch is stored."""
        if self._storer is not None:
            raise ValidationError(_CALLBACKS_NEED_THREAD)
        self._on_stored.append(callback)
        return callback

    def on_failure(self, callback: FailureCallback) -> FailureCallback:
        """Call `callback(memories, error)` when memories are dead-lettered or dropped."""
        if self._storer is not None:
            raise ValidationError(_CALLBACKS_NEED_THREAD)
        self._on_failure.append(callback)
        return callback

    @property
    def closed(self) -> bool:
        """True once close() has begun."""
        return self._closed

    @property
    def backend(self) -> Backend:
        """The store this collector writes to."""
        return self._backend

    def stats(self) -> Stats:
        """A snapshot of counters, queue depth, latencies and throughput."""
        self._check_fork()
        c = self.counters
        overall, recent = c.throughput()
        dropped = dict(c.dropped)
        storer = self._storer
        spool_stats = self._spool_stats()
        return Stats(
            accepted=self._inbox.accepted,
            stored=c.stored,
            retried=c.retried,
            retried_memories=c.retried_memories,
            failed=c.failed,
            dead_lettered=c.dead_lettered,
            dropped=sum(dropped.values()),
            dropped_by_reason=dropped,
            queue_depth=self._inbox.size if storer is None else spool_stats["spool_pending"],
            in_flight=len(self._inbox.in_flight),
            batches=c.batches,
            batch_write_latency=(
                c.batch_latency.snapshot() if storer is None else storer.batch_latency
            ),
            accept_to_stored_latency=(
                c.store_latency.snapshot() if storer is None else storer.store_latency
            ),
            throughput_per_s=overall,
            recent_throughput_per_s=recent,
            uptime_s=self._clock() - c.started,
            backend=self._backend.url,
            circuit=self.breaker.state,
            replayed=c.replayed,
            cache_hits=self._cache.stats.hits,
            cache_misses=self._cache.stats.misses,
            cache_evictions=self._cache.stats.evictions,
            cache_expired=self._cache.stats.expired,
            cache_size=len(self._cache),
            stored_in_fallback=c.stored_in_fallback,
            moved_to_primary=c.moved_to_primary,
            deleted=c.deleted,
            pending_embeddings=self._pending_embeddings(),
            storer_pid=storer.pid() if storer is not None else None,
            storer_restarts=storer.restarts if storer is not None else 0,
            **spool_stats,
        )

    def _pending_embeddings(self) -> int:
        if not self._backend.supports_semantic:
            return 0
        try:
            return self._backend.pending_embeddings()
        except Exception as exc:  # noqa: BLE001 - stats never raise; health says what fails
            log.debug("could not count pending embeddings: %s", exc)
            return 0

    def _spool_stats(self) -> dict[str, int]:
        spool = self._spool
        if spool is None:
            return {}
        return {
            "spool_bytes": spool.bytes,
            "spool_segments": spool.segment_count(),
            "spool_pending": spool.pending(),
            "corrupt_skipped": spool.corrupt,
        }

    def health(self) -> Health:
        """ok, degraded or failing, with the reasons."""
        self._check_fork()
        findings = list(self._health_findings())
        status = "ok"
        if findings:
            status = "failing" if any(level == "failing" for level, _ in findings) else "degraded"
        live = self._backend.url
        if self.breaker.state != "closed" and self._fallback is not None:
            live = self._fallback.url
        reasons = [reason for _, reason in findings]
        return Health(status=status, reasons=reasons, backend=live)  # type: ignore[arg-type]

    def _health_findings(self) -> Iterator[tuple[str, str]]:
        """What is wrong, each as ("degraded" | "failing", the reason)."""
        breaker, state = self.breaker, self.breaker.state
        if state != "closed" and self._fallback is not None:
            yield (
                "degraded",
                (
                    f"primary {self._backend.url} is down ({breaker.last_error}): "
                    f"storing in the fallback {self._fallback.url}"
                ),
            )
        elif state != "closed":
            yield (
                "failing",
                (
                    f"backend circuit {state} after {breaker.failures} failed writes: "
                    f"{breaker.last_error}"
                ),
            )
        elif breaker.failures:
            yield "degraded", f"backend write failing, retrying: {breaker.last_error}"
        if self._storer is not None:
            if not self._closed and not self._storer.alive():
                yield (
                    "failing",
                    (
                        f"the storing process is not running (last exit code "
                        f"{self._storer.last_exit}, {self._storer.restarts} restarts; "
                        f"{self._storer.last_error or 'starting'}): the spool keeps what is "
                        "collected, and it is started again"
                    ),
                )
        elif not self._closed and not self._worker.alive():
            yield "failing", "the worker thread is not running"
        writing_since = self._worker.writing_since
        if writing_since is not None and self._storer is None:
            waited = self._clock() - writing_since
            if waited >= SLOW_WRITE_S:
                yield (
                    "degraded",
                    (f"a write to {self._backend.url} has waited {waited:.0f} s for an answer"),
                )
        depth = self._inbox.size
        if depth >= 0.8 * self.config.max_queue_size:
            yield "degraded", f"queue {depth}/{self.config.max_queue_size} is over 80% full"
        last_drop = self.counters.last_drop
        if last_drop is not None and self._clock() - last_drop < RECENT_DROP_S:
            yield (
                "degraded",
                (
                    f"memories dropped in the last {RECENT_DROP_S:.0f} s "
                    f"({sum(self.counters.dropped.values())} in all)"
                ),
            )
        spool = self._spool
        if spool is not None and spool.bytes >= 0.8 * spool.max_bytes:
            yield (
                "degraded",
                (
                    f"spool {spool.bytes / 2**20:.0f} MiB is over 80% of max_spool_bytes "
                    f"({spool.max_bytes / 2**20:.0f} MiB)"
                ),
            )
        if spool is not None and spool.write_errors:
            yield "degraded", f"{spool.write_errors} spool writes failed: check the disk"
        if self._worker.fallback_pending and state == "closed":
            yield "degraded", "moving what the fallback holds back to the primary"
        for reason in self._backend.health_reasons():
            yield "degraded", reason
        if self._closed:
            yield "failing", "the collector is closed"

    def __del__(self) -> None:
        if getattr(self, "_closed", True) or self._pid != _Process.pid:
            return
        warnings.warn(
            f"{self!r} was never closed: call close() or use it as a context manager",
            ResourceWarning,
            stacklevel=2,
        )
        atexit.unregister(self._atexit)
        if self._storer is not None:
            # The storing process answers what it was sent and exits; the rest waits on disk.
            self._storer.release()
            return
        # Let the worker store what is queued and exit on its own; never block in __del__.
        self._worker.stop(self._clock() + self.config.exit_timeout)

    def __repr__(self) -> str:
        return f"<MemoryCollector {self._backend.url} queued={self._inbox.size}>"


def _footprint(memory: Memory) -> int:
    """About how many bytes a memory holds in RAM, for the cache's byte bound."""
    return 400 + 2 * len(memory.content) + 80 * (len(memory.metadata) + len(memory.tags))


# Memories found and deleted in one step of a delete by filters.
_DELETE_PAGE = 1000
# Dead letters a delete looks through (the most a store lists at once).
_DEAD_LETTERS_SEEN = 10_000


def _query(
    *,
    category: str | None,
    tags: Sequence[str] | None,
    project: str | None,
    agent: str | None,
    session: str | None,
    since: object,
    until: object,
    limit: int,
    text: str = "",
    mode: str = "text",
) -> SearchQuery:
    """A search query from public arguments, each checked (the error names it)."""
    project, agent, session = check_labels(project, agent, session)
    return SearchQuery(
        mode=mode,
        text=text,
        category=check_category(category) if category is not None else None,
        tags=check_tags(tags),
        project=project,
        agent=agent,
        session=session,
        since=_timestamp(since, "since"),
        until=_timestamp(until, "until"),
        limit=limit,
    )


def _check_ids(ids: object) -> list[str] | None:
    """delete()'s ids as a list (one id may be passed alone), each a str."""
    if ids is None:
        return None
    if isinstance(ids, str):
        return [ids]
    if isinstance(ids, bytes) or not isinstance(ids, Iterable):
        raise ValidationError(f"ids must be an id or a list of ids, not {type(ids).__name__}")
    listed = list(ids)
    for index, memory_id in enumerate(listed):
        if not isinstance(memory_id, str):
            raise ValidationError(f"ids[{index}] must be a str, not {type(memory_id).__name__}")
    return listed


def _delete_from_or_say_why(
    store: Backend, ids: list[str] | None, query: SearchQuery | None
) -> set[str]:
    """_delete_from, with a store's own failure told as one error that says what to do."""
    try:
        return _delete_from(store, ids, query)
    except MemcollectError:
        raise
    except Exception as exc:
        raise TransientBackendError(
            f"delete() could not finish in {store.url} ({type(exc).__name__}: {exc}): call it "
            "again once the store answers; what it deleted before stays deleted"
        ) from exc


def _delete_from(store: Backend, ids: list[str] | None, query: SearchQuery | None) -> set[str]:
    """Delete from one store, with its dead letters, the memories named by ids or matching
    the query's filters; the ids it held."""
    found: set[str] = set()

    def chosen(memory: Memory) -> bool:
        return query is None or query.matches(memory)

    if ids is not None:
        for start in range(0, len(ids), _DELETE_PAGE):
            page = ids[start : start + _DELETE_PAGE]
            # One read a page (a request, for a server), not one a memory.
            held = [m.id for m in store.get_many(page) if chosen(m)]
            if held:
                store.delete(held)
            found.update(held)
    else:
        assert query is not None
        while True:
            page = store.filtered_ids(query)
            if not page:
                break
            if found.issuperset(page):
                raise MemcollectError(
                    f"{store.url} still lists memories it was told to delete: "
                    "stopped to avoid a loop; report this"
                )
            store.delete(page)
            found.update(page)
    named = set(ids) if ids is not None else None
    refused = [
        d.memory.id
        for d in store.dead_letters(_DEAD_LETTERS_SEEN)
        if (named is None or d.memory.id in named) and chosen(d.memory)
    ]
    if refused:
        store.remove_dead_letters(refused)
        found.update(refused)
    return found


def _check_limit(limit: object) -> None:
    if type(limit) is not int or not 1 <= limit <= 10_000:
        raise ValidationError(f"limit must be a whole number from 1 to 10000, not {limit!r}")


def _timestamp(value: object, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationError(f"{field} must be a datetime or epoch seconds, not a bool")
    if isinstance(value, (int, float)):
        if math.isnan(value):  # every comparison with NaN is false: nothing would match
            raise ValidationError(f"{field} is NaN: give a datetime or epoch seconds")
        return float(value)
    timestamp = getattr(value, "timestamp", None)
    if callable(timestamp):
        return float(timestamp())
    raise ValidationError(f"{field} must be a datetime or epoch seconds, not {value!r}")


def _close_at_exit(ref: weakref.ref[MemoryCollector]) -> None:
    collector = ref()
    if collector is not None:
        collector.close(timeout=collector.config.exit_timeout)
