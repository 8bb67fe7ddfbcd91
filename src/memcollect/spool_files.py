"""The spool's directories and files: claiming one by its lock, finding its segments,
reading and removing them."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from .frames import read_frames
from .model import Memory

__all__ = [
    "SegmentFile",
    "claim_dir",
    "find_in_spans",
    "fsync_dir",
    "has_segments",
    "iter_spool_records",
    "number_of",
    "read_span",
    "remove_quietly",
    "scan_segment",
    "segment_files",
    "try_lock",
]

log = logging.getLogger("memcollect")

# Up to this many ids, find_in_spans() looks for them in a span's bytes before decoding it.
_IDS_SOUGHT_IN_BYTES = 8

# Linux 5.14's madvise(MADV_POPULATE_WRITE): the pages faulted in, writable, at once.
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


class SegmentFile(NamedTuple):
    """A segment's file, open for appends: mapped, unless it could not be."""

    number: int
    path: Path
    fd: int
    map: mmap.mmap | None
    capacity: int
    prefaulted: int  # how much of the mapping is faulted in, from its start

    @classmethod
    def create(cls, number: int, path: Path, capacity: int, populate: int) -> SegmentFile:
        """A new file of `capacity` bytes, reserved on disk, mapped and its first `populate`
        bytes faulted in; unmapped (plain writes) where the filesystem cannot reserve or
        map it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        mapped = _reserved_map(fd, capacity)
        if mapped is None:
            os.ftruncate(fd, 0)
            return cls(number, path, fd, None, capacity, 0)
        return cls(number, path, fd, mapped, capacity, _populate(mapped, populate))

    @classmethod
    def spare(cls, number: int, path: Path, capacity: int, populate: int) -> SegmentFile | None:
        """create() ahead of the rotation that will write to it, for a name nobody opened:
        None where it cannot be made mapped (the rotation then makes its file itself)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError:
            return None
        mapped = _reserved_map(fd, capacity)
        if mapped is None:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return cls(number, path, fd, mapped, capacity, _touch(mapped, populate))

    def drop(self, *, delete: bool) -> None:
        """Close the file; `delete`: remove it too (it is no segment's)."""
        if self.map is not None:
            with contextlib.suppress(OSError, ValueError):
                self.map.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if delete:
            with contextlib.suppress(OSError):
                self.path.unlink()


def _reserved_map(fd: int, capacity: int) -> mmap.mmap | None:
    """`capacity` bytes of the file reserved on disk and mapped; None where the filesystem
    cannot do either. Reserved first, so that a full disk is an error here and never a
    SIGBUS when a page of the mapping is first written."""
    try:
        os.posix_fallocate(fd, 0, capacity)
        return mmap.mmap(fd, capacity)
    except (OSError, ValueError):
        return None


