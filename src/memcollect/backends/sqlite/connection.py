"""The SQLite store's connections: its URL options, opening and migrating, reads and writes."""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from ...errors import BackendError, TransientBackendError, ValidationError
from ...retry import ErrorKind
from .._sql import SqlStore, run_migrations
from ..vectors import semantic_options
from .checkpoint import _Checkpointer
from .schema import (
    _FTS_DDL,
    _FTS_FILL,
    _TRANSIENT_CODES,
    MIGRATIONS,
    SCHEMA_VERSION,
    _busy,
    parse_sqlite_url,
)

log = logging.getLogger("memcollect")

#: SQLite's own default page cache a connection (PRAGMA cache_size=-2000).
_CACHE_KB = 2000
T = TypeVar("T")

# When more memories than this hold every word of a query, only the newest of them are
# ranked (the default of the `rank_window` URL option): they differ little in BM25 (all hold
# every word), while scoring tens of thousands of them costs tens of milliseconds.
RANK_WINDOW = 1000

# Connections inherited across fork are kept referenced, never closed: closing them in the
# child could release or disturb the parent's locks on the same file.
_ABANDONED: list[sqlite3.Connection] = []


# Every open store's write lock is taken around a fork: a child forked while a thread of the
# parent is inside a write transaction would find the file locked by its copy of SQLite's
# state for as long as it runs. The fork waits for that transaction (a batch, a fold) instead.
_OPEN_STORES: weakref.WeakSet[SQLiteConnection] = weakref.WeakSet()
_HELD_AT_FORK: list[threading.Lock] = []


def _before_fork() -> None:
    for store in list(_OPEN_STORES):
        lock = store._write_lock
        # Bounded: a thread forking from inside a write (a callback) must not wait forever.
        if lock.acquire(timeout=store.busy_timeout):
            _HELD_AT_FORK.append(lock)


def _after_fork() -> None:
    while _HELD_AT_FORK:
        _HELD_AT_FORK.pop().release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


