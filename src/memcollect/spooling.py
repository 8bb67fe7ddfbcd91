"""SpoolPipeline: every memory goes to the spool first, then to RAM; and what any pipeline
with a spool shares (opening it, logging its failed writes)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from zlib import crc32 as _crc32

from .config import Config
from .errors import MemcollectError
from .frames import encode_frame, encode_record
from .model import Memory
from .pipelines import Parts, RamPipeline, deadline_after
from .spool import Segment, Spool

__all__ = ["SpoolPipeline", "SpoolTrouble", "open_spool", "spool_root"]

log = logging.getLogger("memcollect")

Clock = Callable[[], float]

# Spool write failures of one kind are logged once, then counted in a line this often.
SPOOL_LOG_INTERVAL_S = 60.0


def spool_root(config: Config) -> Path:
    """Where the spools of config.data_dir are."""
    return Path(config.data_dir) / "spool"


def open_spool(config: Config, lock: threading.Lock | None) -> Spool:
    """The spool under config.data_dir, or one clear error saying why it cannot be."""
    root = spool_root(config)
    try:
        return Spool(
            root,
            fsync=config.durability == "fsync",
            fsync_interval=config.fsync_interval,
            max_bytes=config.max_spool_bytes,
            lock=lock,
        )
    except OSError as exc:
        raise MemcollectError(
            f"cannot use {root} for the spool ({exc.strerror or exc}): choose a "
            "writable data_dir, or durability='memory' to keep memories in RAM only"
        ) from None


class SpoolTrouble:
    """Logs spool write failures: once per kind, then a count at most once a minute (a full
    disk fails every collect(), and must not write a log line for each)."""

    def __init__(self, spool: Spool, clock: Clock, fate: str) -> None:
        self.spool = spool
        self.clock = clock
        self.fate = fate
        self._logged_write_errors = 0
        self._logged_error = ""
        self._next_log = 0.0

    def log(self) -> None:
        """Log what the spool's failed writes since the last call deserve."""
        spool = self.spool
        failed = spool.write_errors - self._logged_write_errors
        if not failed:
            return
        now = self.clock()
        if spool.last_error == self._logged_error and now < self._next_log:
            return
        self._logged_write_errors = spool.write_errors
        self._next_log = now + SPOOL_LOG_INTERVAL_S
        if spool.last_error == self._logged_error:
            log.error("%d more spool writes failed (%s)", failed, spool.last_error)
            return
        self._logged_error = spool.last_error
        log.error("spool write failed (%s): %s", spool.last_error, self.fate)


