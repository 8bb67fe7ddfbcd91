"""postgresql:// — one store for many processes and machines (psycopg 3 + psycopg_pool)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit, urlunsplit

import msgspec

from ..errors import TransientBackendError, ValidationError
from ..groups import Group, GroupDetail, GroupQuery
from ..model import Memory
from ..query import Hit
from ..report import Summary
from ..retry import ErrorKind
from ._sql import SqlStore, run_migrations
from .base import (
    DeadLetter,
    SearchQuery,
    delete_page_order,
)
from .pggroups import GROUP_TABLES, PgGroups
from .pgrows import (
    COLUMNS,
    from_row,
    row_filters,
    to_row,
)
from .pgrows import copy_rows as _copy
from .pgstats import Upkeep
from .pgtext import PgTextSearch
from .pgvectors import PgSemantic
from .pgwatch import PoolErrors, Watchdog, one_line
from .pgwriters import WriterThreads
from .vectors import semantic_options

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.types.json import set_json_dumps
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "the postgresql:// backend needs the postgres extra: pip install 'memcollect[postgres]'"
    ) from exc

__all__ = ["PostgresBackend"]

log = logging.getLogger("memcollect")

_json_encode = msgspec.json.Encoder().encode

_ADVISORY_KEY = 0x6D656D636F6C  # "memcol": serializes schema changes across processes
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE OR REPLACE FUNCTION memcollect_words(text[]) RETURNS text
            LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT array_to_string($1, ' ') $$;
        CREATE TABLE IF NOT EXISTS memories (
            id text PRIMARY KEY,
            category text NOT NULL,
            content text NOT NULL,
            metadata jsonb NOT NULL DEFAULT '{}',
            priority smallint NOT NULL,
            tags text[] NOT NULL DEFAULT '{}',
            project text,
            agent text,
            session text,
            created_at double precision NOT NULL,
            content_hash text NOT NULL DEFAULT '',
            -- One parse of content and tags: each to_tsvector costs ~12 us a row, most of
            -- an insert's price. Tags filters use @> on the matched rows, not an index.
            search tsvector GENERATED ALWAYS AS (
                to_tsvector('english'::regconfig, content || ' ' || memcollect_words(tags))
            ) STORED
        );
        CREATE INDEX IF NOT EXISTS memories_search ON memories USING gin (search);
        CREATE INDEX IF NOT EXISTS memories_category_id ON memories (category, id);
        CREATE TABLE IF NOT EXISTS dead_letters (
            id text PRIMARY KEY,
            record jsonb NOT NULL,
            error text NOT NULL,
            failed_at double precision NOT NULL
        );
        """,
    ),
    (
        2,
        # Ids and categories compare as bytes: ids sort by time in byte order whatever the
        # database's collation, and a byte comparison costs a fraction of a locale's, which
        # every insert pays in the primary key and the category index. Indexes are rebuilt;
        # the rows are not rewritten.
        """
        ALTER TABLE memories ALTER COLUMN id TYPE text COLLATE "C",
            ALTER COLUMN category TYPE text COLLATE "C";
        """,
    ),
    (
        3,
        # Embeddings for semantic search (?semantic=1), kept beside the rows and gone with
        # them. seq orders the vectors for the processes that hold them in RAM. The queue is
        # filled by a trigger that only a store opened with ?semantic=1 creates (pgvectors).
        """
        CREATE TABLE IF NOT EXISTS embeddings (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text COLLATE "C" NOT NULL UNIQUE REFERENCES memories (id) ON DELETE CASCADE,
            vector bytea NOT NULL
        );
        CREATE TABLE IF NOT EXISTS embedding_queue (id text COLLATE "C" PRIMARY KEY);
        """,
    ),
    (
        4,
        # What groups a memory with other occurrences of the same event (memcollect.groups).
        """
        ALTER TABLE memories ADD COLUMN IF NOT EXISTS fingerprint text COLLATE "C"
            NOT NULL DEFAULT '';
        """,
    ),
    # Groups kept beside the rows, folded off the write path (pggroups).
    (5, GROUP_TABLES),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
# A batch of at least this many memories is split over `writers` connections.
WRITERS_SPLIT = 512

