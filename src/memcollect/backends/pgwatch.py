"""What the PostgreSQL store needs around psycopg: a deadline on every call, and the pool's
connection errors told once instead of a line per attempt."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

__all__ = ["PoolErrors", "Watchdog", "one_line"]

log = logging.getLogger("memcollect")


class Watchdog:
    """Cuts the socket of a call that has not answered by its deadline.

    A server behind a partition, or a proxy that accepts and then never forwards, leaves a
    query waiting forever: TCP keepalives and the server's statement_timeout cannot end a
    wait whose far end never answers. Shutting the socket down makes libpq's wait return, so
    psycopg raises OperationalError, which the worker retries and the circuit counts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._heap: list[tuple[float, int]] = []
        self._watched: dict[int, Any] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    @contextlib.contextmanager
    def guard(self, conn: Any, seconds: float) -> Iterator[None]:
        """Within the block, `conn` is cut if the block lasts `seconds` (0: never)."""
        if seconds <= 0:
            yield
            return
        token = next(self._tokens)
        deadline = time.monotonic() + seconds
        with self._lock:
            self._watched[token] = conn
            soonest = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, token))
            self._start_locked()
        if soonest:
            self._wake.set()
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(token, None)

    def _start_locked(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="memcollect-pg-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._heap and self._heap[0][1] not in self._watched:
                    heapq.heappop(self._heap)  # answered in time
                if not self._heap:
                    self._thread = None
                    return
                deadline, token = self._heap[0]
                late = deadline <= time.monotonic()
                conn = self._watched.pop(token) if late else None
                if late:
                    heapq.heappop(self._heap)
            if conn is not None:
                log.warning("PostgreSQL did not answer in time: its connection is cut")
                cut(conn)
                continue
            self._wake.wait(max(0.0, deadline - time.monotonic()))
            self._wake.clear()


def one_line(text: str) -> str:
    """A driver's message on one line (libpq's run over several, with tabs)."""
    return " ".join(text.split())


def cut(conn: Any) -> None:
    """Shut a psycopg connection's socket down under it (it is closed by its owner)."""
    with contextlib.suppress(Exception):
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)


class PoolErrors(logging.Filter):
    """Keeps the last connection error of each memcollect pool, and drops psycopg_pool's
    line for every failed attempt (it retries in the background, and flooded stderr)."""

    _pools: ClassVar[weakref.WeakValueDictionary[str, Any]] = weakref.WeakValueDictionary()
    _installed = False
    _names = itertools.count(1)

    @classmethod
    def register(cls, owner: Any, report: Callable[[str], None]) -> str:
        """A pool name for `owner`, whose errors go to `report`."""
        if not cls._installed:
            logging.getLogger("psycopg.pool").addFilter(cls())
            cls._installed = True
        name = f"memcollect-{next(cls._names)}"
        owner._report_connect_error = report
        cls._pools[name] = owner
        return name

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the lines about memcollect's pools (told once by memcollect instead)."""
        args = record.args if isinstance(record.args, tuple) else ()
        if not args or not isinstance(args[0], str) or args[0] not in self._pools:
            return True
        owner = self._pools.get(args[0])
        if owner is not None and record.msg.startswith("error connecting") and len(args) > 1:
            owner._report_connect_error(one_line(str(args[1])))
        return False
