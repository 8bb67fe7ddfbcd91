"""The durable spool: an append-only, segmented log of accepted memories on disk.

A frame is `b"MC"`, the payload's length and CRC32 (little-endian u32 each), then the payload
(the Memory's fields as a msgpack array). The magic lets a reader find the next frame after a
corrupt stretch; the CRC tells a torn tail (a write cut short by kill -9) from a record. Each
process claims a spool directory with an OS file lock; spools whose owner died (lock free) are
adopted and drained by whoever starts next.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from pathlib import Path

from .frames import HEADER, MAGIC, encode_frame, encode_record, read_frames, read_memories
from .model import Memory
from .spool_files import (
    MADV_POPULATE_WRITE,
    SegmentFile,
    claim_dir,
    find_in_spans,
    fsync_dir,
    iter_spool_records,
    number_of,
    read_span,
    remove_quietly,
    scan_segment,
    segment_files,
    try_lock,
)

__all__ = [
    "Segment",
    "Spool",
    "encode_frame",
    "encode_record",
    "iter_spool_records",
    "read_frames",
    "read_memories",
]

log = logging.getLogger("memcollect")

SEGMENT_BYTES = 8 << 20
# The first write to each page of a fresh segment is a page fault, ~0.2-0.6 µs a record of
# collect()'s time measured here. A background thread (the dispatcher, the worker) faults
# the next pages in ahead of the writes, a chunk at a time under the lock.
_PREFAULT_AHEAD = 2 << 20
_PREFAULT_CHUNK = 256 << 10
_HEADER_SIZE = HEADER.size
_pack, _pack_into = HEADER.pack, HEADER.pack_into
# Pages written are let go of the mapping a megabyte at a time (the page cache keeps them, and
# the file): a full segment otherwise stays in this process's RSS until it rotates.
_RELEASE_EVERY = 1 << 20
# Rounds of a dispatcher (20 ms apart) without an append before the spool is idle.
_IDLE_ROUNDS = 5
# How much of a segment one read-back takes at most (then the next refill goes on from there).
READ_CHUNK_BYTES = 4 << 20


class Segment:
    """One file of the spool, and how much of it is still owed to the store."""

    __slots__ = (
        "adopted",
        "done_offset",
        "number",
        "outstanding",
        "path",
        "read_offset",
        "sealed",
        "size",
    )

    def __init__(self, path: Path, number: int, *, adopted: bool = False) -> None:
        self.path = path
        self.number = number
        self.size = 0
        # Records in it not yet stored or dead-lettered.
        self.outstanding = 0
        self.sealed = adopted
        self.adopted = adopted
        # Where reading back resumes; None when nothing in it is waiting on disk only.
        self.read_offset: int | None = None
        # Every record before it is stored or dead-lettered (kept by the storing process's
        # answers, which come in order): find() need not read them.
        self.done_offset = 0

    def deletable(self) -> bool:
        """Sealed, read back, and every record in it stored or dead-lettered."""
        return self.sealed and self.outstanding <= 0 and self.read_offset is None


class Spool:
    """The segmented log of one process, plus the orphaned spools it adopted.

    `lock` guards everything here; the collector holds it while appending so that what goes to
    RAM and what stays on disk keeps its order (it is the inbox's lock).
    """

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool,
        fsync_interval: float,
        max_bytes: int,
        segment_bytes: int = SEGMENT_BYTES,
        lock: threading.Lock | None = None,
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        # The collector passes its inbox's lock: one lock keeps what is on disk and what is in
        # RAM in the same order, and collect() pays for one acquisition, not two.
        self.lock = lock or threading.Lock()
        self.drained = threading.Condition(self.lock)
        self.segments: dict[Path, Segment] = {}
        # Segments holding records that are on disk only, in the order to read them back.
        self.backlog: deque[Segment] = deque()
        self.bytes = 0
        self.corrupt = 0
        self.adopted_records = 0
        self.write_errors = 0
        self.last_error = ""
        self._adopted_dirs: dict[Path, int] = {}
        self._dirty = False
        self._closed = False
        root.mkdir(parents=True, exist_ok=True)
        self.dir, self._lock_fd = claim_dir(root)
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._capacity = 0
        # Where appends in place into the mapping must stop: the capacity of a mapped, open
        # segment, else 0 (one comparison on collect()'s path instead of three).
        self._mapped_end = 0
        self._prefaulted = self._released = 0
        self._can_prefault = hasattr(mmap.mmap, "madvise") and os.uname().sysname == "Linux"
        # The next segment's file, made by the background thread once a quarter of the current
        # one is written: a rotation inside collect() then takes it instead of making one (a
        # new file's first write through its mapping alone costs 2-3 ms on ext4).
        self._spare: SegmentFile | None = None
        self._making_spare = False
        self._seen: tuple[int, int] = (-1, -1)
        self._rested_at: tuple[int, int] = (-1, -1)
        self._idle_rounds = 0
        self.current = self._adopt_all()
        if self._map is None:
            log.info("spool %s: memory mapping unavailable, using plain writes", self.dir)
        self._fsync_thread: threading.Thread | None = None
        if fsync:
            self._fsync_stop = threading.Event()
            self._fsync_thread = threading.Thread(
                target=self._fsync_loop, name="memcollect-fsync", daemon=True
            )
            self._fsync_thread.start()

    # --- ownership -----------------------------------------------------------------------

    def _adopt_all(self) -> Segment:
        """Take over our own leftovers and every spool whose owner is gone; open a segment."""
        # Numbered past every name in use, files or not: an entry named like a segment that
        # cannot be read must not be written over either.
        last = max((number_of(p) for p in self.dir.glob("seg-*.log")), default=0)
        for number, path in segment_files(self.dir):
            self._adopt_segment(path, number)
        for directory in sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink() and p != self.dir
        ):
            fd = try_lock(directory)
            if fd is None:
                continue  # its owner is alive
            self._adopted_dirs[directory] = fd
            for number, path in segment_files(directory):
                self._adopt_segment(path, number)
            self._forget_dir_if_empty(directory)
        return self._open_segment(last + 1)

    def _adopt_segment(self, path: Path, number: int) -> None:
        scanned = scan_segment(path)
        if scanned is None:
            return
        records, corrupt, end = scanned
        self.corrupt += corrupt
        segment = Segment(path, number, adopted=True)
        segment.size = end  # where the data ends, not the preallocated size
        segment.outstanding = records
        self.adopted_records += records
        self.bytes += segment.size
        self.segments[path] = segment
        if records:
            segment.read_offset = 0
            self.backlog.append(segment)
        else:
            self._delete(segment)

    def _forget_dir_if_empty(self, directory: Path) -> None:
        if directory not in self._adopted_dirs:
            return
        if any(s.path.parent == directory for s in self.segments.values()):
            return
        fd = self._adopted_dirs.pop(directory)
        remove_quietly(directory)
        os.close(fd)

    # --- writing -------------------------------------------------------------------------

    def _open_segment(self, number: int, capacity: int | None = None) -> Segment:
        capacity = max(capacity or 0, self.segment_bytes)
        # The first chunk is faulted in now: a new file's first written page costs
        # milliseconds (2-2.5 ms on ext4), which the first collect() must not pay.
        populate = min(capacity, _PREFAULT_CHUNK) if self._can_prefault else 0
        opened = SegmentFile.create(number, self._segment_path(number), capacity, populate)
        if opened.map is not None and populate and not opened.prefaulted:
            self._can_prefault = False  # an older kernel: collect() faults pages in
        segment = self._write_to(opened)
        if self.fsync:
            fsync_dir(self.dir)
        return segment

    def _segment_path(self, number: int) -> Path:
        return self.dir / f"seg-{number:08d}.log"

    def _write_to(self, opened: SegmentFile) -> Segment:
        """Make a segment's open file the one appends go to."""
        self._fd, self._map, self._capacity = opened.fd, opened.map, opened.capacity
        self._mapped_end = opened.capacity if opened.map is not None and not self._closed else 0
        self._prefaulted, self._released = opened.prefaulted, 0
        segment = Segment(opened.path, opened.number)
        self.segments[opened.path] = segment
        return segment

    def _make_spare(self) -> None:
        """Make the next segment's file ahead, outside the lock, once a quarter of the current
        one is written (called by the background thread, from prefault())."""
        with self.lock:
            if (
                self._spare is not None or self._making_spare or self._closed
                or self._map is None or self.current.size * 4 < self._capacity
            ):  # fmt: skip
                return
            number = self.current.number + 1
            self._making_spare = True
        populate = min(self.segment_bytes, _PREFAULT_CHUNK)  # written, not madvise()d
        spare = SegmentFile.spare(number, self._segment_path(number), self.segment_bytes, populate)
        if spare is not None and self.fsync:
            fsync_dir(self.dir)
        with self.lock:
            self._making_spare = False
            if spare is None:
                return
            if self._closed or self.current.number + 1 != number:
                spare.drop(delete=spare.path not in self.segments)  # rotated meanwhile
                return
            self._spare = spare

    def _drop_spare_locked(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.drop(delete=spare.path not in self.segments)

    def prefault(self) -> None:
        """Fault in the pages the next appends will write, so that collect() does not; let go
        of those written."""
        if self._rested_at == self.position():
            return  # released while idle, and nothing appended since
        self._make_spare()
        with self.lock:
            written = self.current.size & ~(mmap.PAGESIZE - 1)
            if self._map is not None and written - self._released >= _RELEASE_EVERY:
                with contextlib.suppress(OSError, ValueError):
                    self._map.madvise(mmap.MADV_DONTNEED, self._released, written - self._released)
                self._released = written
        while self._can_prefault:
            with self.lock:
                # Page-aligned (or the capacity): what is done, or the page being written.
                start = max(self._prefaulted, self.current.size & ~(mmap.PAGESIZE - 1))
                end = min(self._capacity, start + _PREFAULT_CHUNK)
                if self._map is None or end <= start or start > self.current.size + _PREFAULT_AHEAD:
                    return
                try:
                    self._map.madvise(MADV_POPULATE_WRITE, start, end - start)
                except (OSError, ValueError):  # an older kernel: collect() faults them in
                    self._can_prefault = False
                    return
                self._prefaulted = end

    def position(self) -> tuple[int, int]:
        """Where the next append goes: the current segment's number and size."""
        return (self.current.number, self.current.size)

    def release_pages(self) -> None:
        """While nothing is appended: unmap the segment's pages, written and faulted in
        ahead alike (the page cache keeps the bytes; the next appends fault them in again)."""
        with self.lock:
            if self._map is None:
                return
            written = self.current.size & ~(mmap.PAGESIZE - 1)
            end = max(self._prefaulted, -(-self.current.size // mmap.PAGESIZE) * mmap.PAGESIZE)
            if end > self._released:
                with contextlib.suppress(OSError, ValueError):
                    self._map.madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            self._released = self._prefaulted = written
            self._rested_at = self.position()
            spare = self._spare
            if spare is not None and spare.map is not None and spare.prefaulted:
                with contextlib.suppress(OSError, ValueError):
                    spare.map.madvise(mmap.MADV_DONTNEED, 0, spare.prefaulted)
                self._spare = spare._replace(prefaulted=0)

    def release_when_idle(self) -> None:
        """prefault() for a caller that comes round often: after a few rounds in which
        nothing was appended, release_pages() once instead."""
        seen = self.position()
        if seen != self._seen:
            self._seen, self._idle_rounds = seen, 0
            self.prefault()
            return
        self._idle_rounds += 1
        if self._idle_rounds == _IDLE_ROUNDS:
            self.release_pages()

    def append_locked(self, data: bytes, count: int) -> tuple[Segment, int] | None:
        """Append framed records (caller holds `lock`): their segment and starting offset,
        or None when the spool is full or the disk refused."""
        if self._closed or self.bytes + len(data) > self.max_bytes:
            return None
        segment = self.current
        try:
            if segment.size + len(data) > self._capacity:
                segment = self._rotate_locked(len(data))
            start = segment.size
            if self._map is not None:
                # A copy into the page cache: no system call, the GIL is kept, and the bytes
                # belong to the kernel at once, so they outlive a kill -9 of this process.
                self._map[start : start + len(data)] = data
            elif os.pwrite(self._fd, data, start) != len(data):
                raise OSError("short write")
        except OSError as exc:
            # Logged by the caller once the lock is released: a logging handler that
            # collects must not find this lock held.
            self.write_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return None
        segment.size += len(data)
        segment.outstanding += count
        self.bytes += len(data)
        self._dirty = True
        return segment, start

    def append_one_locked(self, payload: bytes, crc: int) -> tuple[Segment, int] | None:
        """append_locked for one record, framed in place: no header + payload copy."""
        segment = self.current
        start = segment.size
        end = start + _HEADER_SIZE + len(payload)
        if end > self._mapped_end:
            # Past the mapping, or no mapping, or closed: append_locked rotates, writes
            # plainly or refuses.
            return self.append_locked(_pack(MAGIC, len(payload), crc) + payload, 1)
        if self.bytes + end - start > self.max_bytes:
            return None
        mapped: mmap.mmap = self._map  # type: ignore[assignment]  # _mapped_end says it is one
        _pack_into(mapped, start, MAGIC, len(payload), crc)
        mapped[start + _HEADER_SIZE : end] = payload
        segment.size = end
        segment.outstanding += 1
        self.bytes += end - start
        self._dirty = True
        return segment, start

    def _close_current_locked(self) -> None:
        """Unmap, trim the preallocated tail, and close the segment being written."""
        self._mapped_end = 0
        if self._fd < 0:
            return
        if self._map is not None:
            self._map.close()
            self._map = None
        os.ftruncate(self._fd, self.current.size)
        if self.fsync:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self.current.sealed = True

    def rotate(self) -> None:
        """Seal the segment being written and start a new one, so that the sealed one is
        deleted as soon as its records are stored (at once, when they are)."""
        with self.lock:
            if not self._closed and self.current.size:
                self._rotate_locked()

    def _rotate_locked(self, needed: int = 0) -> Segment:
        old = self.current
        self._close_current_locked()
        spare, self._spare = self._spare, None
        if spare is not None and spare.number == old.number + 1 and spare.capacity >= needed:
            self.current = self._write_to(spare)
        else:
            if spare is not None:
                spare.drop(delete=True)
            self.current = self._open_segment(old.number + 1, needed)
        self.delete_if_done_locked(old)
        return self.current

    def seal(self) -> int:
        """Close the current segment (if it holds anything); the number it had."""
        with self.lock:
            if self.current.size:
                self._rotate_locked()
            return self.current.number - 1

    def sync(self) -> None:
        """Make what was appended so far survive power loss."""
        with self.lock:
            if self._fd < 0 or not self._dirty:
                return
            fd = os.dup(self._fd)
            self._dirty = False
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _fsync_loop(self) -> None:
        while not self._fsync_stop.wait(self.fsync_interval):
            try:
                self.sync()
            except OSError as exc:  # pragma: no cover - disk trouble
                log.error("spool fsync failed: %s", exc)

    # --- reading back --------------------------------------------------------------------

    def start_backlog_locked(self, segment: Segment, offset: int) -> None:
        """Records from `offset` of `segment` on are on disk only (caller holds `lock`)."""
        if segment.read_offset is None:
            segment.read_offset = offset
            self.backlog.append(segment)

    @property
    def spilling(self) -> bool:
        """Whether newer records must stay on disk behind older ones not yet read back."""
        return bool(self.backlog)

    def read_back_locked(self, limit: int) -> list[tuple[Memory, Segment]]:
        """Up to `limit` records waiting on disk, oldest first (caller holds `lock`)."""
        out: list[tuple[Memory, Segment]] = []
        if self._closed:
            return out
        # Sized to the request, so that a small refill does not parse megabytes it leaves.
        chunk = min(READ_CHUNK_BYTES, max(64 << 10, limit * 1024))
        while self.backlog and len(out) < limit:
            segment = self.backlog[0]
            start = segment.read_offset or 0
            data = read_span(segment.path, start, min(segment.size - start, chunk))
            # Under the lock every appended frame is complete: reaching the end is the end.
            whole = start + len(data) >= segment.size
            records, _, stop = read_frames(data, final=whole)
            room = limit - len(out)
            if len(records) > room:
                records = records[:room]
                segment.read_offset = start + records[-1][0]
                out.extend((memory, segment) for _, memory in records)
                break
            out.extend((memory, segment) for _, memory in records)
            if whole:
                segment.read_offset = None
                self.backlog.popleft()
                self.delete_if_done_locked(segment)
            elif stop == 0:
                chunk *= 2  # one frame larger than a chunk: read more of it at once
            else:
                segment.read_offset = start + stop
        return out

    def find(self, memory_id: str, *, everything: bool = False) -> Memory | None:
        """A record still waiting on disk only, by id (a scan: for get(), not a hot path);
        everything=True looks at every record of the segments not yet stored, read back or
        not."""
        return self.find_many([memory_id], everything=everything).get(memory_id)

    def find_many(self, ids: Iterable[str], *, everything: bool = False) -> dict[str, Memory]:
        """find() for many ids, reading each segment once; those found, by id."""
        with self.lock:
            if everything:
                spans = [(s.path, s.done_offset, s.size) for s in self.segments.values()]
            else:
                spans = [(s.path, s.read_offset or 0, s.size) for s in self.backlog]
        return find_in_spans(spans, ids)

    # --- acknowledging -------------------------------------------------------------------

    def take_range_locked(self) -> tuple[Segment, int, int] | None:
        """The oldest appended stretch not yet handed out, whole frames only, as (segment,
        start, end); a storing process stores it and answers with ack_range_locked()."""
        while self.backlog:
            segment = self.backlog[0]
            start = segment.read_offset or 0
            end = segment.size
            if end > start:
                segment.read_offset = end
                return segment, start, end
            if not segment.sealed:
                return None  # the segment being written: more comes later
            # Sealed and all handed out: it leaves the backlog, and goes once answered.
            self.backlog.popleft()
            segment.read_offset = None
            self.delete_if_done_locked(segment)
        return None

    def ack_range_locked(self, segment: Segment, end: int, records: int) -> None:
        """A range handed out up to `end`, holding `records` records, is stored."""
        segment.done_offset = end
        self.ack_locked(segment, records)

    def settle_ranges(self) -> None:
        """Delete the sealed segments whose records were all handed out and answered, and let
        the one being written go at close once they all are."""
        with self.lock:
            for segment in list(self.backlog):
                if segment.outstanding <= 0 and (segment.read_offset or 0) >= segment.size:
                    segment.read_offset = None
                    self.backlog.remove(segment)
                    self.delete_if_done_locked(segment)

    def ack(self, segments: Iterable[Segment]) -> None:
        """Records of these segments were stored, dead-lettered or dropped."""
        with self.lock:
            for segment, done in Counter(segments).items():
                self.ack_locked(segment, done)

    def ack_locked(self, segment: Segment, count: int) -> None:
        """`count` records of `segment` were stored or dead-lettered (caller holds `lock`)."""
        if self._closed:
            return  # released to the next owner: its files are not ours to delete
        segment.outstanding -= count
        self.delete_if_done_locked(segment)
        self.drained.notify_all()

    def delete_if_done_locked(self, segment: Segment) -> None:
        """Delete the segment if nothing in it is owed any more (caller holds `lock`)."""
        if segment.deletable() and segment.path in self.segments:
            self._delete(segment)

    def _delete(self, segment: Segment) -> None:
        segment.path.unlink(missing_ok=True)
        if self.segments.pop(segment.path, None) is not None:
            self.bytes -= segment.size
        if segment.adopted:
            self._forget_dir_if_empty(segment.path.parent)

    def wait_drained(self, number: int, deadline: float) -> bool:
        """Wait until no own segment up to `number`, and no adopted one, holds records."""
        with self.lock:
            while any(
                (s.adopted or (s.number <= number and s.sealed)) for s in self.segments.values()
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.drained.wait(min(remaining, 0.5))
            return True

    # --- state ---------------------------------------------------------------------------

    def pending(self) -> int:
        """Records on disk not yet stored or dead-lettered."""
        with self.lock:
            return self.pending_locked()

    def pending_locked(self) -> int:
        """pending(), for a caller that holds `lock`."""
        return sum(max(0, s.outstanding) for s in self.segments.values())

    def segment_count(self) -> int:
        """Files in the spool now."""
        with self.lock:
            return len(self.segments)

    def close(self) -> bool:
        """Seal, delete what is drained, release the lock; True when nothing was left."""
        with self.lock:
            if self._closed:
                return not self.segments
            self._closed = True
            self._mapped_end = 0
            if self._fsync_thread is not None:
                self._fsync_stop.set()
            self._close_current_locked()
            self._drop_spare_locked()
            for segment in list(self.segments.values()):
                self.delete_if_done_locked(segment)
            left = bool(self.segments)
            for fd in self._adopted_dirs.values():
                os.close(fd)
            self._adopted_dirs.clear()
            if not left and self.dir.name != "main":
                # Removed while still locked: nobody adopts it while its files go.
                remove_quietly(self.dir)
            os.close(self._lock_fd)
        if left:
            log.warning("%d memories left in the spool at %s for the next start",
                        self.pending(), self.dir)  # fmt: skip
        return not left

    def abandon_after_fork(self) -> None:
        """In a forked child: let go of the parent's files without touching its locks."""
        self._mapped_end = 0
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.drop(delete=False)  # the parent's
        if self._map is not None:
            self._map.close()  # the child's copy of the mapping; the parent's is untouched
            self._map = None
        for fd in (self._fd, self._lock_fd, *self._adopted_dirs.values()):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = -1
        self._closed = True
        if self._fsync_thread is not None:
            self._fsync_stop.set()
