"""A lock held across the threads of a process and across the processes sharing a store.

Moving memories from a fallback back to the primary and `delete()` must not interleave, or a
memory read from the fallback before a delete is written to the primary after it, and stays.
The mover can be another process: the storing process of `storer="process"`, or another
application's collector sharing the same fallback file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from types import TracebackType

log = logging.getLogger("memcollect")


class SharedLock:
    """Exclusive across this process's threads and, by a POSIX lock on a file, processes."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._threads = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> SharedLock:
        self._threads.acquire()
        try:
            fd = self._file()
            if fd is not None:
                fcntl.lockf(fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._fd is not None:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _file(self) -> int | None:
        if self._fd is None and self.path is not None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                # A lock file that cannot be made (a read-only directory, another user's
                # file) should not stop moves and deletes: other processes are then unguarded.
                log.warning(
                    "cannot open the lock file %s (%s): a delete() in another process may "
                    "race this one's moves from the fallback",
                    self.path,
                    exc.strerror or exc,
                )
                self.path = None
        return self._fd

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's POSIX lock is not this process's; close its file."""
        if self._fd is not None:
            # Closing it here cannot release the parent's lock: POSIX locks belong to a process.
            os.close(self._fd)
            self._fd = None


_shared: dict[str, SharedLock] = {}
_shared_guard = threading.Lock()


def shared_lock(path: str | None) -> SharedLock:
    """The one lock of this process for `path` (a lock of its own when path is None).

    One per path, because POSIX locks are per process: two collectors in one process that
    shared a file would both be let in, and either's unlock would free the other's lock.
    """
    if path is None:
        return SharedLock(None)
    path = os.path.abspath(path)
    with _shared_guard:
        lock = _shared.get(path)
        if lock is None:
            lock = _shared[path] = SharedLock(path)
        return lock


def _forget_after_fork() -> None:
    global _shared_guard
    # A thread of the parent may have held these; it does not exist here.
    _shared_guard = threading.Lock()
    for lock in _shared.values():
        lock.forget_after_fork()
    _shared.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
