"""sqlite:// — the embedded default: one file, WAL, FTS5 search ranked by BM25."""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from ..errors import TransientBackendError, ValidationError
from ..model import PRIORITIES, PRIORITY_RANK, Memory
from ..retry import ErrorKind
from .base import (
    Backend,
    DeadLetter,
    SearchQuery,
    content_terms,
    delete_page_order,
    every_word_first,
    plain_terms,
)

__all__ = ["SQLiteBackend", "parse_sqlite_url"]

log = logging.getLogger("memcollect")

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode
_memory_decode = msgspec.json.Decoder(Memory).decode

# SQLite primary result codes that say "try again later", not "this record is bad".
_TRANSIENT_CODES = {
    5,
    6,
    7,
    8,
    10,
    13,
    14,
    15,
}  # BUSY LOCKED NOMEM READONLY IOERR FULL CANTOPEN PROTOCOL

_COLUMNS = (
    "id, category, content, metadata, priority, tags, project, agent, session, created_at, "
    "content_hash"
)


MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS memories (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            category TEXT NOT NULL,
            content TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            priority INTEGER NOT NULL,
            tags TEXT NOT NULL DEFAULT '[]',
            project TEXT,
            agent TEXT,
            session TEXT,
            created_at REAL NOT NULL,
            content_hash TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX IF NOT EXISTS memories_category_id ON memories (category, id);
        CREATE TABLE IF NOT EXISTS dead_letters (
            id TEXT PRIMARY KEY,
            record TEXT NOT NULL,
            error TEXT NOT NULL,
            failed_at REAL NOT NULL
        );
        """,
    ),
]
MIGRATIONS.append(
    # The full-text index gains Porter stemming ("resetting" finds "reset"): drop it here,
    # and it is built again below with the new tokenizer from the rows it indexes.
    (2, "DROP TABLE IF EXISTS memories_fts"),
)
MIGRATIONS.append(
    # Embeddings for semantic recall (?semantic=1), one float32 vector per memory row.
    (3, "CREATE TABLE IF NOT EXISTS embeddings (seq INTEGER PRIMARY KEY, vector BLOB NOT NULL)"),
)
MIGRATIONS.append(
    # The full-text index gains a third column, `facets`: one token per filter value
    # (category, project, agent, session, each tag), so a filtered search narrows its matches
    # inside the index instead of looking up every matching row. Built again below.
    (
        4,
        """
        DROP TABLE IF EXISTS memories_fts;
        CREATE VIEW IF NOT EXISTS memories_fts_source AS SELECT seq, content, tags,
            'c' || hex(category)
            || coalesce(' p' || hex(project), '')
            || coalesce(' a' || hex(agent), '')
            || coalesce(' s' || hex(session), '')
            || coalesce((SELECT ' ' || group_concat('t' || hex(value), ' ')
                         FROM json_each(memories.tags)), '') AS facets
        FROM memories
        """,
    )
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_FTS_DDL = """
CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5(
    content, tags, facets, content='memories_fts_source', content_rowid='seq',
    tokenize='porter unicode61 remove_diacritics 2'
)
"""
# Fills the index from the rows (FTS5's own 'rebuild' cannot read a view).
_FTS_FILL = (
    "INSERT INTO memories_fts(rowid, content, tags, facets) "
    "SELECT seq, content, tags, facets FROM memories_fts_source"
)
# Memories embedded in one step of the worker's idle time: about a third of a second of the
# model (~5 ms a memory on 2 cores), or of static vectors (~0.05 ms).
_EMBED_CHUNK = {"model": 64, "static": 4096}
# A semantic search embeds at most this many chunks of memories still without a vector,
# oldest first (when the worker keeps up: those stored since it was last quiet); the worker
# embeds the rest of a backlog.
_SEARCH_EMBEDS_CHUNKS = 4
# Rows between a memory and the next one of its session, at most, for the two to count as
# neighbours in hybrid search (bounds the look, which has no index on session).
_NEIGHBOUR_SPAN = 200
# When more memories than this hold every word of a query, only the newest of them are
# ranked (the default of the `rank_window` URL option): they differ little in BM25 (all hold
# every word), while scoring tens of thousands of them costs tens of milliseconds.
RANK_WINDOW = 1000


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """The file path (or ":memory:") and options of a sqlite:// URL."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ValidationError(f"backend {url!r} is not a sqlite:// URL")
    # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them.
    path = url.split("?", 1)[0][len("sqlite://") :]
    path = path[1:] if path.startswith("/") else path
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return path or ":memory:", options


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite said another connection holds the lock (BUSY or LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (5, 6) or "locked" in str(exc)


def query_stems(text: str) -> list[tuple[str, int]]:
    """Each distinct word of a query as its stem and its weight (its length, a rough
    stand-in for rarity), for word_coverage."""
    return [(_stem(t), len(t)) for t in set(content_terms(text))]


def word_coverage(stems: list[tuple[str, int]], memory: Memory) -> float:
    """How much of a query's words (query_stems) a memory holds, 0 to 1, squared: a memory
    that shares one word of a question is weak evidence beside its meaning, one that holds
    most of them is strong."""
    if not stems:
        return 0.0
    # Its words, tags and who recorded it: a question about Caroline is answered by what
    # she said, which never names her (the agent is embedded with the content too).
    said = " ".join([memory.content, *memory.tags, memory.agent or ""])
    held = {_stem(w) for w in plain_terms(said)}
    share = sum(w for stem, w in stems if stem in held) / sum(w for _, w in stems)
    return share**COVERAGE_POWER


# Squared: on LoCoMo's dev set hybrid recall@10 was 0.68 unweighted but the paraphrase set
# of bench/recall.py fell from 0.97 to 0.87; squared, hybrid is no worse than its better
# half on either (0.60 on LoCoMo, text 0.55; 0.97 on the paraphrases, semantic 0.97).
COVERAGE_POWER = 2


def _stem(word: str) -> str:
    """A crude stem, to tell "group" and "groups" alike (the index stems with Porter)."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def numpy() -> Any:
    """numpy, imported as semantic recall imports it (one thread at a time)."""
    from ..semantic import numpy as load  # here: stores without vectors never need it

    return load()


def _from_row(row: Sequence[Any]) -> Memory:
    return Memory(
        row[0],
        row[1],
        row[2],
        _json_decode(row[3]) if row[3] != "{}" else {},
        PRIORITIES[row[4]],
        tuple(_json_decode(row[5])) if row[5] != "[]" else (),
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
    )


class SQLiteBackend(Backend):
    """Memories in one SQLite file; safe for several threads and processes at once.

    URL options: `fts=0` turns the full-text index off (search falls back to a scan),
    `busy_timeout=SECONDS` (default 5) bounds each wait for another writer's lock,
    `synchronous=NORMAL|FULL|OFF` (default NORMAL, which WAL keeps consistent on a crash),
    `semantic=1` embeds each memory once it is stored (in the worker's quiet moments), for
    search(mode="semantic" | "hybrid") (needs the semantic extra), `semantic=static` does so
    with static token vectors distilled from the model (a hundred times faster, less exact),
    `model=DIR` names another sentence-transformers model, and
    `rank_window=N` (default 1000) is how many of the newest memories holding every word of a
    query are ranked when more hold them (0 ranks them all), and `checkpoint=background`
    copies the write-ahead log into the file from a thread of its own instead of in the
    writer's commits (the storing process of storer="process" uses it).
    """

    name = "sqlite"

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
        semantic = options.get("semantic", "0").lower()
        if semantic not in ("0", "false", "off", "no", "1", "true", "on", "yes", "static"):
            raise ValidationError(
                f"semantic in {url!r} must be 1 (the model), static (static token vectors, "
                "faster and less exact) or 0"
            )
        self.supports_semantic = semantic not in ("0", "false", "off", "no")
        self.embedder_kind = "static" if semantic == "static" else "model"
        self.model_dir = options.get("model")
        if self.supports_semantic:
            from ..semantic import MISSING_EXTRA, available, check_model_dir

            if not available():
                raise ValidationError(MISSING_EXTRA)
            check_model_dir(self.model_dir, url)
        self._vectors = _Vectors()
        self._embedding = threading.Lock()
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
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._memory_db = self.path == ":memory:"
        self.background_checkpoints = checkpoint == "background" and not self._memory_db
        self._checkpointer: _Checkpointer | None = None
        self._opened = False

    # --- connections ---------------------------------------------------------------------

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
                conn.execute("PRAGMA wal_autocheckpoint=0")
                self._checkpointer = _Checkpointer(self.path, self.busy_timeout)
            self._opened = True

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
            from ..semantic import embedder_id

            if meta.get("embedder") != embedder_id(self.embedder_kind, self.model_dir):
                return True
        self.has_fts = "memories_fts" in tables
        return False

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS memcollect_meta (key TEXT PRIMARY KEY, value TEXT)"
        )
        row = conn.execute(
            "SELECT value FROM memcollect_meta WHERE key = 'schema_version'"
        ).fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise ValidationError(
                f"{self.path} has schema version {version}, newer than this memcollect "
                f"({SCHEMA_VERSION}): upgrade memcollect"
            )
        for number, ddl in MIGRATIONS:
            if number > version:
                for statement in ddl.split(";"):
                    if statement.strip():
                        conn.execute(statement)
        conn.execute(
            "INSERT OR REPLACE INTO memcollect_meta VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
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
        from ..semantic import embedder_id

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
        try:
            conn = self._reader()
            if self._memory_db:
                with self._write_lock:
                    return conn.execute(sql, params).fetchall()
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            # The SQL is ours and well formed: what fails is the file (locked, unreadable).
            raise TransientBackendError(
                f"{self.path} could not be read ({exc}): try again once it is readable"
            ) from None

    def _write(self, action: Callable[[sqlite3.Connection], object], erase: bool = False) -> None:
        """Run `action` in a write transaction. erase=True for deletes: deleted means gone
        from the file too, where SQLite overwrites what it frees, and from the write-ahead
        log, which holds the old pages until it is emptied (when no reader needs it)."""
        if not self._opened:
            self._open()
        with self._write_lock:
            conn = self._writer
            assert conn is not None
            if erase:
                conn.execute("PRAGMA secure_delete=ON")
            try:
                with self._transaction(conn):
                    action(conn)
            finally:
                if erase:
                    conn.execute("PRAGMA secure_delete=OFF")
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

    # --- writes --------------------------------------------------------------------------

    def write_batch(self, batch: Sequence[Memory]) -> None:
        """Store memories in one transaction; ids already stored are skipped.

        With semantic recall on, the memories are embedded afterwards (`idle_work`, or the
        next semantic search): the model never holds storing back.
        """

        def insert(conn: sqlite3.Connection) -> None:
            top, floor = conn.execute(_TOP_AND_FLOOR).fetchone()
            if floor is not None and int(floor) > top:
                # The newest rows were deleted: SQLite would give their seqs to these rows,
                # and a seq must keep naming one memory (vectors and readers' cursors hold
                # it). A placeholder at the old top makes the new seqs start above it.
                top = int(floor)
                conn.execute(_FLOOR_PLACEHOLDER, (top,))
                _insert_rows(conn, batch)
                conn.execute("DELETE FROM memories WHERE seq = ?", (top,))
            else:
                _insert_rows(conn, batch)
            if self.has_fts:
                # Index only the rows this batch really added (not the ignored duplicates).
                conn.execute(f"{_FTS_FILL} WHERE seq > ?", (top,))

        self._write(insert)

    def idle_work(self) -> bool:
        """Embed the next few stored memories that have no vector yet (semantic recall);
        True while more are waiting."""
        if not self.supports_semantic or time.monotonic() < self._embed_retry_at:
            return False
        chunk = _EMBED_CHUNK[self.embedder_kind]
        try:
            done = self._embed_missing(chunk)
        except Exception as exc:  # noqa: BLE001 - reported in health(), tried again later
            self._embed_failures += 1
            pause = min(60.0, 0.5 * 2 ** min(self._embed_failures, 7))
            self._embed_retry_at = time.monotonic() + pause
            if self._embed_error != str(exc):
                log.warning("%s: embedding failed, trying again later: %s", self.path, exc)
            self._embed_error = str(exc)
            return False
        self._embed_failures, self._embed_error = 0, None
        return done == chunk

    def health_reasons(self) -> list[str]:
        """Why semantic recall lags, if it does."""
        if self._embed_error is None:
            return []
        return [f"memories are stored but not embedded, retrying: {self._embed_error}"]

    def pending_embeddings(self) -> int:
        """How many stored memories have no vector yet (0 without semantic recall)."""
        if not self.supports_semantic:
            return 0
        # Every row up to the cursor has its vector: only the rows after it are counted.
        return int(
            self._read(
                "SELECT count(*) FROM memories m LEFT JOIN embeddings e ON e.seq = m.seq "
                "WHERE m.seq > ? AND e.seq IS NULL",
                (self._embedded_upto,),
            )[0][0]
        )

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep memories that could not be stored, with their errors."""
        rows = [
            (d.memory.id, _json_encode(d.memory).decode(), d.error, d.failed_at) for d in letters
        ]
        self._write(
            lambda conn: conn.executemany(
                "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?)", rows
            )
        )

    def scan(self, after: str | None, limit: int) -> list[Memory]:
        """Stored memories in id order, after the id `after`."""
        rows = self._read(
            f"SELECT {_COLUMNS} FROM memories WHERE id > ? ORDER BY id LIMIT ?",
            (after or "", limit),
        )
        return [_from_row(r) for r in rows]

    def delete(self, ids: Sequence[str]) -> None:
        """Remove memories (ids not stored are ignored), their full-text entries and vectors."""

        def remove(conn: sqlite3.Connection) -> None:
            top = conn.execute("SELECT coalesce(max(seq), 0) FROM memories").fetchone()[0]
            conn.execute(
                "INSERT OR REPLACE INTO memcollect_meta VALUES ('seq_floor', "
                "max(?, coalesce((SELECT CAST(value AS INTEGER) FROM memcollect_meta "
                "WHERE key = 'seq_floor'), 0)))",
                (top,),
            )
            # The rows' seqs, looked up once: the index, the vectors and the rows go by them.
            for memory_id in dict.fromkeys(ids):
                gone.extend(seq for (seq,) in conn.execute(_SEQ_OF_ID, (memory_id,)))
            seqs = [(seq,) for seq in gone]
            if self.has_fts:
                # An external-content index forgets a row only when told what it held.
                conn.executemany(
                    "INSERT INTO memories_fts(memories_fts, rowid, content, tags, facets) "
                    "SELECT 'delete', seq, content, tags, facets FROM memories_fts_source "
                    "WHERE seq = ?",
                    seqs,
                )
            # A seq can be given again to a new row: its vector must not outlive its memory.
            conn.executemany("DELETE FROM embeddings WHERE seq = ?", seqs)
            conn.executemany("DELETE FROM memories WHERE seq = ?", seqs)
            if gone:
                # A new count tells other processes that vectors they hold in RAM may be gone.
                conn.execute(_COUNT_DELETION)
                counted.append(conn.execute(_DELETIONS).fetchone()[0])

        gone: list[int] = []
        counted: list[int] = []
        self._write(remove, erase=True)
        self._vectors.forget(gone)
        if counted:
            self._vectors.deleted_here(counted[0])

    def remove_dead_letters(self, ids: Sequence[str]) -> None:
        """Forget dead letters."""
        params = [(i,) for i in ids]
        self._write(
            lambda conn: conn.executemany("DELETE FROM dead_letters WHERE id = ?", params),
            erase=True,
        )

    # --- reads ---------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory | None:
        """One memory by id."""
        rows = self._read(f"SELECT {_COLUMNS} FROM memories WHERE id = ?", (memory_id,))
        return _from_row(rows[0]) if rows else None

    def get_many(self, ids: Sequence[str]) -> list[Memory]:
        """The memories with these ids, in the order asked; ids not stored are left out."""
        found: dict[str, Memory] = {}
        # SQLite before 3.32 takes at most 999 parameters a statement.
        for start in range(0, len(ids), 500):
            page = ids[start : start + 500]
            marks = ",".join("?" * len(page))
            for row in self._read(f"SELECT {_COLUMNS} FROM memories WHERE id IN ({marks})", page):
                found[row[0]] = _from_row(row)
        return [found[i] for i in ids if i in found]

    def recent(self, limit: int, category: str | None = None) -> list[Memory]:
        """The newest memories first."""
        return self.search(SearchQuery(category=category, limit=limit))

    def count(self, category: str | None = None) -> int:
        """How many memories are stored."""
        if category is None:
            return int(self._read("SELECT count(*) FROM memories")[0][0])
        return int(
            self._read("SELECT count(*) FROM memories WHERE category = ?", (category,))[0][0]
        )

    def count_by_category(self) -> dict[str, int]:
        """How many memories are stored, per category."""
        rows = self._read("SELECT category, count(*) FROM memories GROUP BY category")
        return {category: int(n) for category, n in rows}

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        rows = self._read(
            "SELECT record, error, failed_at FROM dead_letters ORDER BY failed_at LIMIT ?",
            (limit,),
        )
        return [DeadLetter(_memory_decode(r[0]), r[1], r[2]) for r in rows]

    def search(self, query: SearchQuery) -> list[Memory]:
        """Full-text search ranked by BM25 (memories holding every word first), with filters;
        or by meaning (mode="semantic"), or both fused by reciprocal rank (mode="hybrid")."""
        if query.mode != "text" and query.text.strip():
            if not self.supports_semantic:
                raise ValidationError(
                    f"search mode {query.mode!r} needs embeddings: open the store with "
                    "?semantic=1 (e.g. sqlite:///memories.db?semantic=1), which needs "
                    "pip install 'memcollect[semantic]'"
                )
            if query.mode == "semantic":
                return self._semantic(query)
            return self._hybrid(query)
        return self._text(query)

    def _text(self, query: SearchQuery) -> list[Memory]:
        if not self._opened:
            self._open()  # before has_fts is read: opening is what finds the index
        where, params = _filters(query)
        text = query.text.strip()
        if not text:
            few = self._few_by_facets(query, where, params, _COLUMNS, "m.id DESC")
            if few is not None:
                return [_from_row(r) for r in few]
            sql = f"SELECT {_COLUMNS} FROM memories m{where} ORDER BY m.id DESC LIMIT ?"
            return [_from_row(r) for r in self._read(sql, [*params, query.limit])]
        if not self.has_fts:
            return self._scan(query, where, params)
        some = fts_query(text)
        if some is None:
            return []
        every = fts_all_words(text) or some
        return every_word_first(
            lambda match, limit: self._ranked(
                match, query, limit, newest=match == every and self.rank_window > 0
            ),
            every,
            some,
            query.limit,
        )

    def filtered_ids(self, query: SearchQuery) -> list[str]:
        """Ids of memories that pass the filters, in the order of delete_page_order."""
        if not self._opened:
            self._open()
        where, params = _filters(query)
        order = delete_page_order(query)
        few = self._few_by_facets(query, where, params, "m.id", f"m.seq {order}")
        if few is not None:
            return [row[0] for row in few]
        # By the (category, id) index when a category is named, else in the table's order:
        # either way no page sorts every match again.
        column = "m.id" if query.category is not None else "m.seq"
        sql = f"SELECT m.id FROM memories m{where} ORDER BY {column} {order} LIMIT ?"
        return [row[0] for row in self._read(sql, [*params, query.limit])]

    def _few_by_facets(
        self, query: SearchQuery, where: str, params: list[Any], columns: str, order: str
    ) -> list[Any] | None:
        """Rows passing filters that no index covers (project, agent, session, tags), found
        by their facet tokens; None when there are none of those filters or many memories
        hold their tokens."""
        if not (self.has_fts and (query.project or query.agent or query.session or query.tags)):
            return None
        # Reading in id or row order, a scan passes every memory before an old session's
        # (or a new one's); the index lists a rare value's few rows at once. For a common
        # value the scan finds its first rows sooner: a cheap count, capped, chooses.
        facets = " AND ".join(f'"{t}"' for t in _facet_tokens(query))
        match = f"facets : ({facets})"
        many = self._read(
            "SELECT count(*) FROM (SELECT rowid FROM memories_fts WHERE memories_fts MATCH ? "
            "LIMIT ?)",
            [match, _FEW_FACET_MATCHES + 1],
        )[0][0]
        if many > _FEW_FACET_MATCHES:
            return None
        sql = (
            f"SELECT {columns} FROM memories m{where}"
            f"{' AND' if where else ' WHERE'} m.seq IN "
            f"(SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?) ORDER BY {order} LIMIT ?"
        )
        return self._read(sql, [*params, match, query.limit])

    def _ranked(self, match: str, query: SearchQuery, limit: int, *, newest: bool) -> list[Memory]:
        """The `limit` best memories for an FTS5 MATCH expression, by BM25, with the query's
        filters; with `newest`, only the `rank_window` (or `limit`) newest matches are ranked."""
        # The user's words look in content and tags; filter values are tokens in `facets`.
        expression = f"{{content tags}} : ({match})"
        facets = _facet_tokens(query)
        if facets:
            expression += " AND facets : (" + " AND ".join(f'"{t}"' for t in facets) + ")"
        # The words are quoted, so nothing in them can reach around the facet terms.
        return self._read_ranked(expression, query, limit, newest)

    def _read_ranked(
        self, match: str, query: SearchQuery, limit: int, newest: bool
    ) -> list[Memory]:
        # Rank only (rowid, score) over the matches, then fetch whole rows for the top k:
        # sorting full rows (content, metadata) for thousands of matches costs more than bm25.
        exact = query.since is not None or query.until is not None
        where, params = _filters(query) if exact else ("", [])
        if where:
            matches = (
                "FROM memories_fts f JOIN memories m ON m.seq = f.rowid "
                f"WHERE memories_fts MATCH ?{where.replace(' WHERE', ' AND', 1)}"
            )
        else:
            matches = "FROM memories_fts f WHERE memories_fts MATCH ?"
        inner = f"SELECT f.rowid AS seq, bm25(memories_fts, 1.0, 1.0, 0.0) AS score {matches}"
        args: list[Any] = [match, *params]
        if newest:
            inner += (
                " AND f.rowid >= (SELECT coalesce(min(seq), 0) FROM "
                f"(SELECT f.rowid AS seq {matches} ORDER BY f.rowid DESC LIMIT ?))"
            )
            args += [match, *params, max(self.rank_window, limit)]
        columns = ", ".join("m." + c for c in _COLUMNS.split(", "))
        sql = (
            f"SELECT {columns} FROM ({inner} ORDER BY score, seq DESC LIMIT ?) hits "
            "JOIN memories m ON m.seq = hits.seq ORDER BY hits.score, hits.seq DESC"
        )
        rows = self._read(sql, [*args, limit])
        return [_from_row(r) for r in rows]

    def _scan(self, query: SearchQuery, where: str, params: list[Any]) -> list[Memory]:
        terms = content_terms(query.text)
        if not terms:
            return []
        like = "(m.content LIKE ? ESCAPE '\\')"
        matched = " + ".join(like for _ in terms)
        # Without the index, rank by how many of the words a memory holds, then by recency.
        sql = (
            f"SELECT {_COLUMNS} FROM memories m{where}"
            f"{' AND' if where else ' WHERE'} ({matched}) > 0 "
            f"ORDER BY ({matched}) DESC, m.id DESC LIMIT ?"
        )
        escaped = [
            "%" + t.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            for t in terms
        ]
        rows = self._read(sql, [*params, *escaped, *escaped, query.limit])
        return [_from_row(r) for r in rows]

    # --- semantic recall -----------------------------------------------------------------

    def _embed(self, texts: Sequence[str]) -> Any:
        from ..semantic import get_embedder

        try:
            embedder = get_embedder(self.model_dir, self.embedder_kind)
        except ValidationError:
            raise
        except Exception as exc:
            # The model, not any memory, is at fault: retried (health says why), never
            # dead-lettered memory by memory.
            raise TransientBackendError(
                f"the embedding model could not be loaded ({type(exc).__name__}: {exc}); "
                "fix or replace the model directory, and the memories waiting are stored"
            ) from exc
        return embedder.embed(texts)

    def _embed_missing(self, limit: int) -> int:
        """Embed up to `limit` stored memories without a vector, oldest first (written since
        the last call, by any process, or before semantic recall was on); how many."""
        with self._embedding:  # the worker or a search, one at a time
            after = self._embedded_upto
            top = self._read("SELECT coalesce(max(seq), 0) FROM memories")[0][0]
            rows = self._read(
                "SELECT m.seq, m.id, m.content, m.agent FROM memories m "
                "LEFT JOIN embeddings e ON e.seq = m.seq "
                "WHERE m.seq > ? AND m.seq <= ? AND e.seq IS NULL ORDER BY m.seq LIMIT ?",
                (after, top, limit),
            )
            if rows:
                from ..semantic import embedded_text

                vectors = self._embed(
                    [embedded_text(content, agent) for *_, content, agent in rows]
                )
                stored = [
                    (vectors[i].tobytes(), seq, memory_id)
                    for i, (seq, memory_id, *_) in enumerate(rows)
                ]
                self._write(partial(_insert_vectors, stored=stored))
                self._vectors.add_written([seq for seq, *_ in rows], vectors)
            # Every row up to here has its vector now (or had one).
            self._embedded_upto = rows[-1][0] if len(rows) == limit else top
            return len(rows)

    def _sync_vectors(self) -> None:
        """Load the vectors stored since the last call (by any process) into RAM, after
        embedding up to a search's share of the memories still without one."""
        np = numpy()

        chunk = _EMBED_CHUNK[self.embedder_kind]
        for _ in range(_SEARCH_EMBEDS_CHUNKS):
            if self._embed_missing(chunk) < chunk:
                break
        with self._vectors.loading:
            deletions = self._read(_DELETIONS)[0][0]
            if deletions != self._vectors.deletions_seen:
                if self._vectors.deletions_seen is not None:
                    # Another process deleted memories: let go of the vectors whose rows are
                    # gone. (Searches skip deleted rows anyway; this keeps RAM to what is
                    # stored.) At the first sync nothing is held yet: nothing to look for.
                    checked = self._vectors.checked_seq
                    held = self._read("SELECT seq FROM embeddings WHERE seq <= ?", (checked,))
                    self._vectors.keep_only({seq for (seq,) in held}, upto=checked)
                self._vectors.deletions_seen = deletions
            seen, upto = self._vectors.checked_seq, self._embedded_upto
            if upto <= seen:
                return
            rows = self._read(
                "SELECT m.seq, e.vector FROM memories m JOIN embeddings e ON e.seq = m.seq "
                "WHERE m.seq > ? AND m.seq <= ? ORDER BY m.seq",
                (seen, upto),
            )
            vectors = [np.frombuffer(vector, np.float32) for _, vector in rows]
            matrix = np.vstack(vectors) if vectors else None
            self._vectors.add_synced([seq for seq, _ in rows], matrix, checked=upto)

    def _semantic_seqs(self, query: SearchQuery, want: int) -> list[int]:
        """Row seqs passing the filters, nearest in meaning first."""
        np = numpy()
        self._sync_vectors()
        seqs, matrix = self._vectors.snapshot()
        if not len(seqs):
            return []
        scores = matrix @ self._embed([query.text])[0]
        where, params = _filters(query)
        found: list[int] = []
        pool = min(len(seqs), max(want * 20, 200))
        while True:
            # The nearest `pool` rows, best first, then the filters in SQL.
            top = np.argpartition(-scores, pool - 1)[:pool] if pool < len(seqs) else None
            order = top[np.argsort(-scores[top])] if top is not None else np.argsort(-scores)
            candidates = [int(seqs[i]) for i in order]
            if where or len(candidates) > want:
                marks = ",".join("?" * len(candidates))
                clause = f"{where} AND" if where else " WHERE"
                passing = {
                    r[0]
                    for r in self._read(
                        f"SELECT m.seq FROM memories m{clause} m.seq IN ({marks})",
                        [*params, *candidates],
                    )
                }
                found = [seq for seq in candidates if seq in passing]
            else:
                found = candidates
            if len(found) >= want or pool >= len(seqs):
                return found[:want]
            pool = min(len(seqs), pool * 4)

    def _rows_by_seq(self, seqs: Sequence[int]) -> list[Memory]:
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs))
        rows = self._read(f"SELECT seq, {_COLUMNS} FROM memories WHERE seq IN ({marks})", seqs)
        by_seq = {r[0]: _from_row(r[1:]) for r in rows}
        return [by_seq[seq] for seq in seqs if seq in by_seq]

    def _semantic(self, query: SearchQuery) -> list[Memory]:
        return self._rows_by_seq(self._semantic_seqs(query, query.limit))

    def _hybrid(self, query: SearchQuery) -> list[Memory]:
        """Both halves ranked in full (text: any word, by BM25; meaning: by cosine), fused
        by reciprocal rank, each hit lending weight to its session's neighbours."""
        from ..semantic import fuse

        depth = max(50, query.limit * 5)
        wide = msgspec.structs.replace(query, limit=depth)
        text_hits = self._text(wide)
        by_text = self._seqs_of(text_hits)
        by_meaning = self._semantic_seqs(wide, depth)
        near = self._session_neighbours({*by_text, *by_meaning})
        stems = query_stems(query.text)
        coverage = [word_coverage(stems, m) for m in text_hits]
        fused = fuse(
            [by_text, by_meaning], lambda seq: near.get(seq, ()), strengths=[coverage, None]
        )
        # Neighbours were found by session alone: they must pass the other filters too.
        hits = [m for m in self._rows_by_seq(fused[: depth * 2]) if query.matches(m)]
        return hits[: query.limit]

    def _seqs_of(self, memories: Sequence[Memory]) -> list[int]:
        """The row seqs of memories, in their order."""
        if not memories:
            return []
        marks = ",".join("?" * len(memories))
        rows = self._read(f"SELECT id, seq FROM memories WHERE id IN ({marks})",
                          [m.id for m in memories])  # fmt: skip
        seq_of = dict(rows)
        return [seq_of[m.id] for m in memories if m.id in seq_of]

    def _session_neighbours(self, seqs: set[int]) -> dict[int, list[int]]:
        """For each row, the rows just before and after it in its session (within
        _NEIGHBOUR_SPAN rows: farther apart, they are no neighbours)."""
        if not seqs:
            return {}
        marks = ",".join("?" * len(seqs))
        rows = self._read(
            f"SELECT m.seq, (SELECT max(p.seq) FROM memories p WHERE p.session = m.session "
            f"AND p.seq < m.seq AND p.seq >= m.seq - {_NEIGHBOUR_SPAN}), "
            f"(SELECT min(n.seq) FROM memories n WHERE n.session = m.session "
            f"AND n.seq > m.seq AND n.seq <= m.seq + {_NEIGHBOUR_SPAN}) "
            f"FROM memories m WHERE m.seq IN ({marks}) AND m.session IS NOT NULL",
            list(seqs),
        )
        return {seq: [n for n in (before, after) if n is not None] for seq, before, after in rows}

    # --- lifecycle -----------------------------------------------------------------------

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
        self._vectors = _Vectors()
        self._embedding = threading.Lock()

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


# The newest seq and the floor new seqs must stay above (set when rows were deleted).
_SEQ_OF_ID = "SELECT seq FROM memories WHERE id = ?"
_TOP_AND_FLOOR = (
    "SELECT coalesce(max(seq), 0), "
    "(SELECT value FROM memcollect_meta WHERE key = 'seq_floor') FROM memories"
)
_FLOOR_PLACEHOLDER = (
    "INSERT INTO memories (seq, id, category, content, priority, created_at) "
    "VALUES (?, char(0) || 'seq floor', '', '', 0, 0)"
)


def _insert_vectors(conn: sqlite3.Connection, stored: list[tuple[bytes, int, str]]) -> None:
    # Only beside the memory that was embedded: not if it was deleted meanwhile, nor beside
    # a new row that took its seq.
    conn.executemany(
        "INSERT OR REPLACE INTO embeddings SELECT seq, ? FROM memories WHERE seq = ? AND id = ?",
        stored,
    )


class _Vectors:
    """The embeddings in RAM: a float32 matrix that grows as batches land (amortized), read
    by searches on any thread from a consistent snapshot."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loading = threading.Lock()  # one sync with the file at a time
        self.checked_seq = 0  # every row up to here has been loaded from the file
        self._size = 0
        self._seqs: Any = None
        self._matrix: Any = None
        # Rows this process added after the last sync read the file: the next sync skips them.
        self._written: set[int] = set()
        # Rows deleted since the last compaction (their vectors are still in the matrix).
        self._forgotten: set[int] = set()
        # The file's count of deletes when this process last looked for rows deleted elsewhere.
        self.deletions_seen: int | None = None

    def add_written(self, seqs: Sequence[int], vectors: Any) -> None:
        """Rows this process just stored (nothing to do until a search has loaded the file)."""
        with self.lock:
            if self._matrix is None:
                return
            keep = [i for i, seq in enumerate(seqs) if seq > self.checked_seq]
            self._append([seqs[i] for i in keep], vectors[keep])
            self._written.update(seqs[i] for i in keep)

    def add_synced(self, seqs: Sequence[int], vectors: Any, checked: int) -> None:
        """Rows read from the file, up to seq `checked`."""
        with self.lock:
            keep = [i for i, seq in enumerate(seqs) if seq not in self._written]
            self._written = {seq for seq in self._written if seq > checked}
            if keep:
                self._append([seqs[i] for i in keep], vectors[keep])
            self.checked_seq = max(self.checked_seq, checked)

    def _append(self, seqs: Sequence[int], vectors: Any) -> None:
        np = numpy()
        need = self._size + len(seqs)
        if self._matrix is None or need > len(self._matrix):
            # Readers keep the arrays they took; the grown ones are published whole.
            old = 0 if self._matrix is None else len(self._matrix)
            capacity = max(need, old * 2, 1024)
            matrix = np.empty((capacity, vectors.shape[1]), np.float32)
            ids = np.empty(capacity, np.int64)
            if self._matrix is not None:
                matrix[: self._size] = self._matrix[: self._size]
                ids[: self._size] = self._seqs[: self._size]
            self._matrix, self._seqs = matrix, ids
        self._matrix[self._size : need] = vectors
        self._seqs[self._size : need] = seqs
        self._size = need

    def forget(self, seqs: Sequence[int]) -> None:
        """Rows deleted from the file. Their vectors leave RAM once a quarter of the rows
        are such: searches skip deleted rows anyway, and compacting costs a copy of all."""
        with self.lock:
            if self._matrix is None:
                return  # no vectors loaded (and maybe no numpy installed): nothing to forget
            np = numpy()
            self._forgotten.update(seqs)
            if len(self._forgotten) < max(1024, self._size // 4):
                return
            keep = ~np.isin(self._seqs[: self._size], np.fromiter(self._forgotten, np.int64))
            # Published whole, as when growing: readers keep the arrays they took.
            self._matrix, self._seqs = (
                self._matrix[: self._size][keep],
                self._seqs[: self._size][keep],
            )
            self._size = len(self._seqs)
            self._forgotten = set()

    def deleted_here(self, count: int) -> None:
        """This process's delete made the file's count of deletes `count`; it has forgotten
        those rows already, so when it had seen the count before, there is nothing to look
        for at the next sync."""
        with self.loading:
            if self.deletions_seen == count - 1:
                self.deletions_seen = count

    def keep_only(self, held: set[int], upto: int) -> None:
        """Forget the rows up to seq `upto` that are not in `held` (deleted elsewhere)."""
        with self.lock:
            if self._matrix is None:
                return
            np = numpy()
            mine = self._seqs[: self._size]
            mine = mine[mine <= upto]
            gone = mine[~np.isin(mine, np.fromiter(held, np.int64, len(held)))]
        if len(gone):
            self.forget(gone.tolist())

    def snapshot(self) -> tuple[Any, Any]:
        """(seqs, matrix) as of now."""
        with self.lock:
            if self._matrix is None:
                return (), None
            return self._seqs[: self._size], self._matrix[: self._size]


# Connections inherited across fork are kept referenced, never closed: closing them in the
# child could release or disturb the parent's locks on the same file.
_ABANDONED: list[sqlite3.Connection] = []


def _filters(query: SearchQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column in ("category", "project", "agent", "session"):
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"m.{column} = ?")
            params.append(value)
    if query.since is not None:
        clauses.append("m.created_at >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("m.created_at < ?")
        params.append(query.until)
    for tag in query.tags:
        clauses.append("EXISTS (SELECT 1 FROM json_each(m.tags) WHERE value = ?)")
        params.append(tag)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


# Counts deletes in the file, for other processes holding its vectors in RAM.
_DELETIONS = (
    "SELECT coalesce((SELECT CAST(value AS INTEGER) FROM memcollect_meta "
    "WHERE key = 'deletions'), 0)"
)
_COUNT_DELETION = (
    "INSERT OR REPLACE INTO memcollect_meta VALUES ('deletions', 1 + coalesce("
    "(SELECT CAST(value AS INTEGER) FROM memcollect_meta WHERE key = 'deletions'), 0))"
)
# Rows per INSERT statement. executemany() releases the GIL around each row's step and must
# win it back from the thread calling collect() every time (a wait of up to the switch
# interval); one statement of many rows releases it once, and SQLite stores those rows on
# the other core while collect() goes on.
ROWS_PER_INSERT = 256
# Up to this many memories holding a filter's facet tokens, a filter-only search reads them
# through the full-text index instead of scanning past every other row (see _few_by_facets).
_FEW_FACET_MATCHES = 2000
_ROW_PARAMS = len(_COLUMNS.split(", "))
_ROW_MARKS = "(" + ",".join("?" * _ROW_PARAMS) + ")"


def _insert_statement(rows: int) -> str:
    return f"INSERT OR IGNORE INTO memories ({_COLUMNS}) VALUES " + ",".join([_ROW_MARKS] * rows)


_INSERTS = {n: _insert_statement(n) for n in (1 << k for k in range(ROWS_PER_INSERT.bit_length()))}


def _insert_rows(conn: sqlite3.Connection, batch: Sequence[Memory]) -> None:
    """Insert memories (ids already stored are skipped), up to ROWS_PER_INSERT per statement."""
    # SQLite before 3.32 takes at most 999 parameters a statement.
    most = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _ROW_PARAMS
    encode, ranks = _json_encode, PRIORITY_RANK
    start = 0
    while start < len(batch):
        # Power-of-two sizes: a handful of statements, each prepared once and cached.
        size = ROWS_PER_INSERT
        while size > len(batch) - start or size > most:
            size //= 2
        # One flat parameter list, built row by row in place: a tuple a row flattened
        # afterwards costs twice as much, all of it holding the GIL the caller of collect()
        # is waiting for. The columns are those of _COLUMNS, in order.
        params: list[Any] = []
        add = params.extend
        for m in batch[start : start + size]:
            add(
                (
                    m.id,
                    m.category,
                    m.content,
                    encode(m.metadata).decode() if m.metadata else "{}",
                    ranks[m.priority],
                    encode(m.tags).decode() if m.tags else "[]",
                    m.project,
                    m.agent,
                    m.session,
                    m.created_at,
                    m.content_hash,
                )
            )
        conn.execute(_INSERTS[size], params)
        start += size


def _facet_tokens(query: SearchQuery) -> list[str]:
    """The `facets` tokens a memory passing the query's filters holds (time is not one)."""
    tokens = [
        prefix + value.encode().hex()
        for prefix, value in (
            ("c", query.category),
            ("p", query.project),
            ("a", query.agent),
            ("s", query.session),
        )
        if value is not None
    ]
    return tokens + ["t" + tag.encode().hex() for tag in query.tags]


def fts_all_words(text: str) -> str | None:
    """An FTS5 MATCH expression requiring every word of a query."""
    kept = content_terms(text)
    return " ".join(f'"{t}"' for t in dict.fromkeys(kept)) or None


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression for any text, as plain words: each is quoted, and they are
    OR-ed. Quotes, AND/OR/NOT, parentheses, `*` and every other character are just text, so
    no query can be malformed, and a query means what it means on every backend."""
    kept = content_terms(text)
    if not kept:
        return None
    return " OR ".join(f'"{t}"' for t in dict.fromkeys(kept))