def _touch(mapped: mmap.mmap, size: int) -> int:
    """Write zeros over the first `size` bytes of a new file's mapping from the kernel's side,
    a read of /dev/zero into it, which lets go of the GIL; how many were written.

    The first write through a new file's mapping costs milliseconds (2-3 ms measured on ext4),
    and madvise() holds the GIL throughout: in the background thread, it would stall
    collect() as long. Only for a file no record is written to yet: the zeros overwrite."""
    if not size:
        return 0
    try:
        zero = os.open("/dev/zero", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return _populate(mapped, size)
    try:
        with memoryview(mapped) as view, view[:size] as head:
            return os.readv(zero, [head])
    except OSError:
        return 0
    finally:
        os.close(zero)


def _populate(mapped: mmap.mmap, size: int) -> int:
    """Fault in the first `size` bytes of a mapping; how many were (0 on an older kernel)."""
    if not size:
        return 0
    try:
        mapped.madvise(MADV_POPULATE_WRITE, 0, size)
    except (OSError, ValueError):
        return 0
    return size


def claim_dir(root: Path) -> tuple[Path, int]:
    """A spool directory under `root` for this process, and its lock's descriptor."""
    # "main" first; a directory of this process's own otherwise (main is taken, or cannot be
    # used). A few tries: a fresh name cannot be taken by anyone else, but the directory can
    # be swept away by a start that finds it empty and unlocked.
    for name in ("main", *(f"p{os.getpid()}-{os.urandom(4).hex()}" for _ in range(3))):
        directory = root / name
        try:
            directory.mkdir(exist_ok=True)
        except OSError:
            continue  # a file named like the directory: try another name
        fd = try_lock(directory)
        if fd is not None:
            return directory, fd
    raise OSError(f"could not lock a spool directory under {root}")


def scan_segment(path: Path) -> tuple[int, int, int] | None:
    """A left segment's whole records, corrupt stretches, and where its data ends; None
    (logged) when it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("spool %s cannot be read (%s: %s): skipped", path,
                    type(exc).__name__, exc)  # fmt: skip
        return None
    records, corrupt, end = read_frames(data)
    if corrupt:
        log.warning("spool %s: skipped %d corrupt stretch(es)", path, corrupt)
    return len(records), corrupt, end


def try_lock(directory: Path) -> int | None:
    """The locked descriptor of a spool directory's lock file; None when another process
    holds it, or the directory cannot be used (gone, or its `lock` is not a file)."""
    try:
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        # Removed by its owner's close() meanwhile (a race with no loser), or a `lock` that
        # is a directory: skipped, and every other spool is still used.
        if not isinstance(exc, FileNotFoundError):
            log.warning("spool %s cannot be used (%s: %s): skipped", directory,
                        type(exc).__name__, exc)  # fmt: skip
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The lock is ours only if the file is still there: its owner may have removed the
        # directory between our open and our lock, leaving us a lock on nothing.
        held, there = os.fstat(fd), os.stat(directory / "lock")
        if (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino):
            raise FileNotFoundError(directory / "lock")
    except OSError:
        os.close(fd)
        return None
    return fd


def segment_files(directory: Path) -> list[tuple[int, Path]]:
    """The segment files of a directory, oldest first; anything else named like one (a
    directory, a dangling link) is skipped and said once."""
    found = []
    try:
        paths = list(directory.glob("seg-*.log"))
    except OSError:
        return []
    for path in paths:
        try:
            number = int(path.stem[4:])
        except ValueError:
            continue
        if not path.is_file():
            log.warning("spool %s is not a file: skipped", path)
            continue
        found.append((number, path))
    return sorted(found)


def number_of(path: Path) -> int:
    """The number in a segment's name (0 when there is none)."""
    digits = path.stem[4:]
    return int(digits) if digits.isdigit() else 0


def remove_quietly(directory: Path) -> None:
    """Remove a spool directory and its files; another process removing them at the same
    time, or something in it that is not ours to remove, leaves it as it is."""
    with contextlib.suppress(OSError):
        for leftover in directory.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
        directory.rmdir()


def read_span(path: Path, start: int, size: int) -> bytes:
    """`size` bytes of a file from `start`."""
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(size)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (files created, renamed, removed) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def has_segments(root: Path) -> bool:
    """Whether any spool under a spool root holds a segment file."""
    try:
        directories = [p for p in root.iterdir() if p.is_dir()]
    except OSError:  # no spool root (never used), or not a directory
        return False
    return any(segment_files(d) for d in directories)


def iter_spool_records(root: Path) -> Iterator[Memory]:
    """Every readable record under a spool root (for inspection and tests)."""
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        for _, path in segment_files(directory):
            for _, memory in read_frames(path.read_bytes())[0]:
                yield memory


def find_in_spans(spans: Iterable[tuple[Path, int, int]], ids: Iterable[str]) -> dict[str, Memory]:
    """The records of the given ids found in (path, start, end) spans of segments, by id,
    reading each span once; a file gone meanwhile is skipped."""
    wanted = set(ids)
    found: dict[str, Memory] = {}
    for path, start, end in spans:
        missing = wanted.difference(found)
        if not missing:
            break
        try:
            data = read_span(path, start, end - start)
        except FileNotFoundError:
            continue
        # A few ids are looked for in the bytes first: most spans hold none of them, and
        # that costs less than decoding every record.
        if len(missing) <= _IDS_SOUGHT_IN_BYTES and not any(
            memory_id.encode() in data for memory_id in missing
        ):
            continue
        for _, memory in read_frames(data, final=False)[0]:
            if memory.id in missing and memory.id not in found:
                found[memory.id] = memory
    return found
