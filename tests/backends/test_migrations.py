"""Schema migrations: a version-1 database is upgraded in place, rows and all."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from memcollect.backends.base import SearchQuery
from memcollect.backends.sqlite import SCHEMA_VERSION, SQLiteBackend

V1_FTS = """CREATE VIRTUAL TABLE memories_fts USING fts5(content, tags, content='memories',
content_rowid='seq', tokenize='unicode61 remove_diacritics 2')"""


def test_a_version_1_database_gains_stemming_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        from memcollect.backends.sqlite import MIGRATIONS

        conn.executescript(MIGRATIONS[0][1])
        conn.execute(V1_FTS)
        conn.execute("CREATE TABLE memcollect_meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO memcollect_meta VALUES ('schema_version', '1')")
        conn.execute(
            "INSERT INTO memories (id, category, content, priority, created_at) VALUES "
            "('01aaaaaaaaaaaaaaaaaaaaaaaa', 'bug', 'Login fails after password reset', 2, 1.0)"
        )
        conn.execute("INSERT INTO memories_fts(memories_fts) VALUES ('rebuild')")
    store = SQLiteBackend(f"sqlite:///{path}")
    store.open()
    hits = store.search(SearchQuery(text="resetting passwords"))
    assert [m.content for m in hits] == ["Login fails after password reset"]
    store.close()
    with sqlite3.connect(path) as conn:
        version = conn.execute("SELECT value FROM memcollect_meta WHERE key='schema_version'")
        assert int(version.fetchone()[0]) == SCHEMA_VERSION == 3
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 0