# The longest a constructor waits for the server: a healthy one answers in milliseconds.
OPEN_WAIT_S = 1.0
# How often a wait for a connection looks whether the server was found down meanwhile.
_WAIT_SLICE_S = 0.25
# A call is cut this long after the server's statement_timeout should have ended it.
_CUT_MARGIN_S = 2.0
_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}

_INCOMING = """
CREATE TEMP TABLE IF NOT EXISTS memcollect_incoming (
    id text, category text, content text, metadata jsonb, priority smallint, tags text[],
    project text, agent text, session text, created_at double precision, content_hash text,
    fingerprint text
) ON COMMIT DELETE ROWS
"""
_INSERT = (
    f"INSERT INTO memories ({COLUMNS}) SELECT {COLUMNS} FROM memcollect_incoming "
    "ON CONFLICT (id) DO NOTHING"
)


def _where(parts: SplitResult) -> str:
    """host:port/database of a URL, without its user or password."""
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or ''}"


class PostgresBackend(SqlStore):
    """Memories in PostgreSQL; many collectors on many hosts may share one database.

    URL options (removed before connecting): `schema=NAME` keeps the tables in a schema of
    their own (created if missing), `pool_size=N` (default 4), `pool_timeout=SECONDS` (how long
    a write waits for a connection, default 10), `writers=N` (default 2: a batch of at least
    WRITERS_SPLIT memories is split over N connections writing at once), `connect_timeout` as
    libpq has it (default 5), `statement_timeout=SECONDS` (default 30: the server cancels a
    statement running longer, and a call whose server never answers, as behind a network
    partition, is cut a little later). TCP keepalives are on, and libpq's other options
    (keepalives_idle, tcp_user_timeout, ...) pass through.
    """

    name = "postgresql"
    waits_on_server = True
    MARK = "%s"
    RECORD = "record::text"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query))
        self.schema = options.pop("schema", None)
        self.supports_semantic, kind, model_dir = semantic_options(options, url)
        options.pop("semantic", None)
        options.pop("model", None)
        self.vectors = options.pop("vectors", "auto")
        if self.vectors not in ("auto", "ram"):
            raise ValidationError(
                f"vectors={self.vectors!r} in the backend URL must be auto (pgvector where the "
                "server has it, else in RAM) or ram"
            )
        if self.schema is not None and not _SCHEMA_NAME.match(self.schema):
            raise ValidationError(
                f"schema {self.schema!r} in the backend URL must be a lowercase identifier"
            )
        try:
            self.pool_size = int(options.pop("pool_size", "4"))
            self.pool_timeout = float(options.pop("pool_timeout", "10"))
            # Two by default: a busy collector's batches use two of the server's cores.
            self.writers = int(options.pop("writers", min(2, self.pool_size)))
            self.statement_timeout = float(options.pop("statement_timeout", "30"))
            self.connect_timeout = float(options.setdefault("connect_timeout", "5"))
        except ValueError:
            raise ValidationError(
                "pool_size, pool_timeout, writers, statement_timeout and connect_timeout in "
                "the backend URL must be numbers"
            ) from None
        if not 1 <= self.writers <= self.pool_size:
            raise ValidationError(
                f"writers={self.writers} in the backend URL must be from 1 to pool_size "
                f"({self.pool_size}): each writer takes a connection of the pool"
            )
        # A dead peer is noticed within about half a minute, not the kernel's two hours.
        for key, value in _KEEPALIVES.items():
            options.setdefault(key, value)
        if self.statement_timeout > 0:
            options.setdefault("tcp_user_timeout", str(int(self.statement_timeout * 1000)))
            server_side = f"-c statement_timeout={int(self.statement_timeout * 1000)}"
            options["options"] = f"{options.get('options', '')} {server_side}".strip()
        self.where = _where(parts)
        scheme = "postgresql" if parts.scheme in ("postgres", "postgresql") else parts.scheme
        query = urlencode(options, quote_via=quote)  # libpq reads "+" as itself, not a space
        self.conninfo = urlunsplit((scheme, parts.netloc, parts.path, query, ""))
        self._pool: ConnectionPool[Any] | None = None
        self._lock = threading.Lock()
        self._migrated = False
        # Threads that write the other parts of a split batch (writers > 1), made on first use.
        self._helpers: WriterThreads | None = None
        self._watchdog = Watchdog()
        # The pool's last failed connection attempt, None once one succeeds.
        self.connect_error: str | None = None
        self._pool_name = PoolErrors.register(self, self._connect_failed)
        self._schema_lock = threading.Lock()
        self._semantic = (
            PgSemantic(kind, model_dir, self._read, self._connection, self.vectors)
            if self.supports_semantic
            else None
        )
        self._groups = PgGroups(self._read, self._connection)
        self._text = PgTextSearch(self._read)
        self._upkeep = Upkeep(self._connection, self.url)

    # --- connections ---------------------------------------------------------------------

    def _connect_failed(self, error: str) -> None:
        if error != self.connect_error:
            log.warning("PostgreSQL at %s is unreachable (%s): retrying in the background",
                        self.where, error)  # fmt: skip
        self.connect_error = error

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        self.connect_error = None
        conn.autocommit = True
        set_json_dumps(_json_encode, context=conn)
        if self.schema:
            # The schema itself is created under the migration lock: CREATE SCHEMA IF NOT
            # EXISTS races between connections.
            conn.execute(f'SET search_path TO "{self.schema}", public')

    def _get_pool(self) -> ConnectionPool[Any]:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.conninfo,
                    min_size=1,
                    max_size=self.pool_size,
                    configure=self._configure,
                    open=True,
                    timeout=self.pool_timeout,
                    name=self._pool_name,
                )
            return self._pool

    def open(self) -> None:
        """Connect, and create or migrate the schema, waiting at most OPEN_WAIT_S: a server
        that is down or slow never holds up the constructor longer (the schema is then made
        in the background, and reads and writes wait for it)."""
        self._get_pool()
        opening = threading.Thread(
            target=self._schema_at_start, name="memcollect-pg-open", daemon=True
        )
        opening.start()
        opening.join(OPEN_WAIT_S)

    def _schema_at_start(self) -> None:
        try:
            self._ensure_schema()
        except Exception as exc:  # noqa: BLE001 - checked again on first use; health says why
            log.debug("PostgreSQL schema not checked at start: %s", exc)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the pool, cut if a call on it outlasts statement_timeout."""
        pool = self._get_pool()
        deadline = time.monotonic() + self.pool_timeout
        while True:
            # In slices: once an attempt to connect has failed, the server is down, and
            # waiting out the whole pool_timeout would only hold the caller up.
            left = deadline - time.monotonic()
            try:
                conn = pool.getconn(max(0.001, min(left, _WAIT_SLICE_S)))
                break
            except PoolTimeout:
                if self.connect_error is not None or left <= _WAIT_SLICE_S:
                    raise TransientBackendError(self.unreachable()) from None
        try:
            with self._watchdog.guard(conn, self.statement_timeout + _CUT_MARGIN_S):
                yield conn
        finally:
            pool.putconn(conn)

    def unreachable(self) -> str:
        """One sentence on why no connection could be had, and what to do."""
        why = self.connect_error or f"no connection within {self.pool_timeout:g} s"
        return (
            f"PostgreSQL at {self.where} is unreachable ({why}): check that the server is "
            "running and that the backend URL is right"
        )

    def health_reasons(self) -> list[str]:
        """Whether the server could not be reached at the last try, or memories wait for
        their vectors because embedding fails."""
        reasons = [self.unreachable()] if self.connect_error is not None else []
        if self._groups.idle.error is not None and self.connect_error is None:
            reasons.append(f"memories are stored but not yet grouped, retrying: "
                           f"{self._groups.idle.error}")  # fmt: skip
        if self._semantic is not None and self._semantic.error is not None:
            reasons.append(
                f"memories are stored but not embedded, retrying: {self._semantic.error}"
            )
        return reasons

    def _ensure_schema(self) -> None:
        if self._migrated:
            return
        with self._schema_lock:
            if not self._migrated:
                self._migrate()

    def _migrate(self) -> None:
        with self._connection() as conn, conn.transaction():
            # Several collectors may start at once: one migrates, the others wait and see it.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))
            if self.schema:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            run_migrations(
                conn.execute,
                MIGRATIONS,
                "the database",
                "INSERT INTO memcollect_meta VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            self._groups.prepare(conn.execute)
            if self._semantic is not None:
                self._semantic.prepare(conn.execute)
        self._migrated = True

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            self._ensure_schema()
            with self._connection() as conn:
                rows: list[Any] = conn.execute(sql, params).fetchall()
                return rows
        except psycopg.Error as exc:
            # The driver's own words, in one sentence that says what to do.
            raise TransientBackendError(
                f"PostgreSQL at {self.where} could not answer a read "
                f"({type(exc).__name__}: {one_line(str(exc))}): try again once it is reachable"
            ) from None

    def _write(self, sql: str, params_seq: Sequence[Sequence[Any]]) -> None:
        self._ensure_schema()
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(sql, params_seq)

    # --- writes --------------------------------------------------------------------------

    def write_batch(self, batch: Sequence[Memory]) -> None:
        """COPY the batch into the table; a batch stored before goes in without duplicates."""
        self._ensure_schema()
        rows = [to_row(m) for m in batch]
        if self.writers == 1 or len(rows) < WRITERS_SPLIT:
            self._store(rows)
            return
        # One server process a connection: parts written at once use the server's other
        # cores. Each part commits alone; when one fails, the batch is retried whole, and the
        # parts already stored go through the duplicate-safe path below.
        size = -(-len(rows) // self.writers)
        parts = [rows[i : i + size] for i in range(0, len(rows), size)]
        with self._lock:
            if self._helpers is None:
                self._helpers = WriterThreads(self.writers - 1)
            helpers = self._helpers
        if not helpers.started:
            # A first split during interpreter shutdown, where no thread may start.
            for part in parts:
                self._store(part)
            return
        others = [helpers.submit(self._store, part) for part in parts[1:]]
        try:
            self._store(parts[0])
        finally:
            errors = [f.exception() for f in others]
        for error in errors:
            if error is not None:
                raise error

    def _store(self, rows: list[tuple[Any, ...]]) -> None:
        """COPY rows in one transaction, skipping ids stored before."""
        with self._connection() as conn:
            try:
                # The connection is in autocommit mode: COPY is a transaction of its own, with
                # no BEGIN and COMMIT round trips (each one a wait for the GIL afterwards).
                _copy(conn, "memories", rows)
                self._groups.idle.written()
                return
            except pg_errors.UniqueViolation:
                # A replay (a batch whose commit landed but whose answer was lost, a drain
                # after failover): COPY cannot skip rows, so this batch takes the slower path.
                pass
            with conn.transaction():
                conn.execute(_INCOMING)
                _copy(conn, "memcollect_incoming", rows)
                conn.execute(_INSERT)
            self._groups.idle.written()

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep memories that could not be stored, with their errors."""
        self._write(
            "INSERT INTO dead_letters VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
            "SET record = excluded.record, error = excluded.error, failed_at = excluded.failed_at",
            [(d.memory.id, _json_encode(d.memory).decode(), d.error, d.failed_at) for d in letters],
        )

    def remove_dead_letters(self, ids: Sequence[str]) -> None:
        """Forget dead letters."""
        self._write("DELETE FROM dead_letters WHERE id = %s", [(i,) for i in ids])

    def scan(self, after: str | None, limit: int) -> list[Memory]:
        """Stored memories in id order, after the id `after`."""
        rows = self._read(
            f"SELECT {COLUMNS} FROM memories WHERE id > %s ORDER BY id LIMIT %s",
            (after or "", limit),
        )
        return [from_row(r) for r in rows]

    def delete(self, ids: Sequence[str]) -> None:
        """Remove memories (ids not stored are ignored), their vectors, and recount their
        groups."""
        if self._semantic is not None:
            self._semantic.forget(ids)
        self._ensure_schema()
        with self._connection() as conn, conn.transaction():
            self._groups.delete(conn, ids)

    def groups(self, query: GroupQuery) -> list[Group]:
        """Groups from the kept tables."""
        return self._groups.groups(query)

    def group(
        self, fingerprint: str, limit: int = 20, before: str | None = None
    ) -> GroupDetail | None:
        """One kept group with a page of its newest members and its days."""
        return self._groups.group(fingerprint, limit, before)

    def summary(self, query: GroupQuery) -> Summary:
        """A report's summary from the kept tables (of a project or an agent: the rows)."""
        if query.project is not None or query.agent is not None:
            return super().summary(query)
        return self._groups.summary(query)

    # --- reads ---------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory | None:
        """One memory by id."""
        rows = self._read(f"SELECT {COLUMNS} FROM memories WHERE id = %s", (memory_id,))
        return from_row(rows[0]) if rows else None

    def get_many(self, ids: Sequence[str]) -> list[Memory]:
        """The memories with these ids, in the order asked; ids not stored are left out."""
        rows = self._read(f"SELECT {COLUMNS} FROM memories WHERE id = ANY(%s)", (list(ids),))
        found = {row[0]: from_row(row) for row in rows}
        return [found[i] for i in ids if i in found]

    def recent(self, limit: int, category: str | None = None) -> list[Memory]:
        """The newest memories first."""
        return self.search(SearchQuery(category=category, limit=limit))

    def filtered_ids(self, query: SearchQuery) -> list[str]:
        """Ids of memories that pass the filters, in the order of delete_page_order (by the
        primary key, or the (category, id) index)."""
        clauses, params = row_filters(query)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        order = delete_page_order(query)
        sql = f"SELECT m.id FROM memories m{where} ORDER BY m.id {order} LIMIT %s"
        return [row[0] for row in self._read(sql, [*params, query.limit])]

    def search(self, query: SearchQuery) -> list[Memory]:
        """Full-text search ranked by ts_rank_cd (memories holding every word first), with
        filters; or by meaning, or both, on a store with embeddings."""
        if self._by_meaning(query):
            return [hit.memory for hit in self.search_hits(query)]
        return self._text.search(query)

    def search_hits(self, query: SearchQuery) -> list[Hit]:
        """search(), with each hit's score: its share of the query's words, its cosine
        similarity, or in hybrid search the stronger of the two."""
        if not self._by_meaning(query):
            return super().search_hits(query)
        assert self._semantic is not None  # _by_meaning says so
        self._ensure_schema()
        if query.mode == "semantic":
            return self._semantic.semantic_hits(query)
        return self._semantic.hybrid_hits(query, self._text.search)

    def _by_meaning(self, query: SearchQuery) -> bool:
        return self._semantic is not None and query.mode != "text" and bool(query.text.strip())

    def idle_work(self) -> bool:
        """Fold the next queued rows into groups, and embed the next few queued memories
        (semantic search); True while more wait. Now and then, the table's upkeep."""
        folding = self._groups.idle.step(self._groups.fold_chunk)
        if not folding:
            self._upkeep.step()
        return (self._semantic is not None and self._semantic.idle_work()) or folding

    def pending_embeddings(self) -> int:
        """How many stored memories wait for their vector (0 without semantic search)."""
        return 0 if self._semantic is None else self._semantic.pending()

    # --- lifecycle -----------------------------------------------------------------------

    def classify(self, exc: BaseException) -> ErrorKind | None:
        """Lost connections, restarts, timeouts and conflicts pass; bad data does not."""
        if isinstance(exc, (PoolTimeout, TransientBackendError)):
            return "transient"
        if isinstance(
            exc,
            (
                pg_errors.QueryCanceled,  # statement_timeout
                pg_errors.SerializationFailure,
                pg_errors.DeadlockDetected,
                pg_errors.LockNotAvailable,
                pg_errors.AdminShutdown,
                pg_errors.CannotConnectNow,
                pg_errors.TooManyConnections,
            ),
        ):
            return "transient"
        if isinstance(exc, (psycopg.IntegrityError, psycopg.DataError)):
            return "permanent"
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return "transient"
        return super().classify(exc)

    def after_fork(self) -> None:
        """Forget the parent's pool: its connections and threads are not the child's."""
        if self._pool is not None:
            _ABANDONED.append(self._pool)
        self._pool = None
        self._lock = threading.Lock()
        self._schema_lock = threading.Lock()
        self._helpers = None  # the parent's threads do not exist here
        self._watchdog = Watchdog()
        if self._semantic is not None:
            self._semantic.after_fork()

    def close(self) -> None:
        """Close the pool."""
        with self._lock:
            pool, self._pool = self._pool, None
            helpers, self._helpers = self._helpers, None
        if helpers is not None:
            helpers.stop()
        if pool is not None:
            pool.close(timeout=5.0)


# Pools inherited across fork are kept referenced, never closed by the child.
_ABANDONED: list[Any] = []
