"""What only the SQLite backend does: FTS syntax, migrations, concurrency, error classes."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import memcollect as mc
from memcollect.backends.base import SearchQuery
from memcollect.backends.sqlite import SCHEMA_VERSION, SQLiteBackend, fts_query

from ..conftest import wait_for
from .test_conformance import check_delete_pages_start_where_their_rows_are, mem


@pytest.fixture
def store(tmp_path: Path) -> SQLiteBackend:
    backend = SQLiteBackend(f"sqlite:///{tmp_path}/s.db")
    backend.open()
    return backend


@pytest.mark.parametrize("query", ['"unbalanced', "safari AND", "(login OR", "NOT", "saf*"])
def test_what_was_fts_syntax_is_plain_words(store: SQLiteBackend, query: str) -> None:
    """Quotes, operators and `*` are text: no query is malformed."""
    store.write_batch([mem("login fails on safari"), mem("unbalanced not saf")])
    hits = store.search(SearchQuery(text=query))
    words = {w.lower() for w in query.replace('"', " ").replace("(", " ").replace("*", " ").split()}
    assert hits and all(words & set(h.content.split()) for h in hits), (query, hits)
    store.close()


def test_plain_text_with_punctuation_never_fails(store: SQLiteBackend) -> None:
    store.write_batch([mem("KeyError 'user_id' in webhook handler (checkout)")])
    for text in ["KeyError: 'user_id'?", "what's wrong with checkout-api", "a:b c.d", "-x +y"]:
        store.search(SearchQuery(text=text))
    hits = store.search(SearchQuery(text="KeyError: 'user_id'?"))
    assert [h.content for h in hits] == ["KeyError 'user_id' in webhook handler (checkout)"]
    store.close()


def test_operators_are_words_not_syntax(store: SQLiteBackend) -> None:
    store.write_batch([mem("login fails on safari"), mem("login works on chrome")])
    hits = store.search(SearchQuery(text="login AND safari"))
    assert hits[0].content == "login fails on safari"  # holds both words
    hits = store.search(SearchQuery(text="login NOT working"))
    assert {h.content for h in hits} == {"login fails on safari", "login works on chrome"}
    store.close()


def test_plain_queries_are_quoted_and_ored() -> None:
    assert fts_query("Safari login") == '"safari" OR "login"'
    assert fts_query("the of and") == '"the" OR "of" OR "and"'  # only stopwords: keep them
    assert fts_query("the login") == '"login"'
    assert fts_query("?!") is None
    assert fts_query('he said "hi') == '"he" OR "said" OR "hi"'
    assert fts_query("Safari AND") == '"safari"'


def test_schema_version_is_recorded_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    first = SQLiteBackend(f"sqlite:///{path}")
    first.open()
    first.close()
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT value FROM memcollect_meta WHERE key='schema_version'")
        assert int(row.fetchone()[0]) == SCHEMA_VERSION
        conn.execute("UPDATE memcollect_meta SET value='999' WHERE key='schema_version'")
    with pytest.raises(mc.ValidationError, match="upgrade memcollect"):
        SQLiteBackend(f"sqlite:///{path}").open()


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("junk.db", "cannot be opened: it is not a SQLite database (file is not a database): "
                    "name a new file or a memcollect store"),
        ("a-directory", "cannot be opened (unable to open database file): check that the path "
                        "names a file, not a directory"),
        ("junk.db/store.db", "cannot be opened: its directory {tmp}/junk.db cannot be made "
                             "(File exists): name a file in a directory this process can write"),
    ],
    ids=["not-a-database", "a-directory", "a-file-for-its-directory"],
)  # fmt: skip
def test_a_file_that_cannot_be_the_store_is_one_sentence_at_start(
    tmp_path: Path, name: str, said: str
) -> None:
    (tmp_path / "junk.db").write_bytes(b"not a database, " * 64)
    (tmp_path / "a-directory").mkdir()
    path = tmp_path / name
    with pytest.raises(mc.BackendError) as raised:
        mc.MemoryCollector(f"sqlite:///{path}", data_dir=str(tmp_path / "d"), durability="memory")
    message = str(raised.value)
    assert message.startswith(f"the SQLite store {path} " + said.format(tmp=tmp_path)), message
    assert "\n" not in message and "Traceback" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_fts_index_is_built_for_existing_rows_when_turned_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/late.db"
    plain = SQLiteBackend(url + "?fts=0")
    plain.open()
    plain.write_batch([mem("written before the index existed")])
    plain.close()
    indexed = SQLiteBackend(url)
    indexed.open()
    assert [m.content for m in indexed.search(SearchQuery(text="index existed"))] == [
        "written before the index existed"
    ]
    indexed.close()


def test_duplicate_writes_do_not_duplicate_the_index(store: SQLiteBackend) -> None:
    m = mem("indexed once")
    store.write_batch([m])
    store.write_batch([m])
    assert len(store.search(SearchQuery(text="indexed"))) == 1
    store.close()


def test_deleted_memories_leave_the_index_filters_and_all(store: SQLiteBackend) -> None:
    kept, gone = mem("moved away", project="p", tags=["t"]), mem("moved away", project="p")
    store.write_batch([kept, gone])
    store.delete([gone.id])
    assert store.search(SearchQuery(text="moved", project="p")) == [kept]
    store.close()
    with sqlite3.connect(store.path) as conn:
        # An external-content index keeps a deleted row's tokens unless told them exactly.
        for match in ("moved", 'facets : "p70"'):
            rows = conn.execute(
                "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?", [match]
            )
            assert len(rows.fetchall()) == 1, match
        conn.execute("INSERT INTO memories_fts(memories_fts) VALUES ('integrity-check')")


def test_when_many_hold_every_word_the_newest_are_ranked(tmp_path: Path) -> None:
    store = SQLiteBackend(f"sqlite:///{tmp_path}/w.db?rank_window=20")
    # The oldest is the best BM25 match (shortest); 30 newer ones hold every word too.
    best = mem("disk full")
    newer = [mem(f"disk full on volume {i} of the cluster, again") for i in range(30)]
    store.write_batch([best])
    store.write_batch(newer)
    hits = store.search(SearchQuery(text="disk full", limit=10))
    assert len(hits) == 10
    assert best not in hits
    assert {m.id for m in hits} <= {m.id for m in newer[-20:]}
    # A limit beyond the window ranks that many of the newest.
    assert len(store.search(SearchQuery(text="disk full", limit=31))) == 31
    store.close()
    # With fewer holders than the window, or a window of 0, every one of them is ranked.
    for window in ("1000", "0"):
        exact = SQLiteBackend(f"sqlite:///{tmp_path}/w.db?rank_window={window}")
        assert exact.search(SearchQuery(text="disk full", limit=1)) == [best]
        exact.close()


def test_memories_holding_some_word_are_ranked_in_a_wider_window(tmp_path: Path) -> None:
    """A word that a tenth of a million memories hold made ranking them all take 80 ms:
    those holding some word are ranked among the newest ANY_WORD_WINDOW x rank_window."""
    from memcollect.backends.sqlite.fts import ANY_WORD_WINDOW

    store = SQLiteBackend(f"sqlite:///{tmp_path}/w.db?rank_window=5")
    window = 5 * ANY_WORD_WINDOW
    best = mem("volume")  # the best BM25 match for "volume cluster", and the oldest
    newer = [mem(f"volume {i} of the cluster was resized") for i in range(3 * window)]
    store.write_batch([best])
    store.write_batch(newer)
    # No memory holds both words of "volume corrupted", and "volume" is no rare word here.
    hits = store.search(SearchQuery(text="volume corrupted", limit=5))
    assert len(hits) == 5 and best not in hits
    assert {m.id for m in hits} <= {m.id for m in newer[-window:]}
    store.close()
    exact = SQLiteBackend(f"sqlite:///{tmp_path}/w.db?rank_window=0")
    assert exact.search(SearchQuery(text="volume corrupted", limit=1)) == [best]
    exact.close()


@pytest.mark.parametrize("window", ["-1", "many", "2.5"])
def test_a_bad_rank_window_is_named(tmp_path: Path, window: str) -> None:
    with pytest.raises(mc.ValidationError, match="rank_window"):
        SQLiteBackend(f"sqlite:///{tmp_path}/w.db?rank_window={window}")


def test_a_rare_word_is_found_under_many_newer_common_ones(tmp_path: Path) -> None:
    store = SQLiteBackend(f"sqlite:///{tmp_path}/w.db?rank_window=20")
    rare = mem("psycopg pool exhausted")
    store.write_batch([rare])
    store.write_batch([mem(f"request timeout number {i}") for i in range(300)])
    # Nobody holds both words, and far more than the window of newest matches hold the
    # common one: every holder of the rare word is ranked too, and the oldest is the best.
    assert store.search(SearchQuery(text="psycopg timeout", limit=1)) == [rare]
    assert len(store.search(SearchQuery(text="psycopg timeout", limit=50))) == 50
    store.close()


def test_concurrent_migration_and_writers_on_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db?busy_timeout=30"
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            backend = SQLiteBackend(url)
            backend.open()
            for i in range(20):
                backend.write_batch([mem(f"w{n} b{i} r{j}") for j in range(10)])
            backend.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check = SQLiteBackend(url)
    assert check.count() == 6 * 20 * 10
    check.close()


def test_connections_creating_one_file_at_once_all_open_it(tmp_path: Path) -> None:
    # Switching a new file to WAL answers "database is locked" at once, without SQLite's busy
    # handler, while another connection is creating the file too (about 1 file in 10 here
    # with 4 writers): opening must wait for it, within busy_timeout, as writes do.
    errors: list[BaseException] = []

    def writer(path: Path, n: int) -> None:
        try:
            backend = SQLiteBackend(f"sqlite:///{path}?busy_timeout=30")
            backend.open()
            for i in range(2):
                backend.write_batch([mem(f"writer {n} batch {i}")])
            backend.close()
        except BaseException as exc:
            errors.append(exc)

    for attempt in range(100):
        path = tmp_path / f"new-{attempt}.db"
        threads = [threading.Thread(target=writer, args=(path, n)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM memories").fetchone()[0] == 8
        conn.close()


def test_error_classification(store: SQLiteBackend) -> None:
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5  # type: ignore[attr-defined]
    assert store.classify(busy) == "transient"
    generic = sqlite3.OperationalError("no such table: memories")
    generic.sqlite_errorcode = 1  # type: ignore[attr-defined]
    assert store.classify(generic) is None
    assert store.classify(sqlite3.IntegrityError("NOT NULL")) == "permanent"
    assert store.classify(mc.TransientBackendError("x")) == "transient"
    store.close()


def test_bad_url_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(mc.ValidationError, match="unknown sqlite option 'ftz'"):
        SQLiteBackend(f"sqlite:///{tmp_path}/x.db?ftz=0")
    with pytest.raises(mc.ValidationError, match="busy_timeout"):
        SQLiteBackend(f"sqlite:///{tmp_path}/x.db?busy_timeout=soon")


def test_background_checkpoints_copy_the_log_into_the_file_from_their_own_thread(
    tmp_path: Path,
) -> None:
    with pytest.raises(mc.ValidationError, match=r"checkpoint .* must be inline or background"):
        SQLiteBackend(f"sqlite:///{tmp_path}/x.db?checkpoint=later")
    path = tmp_path / "x.db"
    store = SQLiteBackend(f"sqlite:///{path}?checkpoint=background")
    store.open()
    assert store._writer is not None
    # The writer's commits never checkpoint: only the thread copies the log into the file.
    assert store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    empty = path.stat().st_size
    for n in range(20):
        store.write_batch([mem(f"batch {n} row {i} " * 8) for i in range(200)])
    assert wait_for(lambda: path.stat().st_size > empty + 400_000)
    assert store.count() == 4000
    store.close()
    names = [t.name for t in threading.enumerate()]
    assert "memcollect-checkpoint" not in names


@pytest.mark.parametrize("size", [1, 255, 256, 257, 1000])
def test_a_batch_of_any_size_is_stored_once_in_order(store: SQLiteBackend, size: int) -> None:
    assert store._writer is not None
    # As on SQLite before 3.32: at most 999 parameters a statement (90 rows of 11).
    store._writer.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    batch = [mem(f"row {i}") for i in range(size)]
    store.write_batch(batch[: size // 2])
    store.write_batch(batch)  # the first half again: skipped, not stored twice
    assert store.count() == size
    with sqlite3.connect(store.path) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM memories ORDER BY seq")]
    assert ids == [m.id for m in batch]
    assert len(store.search(SearchQuery(text="row", limit=2000))) == size


def test_a_seq_names_one_memory_for_good_even_after_the_newest_are_deleted(
    store: SQLiteBackend, tmp_path: Path
) -> None:
    def seqs(backend: SQLiteBackend) -> dict[str, int]:
        return {content: seq for seq, content in backend._read("SELECT seq, content FROM memories")}

    store.write_batch([mem(content=f"first {i}") for i in range(3)])
    store.delete([m.id for m in store.recent(3)])  # the table is empty again
    store.write_batch([mem(content="second")])
    assert seqs(store) == {"second": 4}  # not 1 again
    other = SQLiteBackend(store.url)  # another process deletes the newest
    other.open()
    other.write_batch([mem(content="third")])
    other.delete([m.id for m in other.recent(1)])
    store.write_batch([mem(content="fourth")])
    assert seqs(store) == {"second": 4, "fourth": 6}
    assert store.count() == 2  # the placeholder that lifted the seqs is gone
    assert [m.content for m in store.search(SearchQuery(text="fourth"))] == ["fourth"]
    other.close()


def test_a_delete_beside_a_reader_holding_old_pages_completes_and_keeps_settings(
    tmp_path: Path,
) -> None:
    store = SQLiteBackend(f"sqlite:///{tmp_path}/held.db?busy_timeout=7")
    store.open()
    memories = [mem(f"note {i}") for i in range(20)]
    store.write_batch(memories)
    reader = sqlite3.connect(tmp_path / "held.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM memories").fetchone()  # a snapshot held open
    try:
        store.delete([memories[0].id])
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert store.get(memories[0].id) is None and store.count() == 19
    # The log truncation waits briefly for such a reader; the store's own timeout is back.
    assert store._writer.execute("PRAGMA busy_timeout").fetchone() == (7000,)  # type: ignore[union-attr]
    store.close()


def test_a_delete_page_starts_at_the_end_its_rows_are(tmp_path: Path) -> None:
    store = SQLiteBackend(f"sqlite:///{tmp_path}/m.db")
    store.open()
    check_delete_pages_start_where_their_rows_are(store)
    store.close()


def test_filter_only_search_is_newest_first_by_id_for_rare_and_common_values(
    tmp_path: Path,
) -> None:
    # A rare value (an old session) is read through its facet tokens, a common one by a scan
    # from the newest row: the same answers either way, newest first by id.
    store = SQLiteBackend(f"sqlite:///{tmp_path}/m.db")
    store.open()
    old_session = [mem(f"old {i}", session="s-old", tags=["x"]) for i in range(30)]
    common = [mem(f"common {i}", agent="busy") for i in range(2100)]
    store.write_batch(old_session + common)
    # Stored last but made first (an import): its id, not its row, says where it goes.
    imported = mem("imported", session="s-old", agent="busy")
    imported.id = "00" + imported.id[2:]
    store.write_batch([imported])
    newest_first = sorted([*old_session, imported], key=lambda m: m.id, reverse=True)
    assert store.search(SearchQuery(session="s-old", limit=10)) == newest_first[:10]
    assert store.search(SearchQuery(session="s-old", limit=100))[-1] == imported
    busy = sorted([*common, imported], key=lambda m: m.id, reverse=True)
    assert store.search(SearchQuery(agent="busy", limit=5)) == busy[:5]
    # The exact filters still apply on the facet path: time, and every tag.
    cut = old_session[10].created_at
    since_cut = [m for m in newest_first if m.created_at >= cut]
    assert store.search(SearchQuery(session="s-old", since=cut, limit=100)) == since_cut
    assert store.search(SearchQuery(session="s-old", tags=("x",), limit=100)) == [
        m for m in newest_first if m is not imported
    ]
    assert store.search(SearchQuery(session="s-old", agent="busy", limit=100)) == [imported]
    assert store.search(SearchQuery(session="s-none", limit=100)) == []
    store.close()


def _sqlite_heap() -> Callable[[], int] | None:
    """SQLite's own count of the heap it holds, when Python's sqlite3 uses the shared library."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("sqlite3")
    if name is None:
        return None
    lib = ctypes.CDLL(name)
    lib.sqlite3_libversion.restype = ctypes.c_char_p
    if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        return None  # Python carries its own copy: the library's count is not its
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return lambda: int(lib.sqlite3_memory_used())


