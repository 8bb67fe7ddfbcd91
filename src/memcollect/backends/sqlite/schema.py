"""The SQLite store's tables, their migrations, and the statements that fill and read rows."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from ...errors import ValidationError
from ...model import PRIORITIES, PRIORITY_RANK, Memory

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
    "content_hash, fingerprint"
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
MIGRATIONS.append(
    # A caller's own fingerprint (memcollect.groups); "" means one is made from the content
    # when groups are counted, off the write path.
    (5, "ALTER TABLE memories ADD COLUMN fingerprint TEXT NOT NULL DEFAULT ''"),
)
MIGRATIONS.append(
    # Groups kept in the file (backends/keptgroups.py): a narrow row a folded memory, by time
    # (its primary key) and by group, and a row a group. Rows stored before are folded on
    # first use: the watermark starts at 0.
    (
        6,
        """
        CREATE TABLE IF NOT EXISTS group_members (
            created_at REAL NOT NULL,
            member INTEGER NOT NULL,
            group_key TEXT NOT NULL,
            category TEXT NOT NULL,
            project TEXT,
            agent TEXT,
            priority INTEGER NOT NULL,
            PRIMARY KEY (created_at, member)
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS group_members_by_key ON group_members (group_key, created_at);
        CREATE TABLE IF NOT EXISTS groups (
            fingerprint TEXT PRIMARY KEY,
            category TEXT NOT NULL,
            representative INTEGER NOT NULL,
            priority INTEGER NOT NULL,
            count INTEGER NOT NULL,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS groups_by_count ON groups (count DESC, fingerprint);
        CREATE INDEX IF NOT EXISTS groups_by_first_seen ON groups (first_seen DESC);
        INSERT OR REPLACE INTO memcollect_meta VALUES ('groups_upto', '0')
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
        row[11],
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


# Counts deletes in the file, for other processes holding its vectors in RAM.
_DELETIONS = (
    "SELECT coalesce((SELECT CAST(value AS INTEGER) FROM memcollect_meta "
    "WHERE key = 'deletions'), 0)"
)


_COUNT_DELETION = (
    "INSERT OR REPLACE INTO memcollect_meta VALUES ('deletions', 1 + coalesce("
    "(SELECT CAST(value AS INTEGER) FROM memcollect_meta WHERE key = 'deletions'), 0))"
)


# Rows per INSERT statement. Each statement releases the GIL while SQLite steps it, and must
# win it back from the thread calling collect(): a wait of up to the switch interval (5 ms),
# whatever the statement's size. A whole batch in one statement waits once; 256 rows a
# statement stored half as many rows a second while collect() was being called (alone, the
# big statement is ~5% slower to bind: bench/collect.py's floor keeps 256).
ROWS_PER_INSERT = 2048


_ROW_PARAMS = len(_COLUMNS.split(", "))


_ROW_MARKS = "(" + ",".join("?" * _ROW_PARAMS) + ")"


def _insert_statement(rows: int) -> str:
    return f"INSERT OR IGNORE INTO memories ({_COLUMNS}) VALUES " + ",".join([_ROW_MARKS] * rows)


_INSERTS = {n: _insert_statement(n) for n in (1 << k for k in range(ROWS_PER_INSERT.bit_length()))}


def _insert_rows(
    conn: sqlite3.Connection, batch: Sequence[Memory], per_statement: int = ROWS_PER_INSERT
) -> None:
    """Insert memories (ids already stored are skipped), up to `per_statement` a statement."""
    # SQLite before 3.32 takes at most 999 parameters a statement.
    most = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _ROW_PARAMS
    encode, ranks = _json_encode, PRIORITY_RANK
    start = 0
    while start < len(batch):
        # Power-of-two sizes: a handful of statements, each prepared once and cached.
        size = per_statement
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
                    m.fingerprint,
                )
            )
        conn.execute(_INSERTS[size], params)
        start += size