class SQLiteConnection(SqlStore):
    """One SQLite file's connections: a writer, a reader a thread, and the schema."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path, options = parse_sqlite_url(url)
        known = {
            "fts", "busy_timeout", "synchronous", "semantic", "model", "rank_window", "checkpoint"
        }  # fmt: skip
        unknown = set(options) - known
        if unknown:
            raise ValidationError(
                f"unknown sqlite option {sorted(unknown)[0]!r} in {url!r}: "
                "use fts, busy_timeout, synchronous, semantic, model, rank_window or checkpoint"
            )
        checkpoint = options.get("checkpoint", "inline")
        if checkpoint not in ("inline", "background"):
            raise ValidationError(f"checkpoint in {url!r} must be inline or background")
        self.supports_semantic, self.embedder_kind, self.model_dir = semantic_options(options, url)
        self._embedded_upto = 0  # every stored row up to this seq has its vector
        self._embed_retry_at = 0.0
        self._embed_failures = 0
        self._embed_error: str | None = None
        self.want_fts = options.get("fts", "1") not in ("0", "false", "off", "no")
        try:
            # A write lock held for seconds is an outage: the circuit opens after
            # circuit_open_after (5 s) of failed writes, so a longer wait only hides it.
            self.busy_timeout = float(options.get("busy_timeout", "5"))
        except ValueError:
            raise ValidationError(f"busy_timeout in {url!r} must be a number of seconds") from None
        window = options.get("rank_window", str(RANK_WINDOW))
        if not window.isdigit():
            raise ValidationError(
                f"rank_window in {url!r} must be a whole number of memories (0 ranks them all)"
            )
        self.rank_window = int(window)
        self.synchronous = options.get("synchronous", "NORMAL").upper()
        if self.synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValidationError(f"synchronous in {url!r} must be OFF, NORMAL, FULL or EXTRA")
        self.has_fts = False
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        #: The writer prepared an insert of many rows since it was opened (release_memory).
        self._renew_writer = False
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._memory_db = self.path == ":memory:"
        self.background_checkpoints = checkpoint == "background" and not self._memory_db
        self._checkpointer: _Checkpointer | None = None
        self._opened = False
        _OPEN_STORES.add(self)

    def _connect(self) -> sqlite3.Connection:
        # An in-memory database lives in one connection: readers share the writer's.
        if not self._memory_db:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        if not self._memory_db:
            self._use_wal(conn)
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL needs it to itself, and SQLite answers "database is
        # locked" at once, without its busy handler, while another process or thread is
        # creating it too: so wait here, within busy_timeout, for the first one to finish.
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.002
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(random.uniform(0, pause))
            pause = min(pause * 2, 0.1)

    def open(self) -> None:
        """Create or migrate the schema (safe when several processes start at once). A file
        another process holds locked does not hold this up: it is opened on first use."""
        try:
            self._open()
        except TransientBackendError as exc:
            log.warning("%s; it is opened when first used", exc)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise BackendError(self._unopenable(exc)) from None

    def _unopenable(self, exc: OSError | sqlite3.DatabaseError) -> str:
        """One sentence on why the file cannot be the store, and what to do."""
        where = f"the SQLite store {self.path} cannot be opened"
        if isinstance(exc, OSError):
            directory = exc.filename or Path(self.path).parent
            return (
                f"{where}: its directory {directory} cannot be made ({exc.strerror or exc}): "
                "name a file in a directory this process can write, in the backend URL"
            )
        if not isinstance(exc, sqlite3.OperationalError):
            return (
                f"{where}: it is not a SQLite database ({exc}): name a new file or a "
                "memcollect store in the backend URL"
            )
        return (
            f"{where} ({exc}): check that the path names a file, not a directory, in a "
            "directory this process can write"
        )

    def _open(self) -> None:
        with self._write_lock:
            if self._opened:
                return
            try:
                conn = self._writer = self._writer or self._connect()
                # A file with the current schema needs no write (nor its lock) to open.
                if self._schema_changes(conn):
                    with self._transaction(conn):
                        self._migrate(conn)
                        if self.supports_semantic:
                            self._check_embedder(conn)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                raise TransientBackendError(
                    f"{self.path} is locked by another writer ({exc}), so its schema could "
                    "not be checked"
                ) from None
            if self.background_checkpoints:
                self._checkpointer = _Checkpointer(self.path, self.busy_timeout)
            self._leave_checkpoints(conn)
            self._opened = True

    def _leave_checkpoints(self, writer: sqlite3.Connection) -> None:
        """Keep the writer's commits from checkpointing while the checkpointer thread does."""
        if self._checkpointer is not None:
            writer.execute("PRAGMA wal_autocheckpoint=0")

    def _schema_changes(self, conn: sqlite3.Connection) -> bool:
        """Whether opening must write: a migration, the full-text index, a new embedder.
        Reads only (WAL readers never wait for a writer); sets has_fts when nothing is due."""
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "memcollect_meta" not in tables:
            return True
        meta = dict(conn.execute("SELECT key, value FROM memcollect_meta").fetchall())
        if int(meta.get("schema_version", 0)) != SCHEMA_VERSION:
            return True
        if self.want_fts and "memories_fts" not in tables:
            return True
        if self.supports_semantic:
            from ...semantic import embedder_id

            if meta.get("embedder") != embedder_id(self.embedder_kind, self.model_dir):
                return True
        self.has_fts = "memories_fts" in tables
        return False

    def _migrate(self, conn: sqlite3.Connection) -> None:
        run_migrations(
            conn.execute,
            MIGRATIONS,
            self.path,
            "INSERT OR REPLACE INTO memcollect_meta VALUES ('schema_version', ?)",
            split=True,
        )
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'memories_fts'").fetchone()
        if self.want_fts and not exists:
            conn.execute(_FTS_DDL)
            conn.execute(_FTS_FILL)
            exists = True
        # An index that exists is always kept up to date, whatever this URL says.
        self.has_fts = bool(exists)

    def _check_embedder(self, conn: sqlite3.Connection) -> None:
        """Vectors of another embedder cannot be compared with this one's: when the embedder
        changed (semantic=1 to static, another model), the old vectors go, and are made again
        with this one, as memories stored without a vector are."""
        from ...semantic import embedder_id

        current = embedder_id(self.embedder_kind, self.model_dir)
        row = conn.execute("SELECT value FROM memcollect_meta WHERE key = 'embedder'").fetchone()
        if row is not None and row[0] == current:
            return
        if row is not None:
            log.warning(
                "%s: the embedding model changed (%s, now %s); every memory is embedded again",
                self.path,
                row[0],
                current,
            )
        conn.execute("DELETE FROM embeddings")
        conn.execute("INSERT OR REPLACE INTO memcollect_meta VALUES ('embedder', ?)", (current,))

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front: no deadlock upgrading a read to a write.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _reader(self) -> sqlite3.Connection:
        if not self._opened:
            self._open()
        if self._memory_db:
            assert self._writer is not None
            return self._writer
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._reading(lambda conn: conn.execute(sql, params).fetchall())

    def _reading(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """Run `action` on this thread's reader, as _read runs a statement."""
        try:
            conn = self._reader()
            if self._memory_db:
                with self._write_lock:
                    return action(conn)
            return action(conn)
        except sqlite3.OperationalError as exc:
            # The SQL is ours and well formed: what fails is the file (locked, unreadable).
            raise TransientBackendError(
                f"{self.path} could not be read ({exc}): try again once it is readable"
            ) from None

    def _write(
        self,
        action: Callable[[sqlite3.Connection], object],
        erase: bool = False,
        cache_kb: int | None = None,
    ) -> None:
        """Run `action` in a write transaction. erase=True for deletes: deleted means gone
        from the file too, where SQLite overwrites what it frees, and from the write-ahead
        log, which holds the old pages until it is emptied (when no reader needs it).
        cache_kb: the page cache for this transaction alone (back to SQLite's 2 MB after)."""
        if not self._opened:
            self._open()
        with self._write_lock:
            conn = self._writer
            assert conn is not None
            if erase:
                conn.execute("PRAGMA secure_delete=ON")
            if cache_kb is not None:
                conn.execute(f"PRAGMA cache_size=-{int(cache_kb)}")
            try:
                with self._transaction(conn):
                    action(conn)
            finally:
                if erase:
                    conn.execute("PRAGMA secure_delete=OFF")
                if cache_kb is not None:
                    conn.execute(f"PRAGMA cache_size=-{_CACHE_KB}")  # the pages over it are freed
            checkpointer = self._checkpointer
            if checkpointer is not None and not checkpointer.nudge():
                # Its thread failed: the writer checkpoints in its commits again.
                conn.execute("PRAGMA wal_autocheckpoint=1000")
                self._checkpointer = None
            if erase and not self._memory_db:
                # Best effort: a reader in a long transaction (another process) holds the old
                # pages; wait for it briefly, not for the whole busy timeout.
                conn.execute("PRAGMA busy_timeout=200")
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")

    def release_memory(self) -> None:
        """Let go of the connections' page caches (up to 2 MB each) and of the writer's
        prepared inserts of many rows (up to 8 MB): both are made again when next needed."""
        if self._memory_db:
            return  # its pages are the database itself
        with self._write_lock:
            if self._writer is not None and not self._renew_writer:
                self._writer.execute("PRAGMA shrink_memory")
            elif self._writer is not None:
                # The statement cache cannot be emptied but by closing its connection.
                try:
                    fresh = self._connect()
                    self._leave_checkpoints(fresh)
                except sqlite3.Error:  # locked or unreadable now: keep the one that works
                    self._writer.execute("PRAGMA shrink_memory")
                else:
                    self._writer.close()
                    self._writer, self._renew_writer = fresh, False
        with self._readers_lock:
            readers = list(self._readers)
        for conn in readers:
            # One closed by its thread meanwhile has nothing to free.
            with suppress(sqlite3.Error):
                conn.execute("PRAGMA shrink_memory")

    def classify(self, exc: BaseException) -> ErrorKind | None:
        """Busy, locked, I/O and disk-full errors pass; constraint and data errors do not."""
        if isinstance(exc, sqlite3.OperationalError):
            code = getattr(exc, "sqlite_errorcode", None)
            if code is None or (code & 0xFF) in _TRANSIENT_CODES:
                return "transient"
            return None
        if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError)):
            return "permanent"
        return super().classify(exc)

    def move_lock_path(self) -> str | None:
        """A file beside the database: every process that opens the same file finds it."""
        return None if self._memory_db else f"{self.path}-moving.lock"

    def after_fork(self) -> None:
        """Forget the parent's connections; SQLite must not use them across fork."""
        _ABANDONED.extend([c for c in (self._writer, *self._readers) if c is not None])
        self._writer = None
        self._checkpointer = None  # its thread is the parent's
        self._readers = []
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._readers_lock = threading.Lock()
        self._opened = False

    def close(self) -> None:
        """Close every connection this backend opened."""
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        with self._write_lock:
            if self._checkpointer is not None:
                self._checkpointer.stop()
                self._checkpointer = None
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._opened = False
