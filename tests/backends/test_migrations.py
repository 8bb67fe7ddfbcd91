"""Schema migrations: databases of earlier versions are upgraded in place, rows and all."""

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
        assert int(version.fetchone()[0]) == SCHEMA_VERSION == 6
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 0


V3_FTS = """CREATE VIRTUAL TABLE memories_fts USING fts5(content, tags, content='memories',
content_rowid='seq', tokenize='porter unicode61 remove_diacritics 2')"""


def test_a_version_3_database_gains_filter_tokens_and_keeps_its_rows(tmp_path: Path) -> None:
    from memcollect.backends.sqlite import MIGRATIONS

    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as conn:
        for number, ddl in MIGRATIONS:
            if number <= 3:
                conn.executescript(ddl)
        conn.execute(V3_FTS)
        conn.execute("CREATE TABLE memcollect_meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO memcollect_meta VALUES ('schema_version', '3')")
        conn.executemany(
            "INSERT INTO memories (id, category, content, priority, tags, project, created_at) "
            "VALUES (?, ?, 'Checkout times out', 2, ?, ?, 1.0)",
            [
                ("01aaaaaaaaaaaaaaaaaaaaaaaa", "bug", '["pay"]', "shop"),
                ("01aaaaaaaaaaaaaaaaaaaaaaab", "error", '["ui"]', "blog"),
            ],
        )
        conn.execute("INSERT INTO memories_fts(memories_fts) VALUES ('rebuild')")
    store = SQLiteBackend(f"sqlite:///{path}")
    store.open()

    def found(**filters: object) -> list[str]:
        query = SearchQuery(text="checkout timeout", **filters)  # type: ignore[arg-type]
        return [m.id[-1] for m in store.search(query)]

    assert sorted(found()) == ["a", "b"]
    assert found(category="bug") == ["a"]
    assert found(tags=("ui",), project="blog") == ["b"]
    # The filter tokens are in the index itself, not only checked on the rows.
    with sqlite3.connect(path) as conn:
        hits = conn.execute(
            "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?",
            ['facets : "c' + b"bug".hex() + '"'],
        ).fetchall()
        assert len(hits) == 1
    store.close()
