"""The spool's directories and files: claiming one by its lock, finding its segments,
reading and removing them."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from .frames import read_frames
from .model import Memory

__all__ = [
    "fsync_dir",
    "iter_spool_records",
    "number_of",
    "read_span",
    "remove_quietly",
    "segment_files",
    "try_lock",
]

log = logging.getLogger("memcollect")


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


def iter_spool_records(root: Path) -> Iterator[Memory]:
    """Every readable record under a spool root (for inspection and tests)."""
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        for _, path in segment_files(directory):
            for _, memory in read_frames(path.read_bytes())[0]:
                yield memory
