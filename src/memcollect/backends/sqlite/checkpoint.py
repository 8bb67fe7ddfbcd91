"""Checkpoints of the write-ahead log from a thread of their own."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

log = logging.getLogger("memcollect")


# How long the checkpoint thread waits after a checkpoint: commits meanwhile share the next.
_CHECKPOINT_PAUSE_S = 0.05


class _Checkpointer:
    """Copies the write-ahead log into the database file from a thread of its own: the
    writer's commits then never wait for the copy and its fsyncs (PASSIVE never blocks it)."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._due = threading.Event()
        self._stopping = False
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="memcollect-checkpoint", daemon=True)
        self._thread.start()

    def nudge(self) -> bool:
        """A commit happened; False once the thread has failed."""
        self._due.set()
        return not self._failed

    def stop(self) -> None:
        """End the thread (SQLite checkpoints the rest when the last connection closes)."""
        self._stopping = True
        self._due.set()
        self._thread.join(self.busy_timeout + 5)

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            try:
                while True:
                    self._due.wait()
                    if self._stopping:
                        return
                    self._due.clear()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    time.sleep(_CHECKPOINT_PAUSE_S)
            finally:
                conn.close()
        except Exception as exc:  # noqa: BLE001 - the writer takes the checkpoints back
            self._failed = True
            log.warning(
                "%s: background checkpoints failed (%s); the writer does them", self.path, exc
            )
