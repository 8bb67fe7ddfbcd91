"""sqlite:// — the embedded default: one file, WAL, FTS5 search ranked by BM25."""

from ..scoring import query_stems
from .fts import fts_all_words, fts_query
from .groups import FOLD_CHUNK
from .schema import MIGRATIONS, SCHEMA_VERSION, parse_sqlite_url
from .store import SQLiteBackend

__all__ = [
    "FOLD_CHUNK",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SQLiteBackend",
    "fts_all_words",
    "fts_query",
    "parse_sqlite_url",
    "query_stems",
]