class SpoolPipeline(RamPipeline):
    """Every memory goes to the spool first, then to RAM while RAM has room and nothing
    waits on disk; the worker thread stores from RAM and reads the rest back from disk."""

    durable = True
    spool: Spool

    def __init__(self, parts: Parts) -> None:
        super().__init__(parts)
        self.spool = open_spool(parts.config, self.inbox.lock)
        # The spool segment of each memory in RAM that is also on disk, to acknowledge it.
        self._segment_of: dict[str, Segment] = {}
        self._trouble = SpoolTrouble(
            self.spool, parts.clock, "memories are kept in RAM only until the disk takes them again"
        )
        # What spilled to disk is read back into RAM by the worker, oldest first.
        self.worker.refill = self._refill
        self.worker.storing.caught_up.append(self.spool.release_pages)

    def put(self, memory: Memory) -> None:
        """Append one memory to the spool, and queue it in RAM while there is room."""
        spool = self.spool
        payload = encode_record(memory)
        crc = _crc32(payload)
        inbox = self.inbox
        lock = spool.lock  # the inbox's lock too; acquire/release, not `with`: half the cost
        lock.acquire()
        try:
            placed = spool.append_one_locked(payload, crc)
            if placed is not None:
                segment, offset = placed
                if not spool.backlog:
                    self._segment_of[memory.id] = segment
                    if inbox.put_locked(memory):
                        return
                    del self._segment_of[memory.id]
                spool.start_backlog_locked(segment, offset)
                inbox.accepted += 1
                return
        finally:
            lock.release()
        self._trouble.log()
        super().put(memory)

    def put_many(self, memories: Sequence[Memory], force: bool = False) -> None:
        """Append to the spool, then queue in RAM while there is room and no backlog on disk."""
        # A record resent while its first copy still waits here is already on its way;
        # queueing it twice would orphan the first copy's place in the spool.
        pending, seen = self._segment_of, set()
        fresh = []
        for memory in memories:
            if memory.id not in pending and memory.id not in seen:
                seen.add(memory.id)
                fresh.append(memory)
        if fresh and not self._append(fresh, force):
            self._trouble.log()
            for memory in fresh:
                super().put(memory)

    def _append(self, memories: list[Memory], force: bool) -> bool:
        """The spool part of put_many(); False when the spool refused the records."""
        spool = self.spool
        frames = [encode_frame(m) for m in memories]
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        inbox = self.inbox
        with spool.lock:  # the inbox's lock too: only the *_locked inbox calls in here
            placed = spool.append_locked(data, len(frames))
            if placed is None:
                return False
            segment, offset = placed
            if spool.spilling and not force:
                # Behind older records still on disk: these wait there too, so their segment
                # must be read back from here (a no-op when it already is).
                spool.start_backlog_locked(segment, offset)
                inbox.accepted += len(memories)
                return True
            for index, memory in enumerate(memories):
                self._segment_of[memory.id] = segment
                if not inbox.put_locked(memory) and not (
                    force and inbox.put_many_locked([memory], force=True)
                ):
                    # RAM is full: this one and the rest wait on disk, read back later.
                    del self._segment_of[memory.id]
                    spool.start_backlog_locked(segment, offset)
                    inbox.accepted += len(memories) - index
                    return True
                offset += len(frames[index])
            return True

    async def put_async(self, memory: Memory) -> None:
        """put(): with a spool, a full RAM queue is never waited for."""
        self.put(memory)

    def _refill(self) -> int:
        """Worker: read records waiting on disk back into RAM, oldest first."""
        spool = self.spool
        spool.prefault()
        if not spool.backlog:
            return 0
        inbox = self.inbox
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
        """Memories were stored or dead-lettered: release them from the spool."""
        self.parts.on_change()
        pop = self._segment_of.pop
        segments = [seg for seg in (pop(m.id, None) for m in memories) if seg is not None]
        if segments:
            self.spool.ack(segments)

    def flush(self, timeout: float | None) -> bool:
        """Wait until what is queued before this call, in RAM and on disk, is stored."""
        spool = self.spool
        self._check_not_on_worker()
        deadline = deadline_after(self.clock, timeout)
        # Memories waiting on disk only (a backlog) are not in the RAM queue's marks: then the
        # spool is sealed and drained too. Checked before the marks are taken: with no backlog
        # then, everything accepted so far is in RAM (or done) and the marks cover it, and a
        # flush costs no new segment file.
        spilled = spool.spilling
        marks = self.inbox.marks()
        sealed = spool.seal() if spilled else None
        if spool.fsync:
            spool.sync()  # accepted means on disk now, even if storing times out
        if not self._wait_done(marks, deadline):
            return False
        if sealed is None:
            return True
        # What spilled to disk before this call must have been read back and stored too.
        until = time.monotonic() + max(0.0, deadline - self.clock())
        while not spool.wait_drained(sealed, min(until, time.monotonic() + 0.05)):
            if time.monotonic() >= until:
                return False
            self.inbox.wakeup.set()
        return True

    def _count_left(self) -> None:
        """After the worker stopped: release the spool, which keeps what is not stored."""
        self.inbox.drain_all()
        # Always, even if the worker outlived the deadline: the lock must be free for the
        # next owner. A late worker's acks are then ignored; what it stores is replayed
        # once more by the next owner, and idempotent writes make that harmless.
        self.spool.close()

    def pending(self, ids: list[str]) -> dict[str, Memory]:
        """Memories on disk only, then queued or in flight, by id."""
        found = self.spool.find_many(ids, everything=False) if self.spool.spilling else {}
        found.update(super().pending([i for i in ids if i not in found]))
        return found

    def rotate(self) -> None:
        """Start a new segment, so that the full one's stored bytes can go."""
        self.spool.rotate()
