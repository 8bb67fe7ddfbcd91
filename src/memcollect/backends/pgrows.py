"""PostgreSQL rows: the columns, a memory as a row and back, COPY, and the search's SQL
parts (shared by the store and its semantic search)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ..model import PRIORITIES, PRIORITY_RANK, Memory
from ..query import SearchQuery
from ._sql import filter_clauses
from .base import content_terms

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "COLUMNS",
    "copy_rows",
    "from_row",
    "row_filters",
    "to_row",
    "websearch_all_words",
    "websearch_text",
]

COLUMNS = (
    "id, category, content, metadata, priority, tags, project, agent, session, created_at, "
    "content_hash, fingerprint"
)


_json_encode = msgspec.json.Encoder().encode
# PostgreSQL's binary form of a text[]: dimensions, a null flag, the element type (text), then
# the length and lower bound of its one dimension, then each element's length and bytes.
_TEXT_OID = 25
_ARRAY_HEADER = struct.Struct("!iiIii")
_EMPTY_ARRAY = struct.pack("!iiI", 0, 0, _TEXT_OID)  # no dimensions


def _text_array(tags: tuple[str, ...]) -> bytes:
    if not tags:
        return _EMPTY_ARRAY
    parts = [_ARRAY_HEADER.pack(1, 0, _TEXT_OID, len(tags), 1)]
    for tag in tags:
        data = tag.encode()
        parts += (len(data).to_bytes(4, "big"), data)
    return b"".join(parts)


def to_row(m: Memory) -> tuple[Any, ...]:
    """A memory as a row for copy_rows()."""
    # metadata and tags in the binary form the server reads for jsonb and text[], made here:
    # psycopg's dumpers for them cost a third of the client's time a row.
    return (
        m.id,
        m.category,
        m.content,
        b"\x01" + _json_encode(m.metadata),  # jsonb's binary form: a version, then the JSON
        PRIORITY_RANK[m.priority],
        _text_array(m.tags),
        m.project,
        m.agent,
        m.session,
        m.created_at,
        m.content_hash,
        m.fingerprint,
    )


# bytea: the two columns' binary forms go through as they are.
_COPY_TYPES = [
    "text", "text", "text", "bytea", "int2", "bytea", "text", "text", "text", "float8", "text",
    "text",
]  # fmt: skip


def copy_rows(conn: psycopg.Connection[Any], table: str, rows: list[tuple[Any, ...]]) -> None:
    # Straight into the memories table, the server parses each row once and writes it once:
    # a third less time a row than through the temporary table.
    with (
        conn.cursor() as cur,
        cur.copy(f"COPY {table} ({COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        # Binary rows cost the collector a quarter to a half less CPU than text rows.
        copy.set_types(_COPY_TYPES)
        for row in rows:
            copy.write_row(row)


def from_row(row: Sequence[Any]) -> Memory:
    return Memory(
        row[0], row[1], row[2], row[3], PRIORITIES[row[4]], tuple(row[5]),
        row[6], row[7], row[8], row[9], row[10], row[11],
    )  # fmt: skip


def websearch_text(text: str) -> str:
    """What to give websearch_to_tsquery for any text: its plain words, OR-ed (quotes, "-"
    and "or" are just text here, as on every backend)."""
    return " or ".join(dict.fromkeys(content_terms(text)))


def websearch_all_words(text: str) -> str | None:
    """What to give websearch_to_tsquery to require every plain word of a query."""
    return " ".join(dict.fromkeys(content_terms(text))) or None


def row_filters(query: SearchQuery) -> tuple[list[str], list[Any]]:
    return filter_clauses(query, "%s", lambda tags: (["m.tags @> %s"], [list(tags)]))