def test_an_idle_store_lets_go_of_what_a_burst_needed(store: SQLiteBackend) -> None:
    heap = _sqlite_heap()
    if heap is None:
        pytest.skip("Python's sqlite3 does not use the shared libsqlite3 here: no heap count")
    writer = store._writer
    store.write_batch([mem(f"burst {i} of many rows") for i in range(3000)])
    after_burst = heap()
    store.release_memory()
    # The inserts of 2,048 rows and more were prepared on a connection now closed.
    assert store._writer is not writer
    assert heap() < after_burst - 4_000_000
    # The fresh writer stores on, and a trickle of small batches keeps it.
    store.write_batch([mem("one more, afterwards")])
    writer = store._writer
    store.release_memory()
    assert store._writer is writer
    assert store.count() == 3001
    assert len(store.search(SearchQuery(text="burst", limit=5000))) == 3000


def test_the_collector_lets_go_once_idle(tmp_path: Path) -> None:
    heap = _sqlite_heap()
    if heap is None:
        pytest.skip("Python's sqlite3 does not use the shared libsqlite3 here: no heap count")
    c = mc.MemoryCollector(f"sqlite:///{tmp_path}/c.db", storer="thread")
    try:
        c.collect_batch([{"category": "note", "content": f"note {i}"} for i in range(5000)])
        assert c.flush(30)
        backend = c._backend
        assert isinstance(backend, SQLiteBackend)
        # Once the groups are folded the worker is idle and renews its writer.
        assert wait_for(lambda: not backend._renew_writer)
        c.collect("note", "one more")
        assert c.flush(30)
        assert c.count() == 5001
    finally:
        c.close()


def test_a_fold_in_a_quiet_moment_is_sized_by_how_long_it_has_been_quiet(
    store: SQLiteBackend,
) -> None:
    import time

    def folded() -> int:
        return int(store._read("SELECT count(*) FROM group_members")[0][0])

    store.write_batch([mem(f"event {i} happened") for i in range(1000)])
    # Just written, folding dear: the least a quiet moment folds, and more is waiting.
    store._fold_cost_s = 1.0
    assert store.idle_work() is True
    assert folded() == 256
    # Quiet for an hour, folding cheap: the rest at once.
    store._last_write, store._fold_cost_s = time.monotonic() - 3600, 1e-3
    assert store.idle_work() is False
    assert folded() == 1000
    # What a fold of many rows cost is what the next fold is sized by.
    assert store._fold_cost_s < 1e-3
    # A read of groups folds whatever is left, however recent the rows.
    store.write_batch([mem(f"later event {i}") for i in range(300)])
    store._fold_cost_s = 1.0
    assert store.idle_work() is True and folded() == 1256
    store.fold_groups()
    assert folded() == 1300
