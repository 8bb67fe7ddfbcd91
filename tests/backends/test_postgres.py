"""What only the PostgreSQL backend does: real poison rows, killed sessions, error classes."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import errors as pg_errors

import memcollect as mc
from memcollect.backends.base import SearchQuery
from memcollect.backends.pgrows import websearch_all_words, websearch_text
from memcollect.backends.postgres import PostgresBackend
from memcollect.validate import make_memory

from ..conftest import wait_for
from ..services import POSTGRES_URL, TcpProxy, drop_schema, free_port, require_postgres
from .test_conformance import check_delete_pages_start_where_their_rows_are


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL to a schema of this test's own, dropped afterwards."""
    base = require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{base}?schema={schema}&pool_timeout=2"
    drop_schema(schema)


def schema_of(url: str) -> str:
    return url.split("schema=")[1].split("&", maxsplit=1)[0]


def test_collector_on_postgres_stores_and_recalls(pg_url: str, tmp_path: Path) -> None:
    with mc.MemoryCollector(pg_url, data_dir=str(tmp_path)) as c:
        ids = c.collect_batch(
            [
                {"category": "bug", "content": f"checkout fails on firefox {i}", "tags": ["web"]}
                for i in range(500)
            ]
        )
        c.collect("decision", "Use PostgreSQL once many hosts write", project="infra")
        assert c.flush(timeout=30)
        assert c.count() == 501 and c.count("bug") == 500
        assert len(c.search("firefox checkout", tags=["web"], limit=1000)) == 500
        assert [m.project for m in c.search("postgresql hosts")] == ["infra"]
        assert c.get(ids[0]) is not None


tag_texts = st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t)
# Floats written with an exponent that are whole numbers (1e+17) come back from jsonb as ints,
# however they are sent: kept to the range written without one.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(-1e12, 1e12, allow_subnormal=False) | st.text().filter(lambda t: "\x00" not in t),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tag_texts, inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(tag_texts, max_size=5, unique=True), min_size=1, max_size=6),
    st.dictionaries(tag_texts, json_values, max_size=5),
)
def test_tags_and_metadata_copied_in_their_binary_forms_read_back_as_written(
    tag_lists: list[list[str]], metadata: dict[str, object]
) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    backend = PostgresBackend(f"{require_postgres()}?schema={schema}")
    try:
        backend.open()
        written = [
            make_memory("note", f"row {i}", metadata, None, tags or None, None, None, None,
                        1 << 16)
            for i, tags in enumerate(tag_lists)
        ]  # fmt: skip
        backend.write_batch(written)
        assert backend.get_many([m.id for m in written]) == written
    finally:
        backend.close()
        drop_schema(schema)


def test_a_row_postgres_refuses_is_dead_lettered_alone(pg_url: str, tmp_path: Path) -> None:
    schema = schema_of(pg_url)
    with mc.MemoryCollector(pg_url, data_dir=str(tmp_path), batch_timeout=1.0) as c:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(
                f'ALTER TABLE "{schema}".memories ADD CONSTRAINT no_poison '
                "CHECK (content <> 'poison')"
            )
        c.collect_batch(
            [
                {"category": "note", "content": "poison" if i == 17 else f"good {i}"}
                for i in range(40)
            ]
        )
        assert c.flush(timeout=30)
        assert c.count() == 39
        letters = c.dead_letters()
        assert [d.memory.content for d in letters] == ["poison"]
        assert "CheckViolation" in letters[0].error


def test_killed_sessions_are_retried_without_loss(pg_url: str, tmp_path: Path) -> None:
    # Only this test's sessions are killed: the other tests run at the same time.
    name = f"killed-{tmp_path.name[-20:]}"
    url = f"{pg_url}&application_name={name}"
    with mc.MemoryCollector(url, data_dir=str(tmp_path), retry_base=0.01, retry_max=0.2) as c:
        c.collect("note", "warm up the pool")
        assert c.flush(timeout=30)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                (name,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        ids = [c.collect("error", f"after the kill {i}") for i in range(200)]
        assert c.flush(timeout=30)
        assert {m.id for m in c.search("kill", limit=1000)} == set(ids)


def test_error_classification() -> None:
    backend = PostgresBackend("postgresql://nobody@127.0.0.1:1/none")
    assert backend.classify(psycopg.OperationalError("server closed the connection")) == (
        "transient"
    )
    assert backend.classify(pg_errors.QueryCanceled("statement timeout")) == "transient"
    assert backend.classify(pg_errors.AdminShutdown("terminating connection")) == "transient"
    assert backend.classify(pg_errors.SerializationFailure("retry")) == "transient"
    assert backend.classify(pg_errors.CheckViolation("no")) == "permanent"
    assert backend.classify(pg_errors.InvalidTextRepresentation("bad")) == "permanent"
    assert backend.classify(pg_errors.UndefinedTable("gone")) is None


def test_a_collector_starts_while_postgres_is_down_and_stores_later(tmp_path: Path) -> None:
    # Port 1 refuses: the collector starts anyway, and keeps what it collects in the spool.
    url = "postgresql://postgres@127.0.0.1:1/test?pool_timeout=0.5&connect_timeout=1"
    c = mc.MemoryCollector(url, data_dir=str(tmp_path), retry_base=0.01, retry_max=0.05)
    c.collect("bug", "collected while the database is unreachable")
    assert c.stats().spool_pending == 1
    c.close(timeout=0.5)
    assert c.stats().dropped == 0  # kept in the spool for the next start


def test_any_text_is_plain_words_ored() -> None:
    assert websearch_text("Safari login") == "safari or login"
    assert websearch_text('"exact phrase" -excluded') == "exact or phrase or excluded"
    assert websearch_text("a OR b") == "b"  # "a" and "or" are common words
    # Words that merely start with "or" or hold a hyphen are plain words.
    assert websearch_text("login order origin-check") == "login or order or origin or check"
    assert websearch_all_words("Safari login safari") == "safari login"
    assert websearch_all_words('he said "hi') == "he said hi"


def test_bad_url_options_are_named() -> None:
    with pytest.raises(mc.ValidationError, match="schema"):
        PostgresBackend("postgresql://x@localhost/db?schema=Bad-Name")
    with pytest.raises(mc.ValidationError, match="pool_size"):
        PostgresBackend("postgresql://x@localhost/db?pool_size=many")
    with pytest.raises(mc.ValidationError, match=r"writers=5 .* from 1 to pool_size \(4\)"):
        PostgresBackend("postgresql://x@localhost/db?writers=5")


def stored(id_: str, content: str) -> mc.Memory:
    """A memory with the id given, as the worker hands it to a backend."""
    return mc.Memory(id_, "note", content, {}, "medium", (), None, None, None, 1.0, "h" * 32)


def test_a_version_1_schema_gains_byte_order_ids_and_keeps_its_rows(pg_url: str) -> None:
    from memcollect.backends.postgres import MIGRATIONS, SCHEMA_VERSION

    schema = schema_of(pg_url)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(MIGRATIONS[0][1])
        conn.execute("CREATE TABLE memcollect_meta (key text PRIMARY KEY, value text)")
        conn.execute("INSERT INTO memcollect_meta VALUES ('schema_version', '1')")
        # Ids whose order differs between a language's collation and byte order.
        for id_ in ("01B", "01a", "01_c"):
            conn.execute(
                "INSERT INTO memories (id, category, content, priority, created_at) "
                "VALUES (%s, 'bug', 'checkout times out', 2, 1.0)",
                (id_,),
            )
    store = PostgresBackend(pg_url)
    store.open()
    try:
        assert [m.id for m in store.scan(None, 10)] == sorted(["01B", "01a", "01_c"])
        assert len(store.search(mc.SearchQuery(text="checkout timeout"))) == 3
        store.write_batch([stored("01a", "again")])  # a replay
        assert store.count() == 3
    finally:
        store.close()
    with psycopg.connect(POSTGRES_URL) as conn:
        collations = conn.execute(
            "SELECT column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = %s AND column_name IN ('id', 'category') "
            "AND table_name = 'memories' ORDER BY column_name",
            (schema,),
        ).fetchall()
        version = conn.execute(
            f'SELECT value FROM "{schema}".memcollect_meta WHERE key = %s', ("schema_version",)
        ).fetchone()
    assert collations == [("category", "C"), ("id", "C")]
    assert version is not None and int(version[0]) == SCHEMA_VERSION == 5


def test_a_replayed_batch_is_stored_once_beside_its_new_rows(pg_url: str) -> None:
    store = PostgresBackend(pg_url)
    store.open()
    try:
        first = [stored(f"01r{i:03d}", f"replay {i}") for i in range(50)]
        store.write_batch(first)
        # The same batch again with new rows in the middle: the fast COPY fails on the first
        # duplicate and the batch goes in through the temporary table instead.
        fresh = [stored(f"01s{i:03d}", f"fresh {i}") for i in range(5)]
        store.write_batch([*first[:25], *fresh, *first[25:]])
        assert store.count() == 55
        assert {m.id for m in store.scan(None, 100)} == {m.id for m in first + fresh}
    finally:
        store.close()


def test_writers_split_a_batch_and_a_part_that_fails_loses_and_repeats_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    schema = schema_of(pg_url)
    url = f"{pg_url}&writers=3"
    store = PostgresBackend(url)
    store.open()
    try:
        batch = [stored(f"01w{i:04d}", f"split {i}") for i in range(1500)]
        store.write_batch(batch)  # three parts of 500, on three connections at once
        store.write_batch(batch)  # a replay: every part takes the duplicate-safe path
        assert store.count() == 1500
        assert [m.id for m in store.scan(None, 2000)] == [m.id for m in batch]
    finally:
        store.close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(
            f'ALTER TABLE "{schema}".memories ADD CONSTRAINT no_poison '
            "CHECK (content <> 'poison')"
        )
    # The poison sits in the last part: the other parts commit, the batch fails, the
    # collector splits it, and what was stored already is not stored twice.
    with mc.MemoryCollector(url, data_dir=str(tmp_path), batch_size=1200, batch_timeout=5) as c:
        ids = c.collect_batch(
            [{"category": "note", "content": "poison" if i == 1100 else f"good {i}"}
             for i in range(1200)]
        )  # fmt: skip
        assert c.flush(timeout=60)
        assert c.count() == 1500 + 1199
        assert [d.memory.id for d in c.dead_letters()] == [ids[1100]]
        assert c.stats().failed >= 1


def test_a_script_that_never_closes_stores_its_split_batches_at_exit(pg_url: str) -> None:
    from ..test_processes import run_python

    result = run_python(
        """
        import atexit, sys, memcollect as mc
        made = []
        # Registered first, so it runs after the collector's own at-exit flush.
        atexit.register(lambda: print("failed writes:", made[0].stats().failed))
        c = mc.MemoryCollector(sys.argv[1], durability="memory", batch_size=2048,
                               batch_timeout=60.0)
        made.append(c)
        for i in range(2000):
            c.collect("note", f"at exit {i}")
        # No close: the at-exit flush writes the first split batch while the interpreter
        # shuts down, when a thread pool takes no more work.
        """,
        f"{pg_url}&writers=2",
    )
    assert result.returncode == 0, result.stderr
    assert "failed writes: 0" in result.stdout, result.stdout + result.stderr
    store = PostgresBackend(pg_url)
    assert store.count() == 2000
    store.close()


def test_a_delete_page_starts_at_the_end_its_rows_are(pg_url: str) -> None:
    store = PostgresBackend(pg_url)
    store.open()
    check_delete_pages_start_where_their_rows_are(store)
    store.close()


def test_an_unreachable_server_is_one_clear_error_and_health_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens: the constructor does not wait out pool_timeout, a read is one
    MemcollectError naming the server, health is not ok, and psycopg's line per attempt to
    connect is replaced by one line of memcollect's."""
    require_postgres()  # the machine's own server is not the one asked here
    caplog.set_level(logging.INFO)
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test?pool_timeout=600"
    c = mc.MemoryCollector(url, data_dir=str(tmp_path))
    try:
        c.collect("bug", "kept in the spool meanwhile")
        with pytest.raises(mc.MemcollectError, match=r"127\.0\.0\.1:\d+/test is unreachable"):
            c.search("anything")
        with pytest.raises(mc.MemcollectError, match="unreachable"):
            c.count()
        assert wait_for(lambda: c.health().status != "ok")
        assert any("unreachable" in r for r in c.health().reasons)
        store = c.backend
        assert isinstance(store, PostgresBackend)
        pool = store._pool
        assert pool is not None
        assert wait_for(lambda: pool.get_stats().get("connections_errors", 0) >= 2)
    finally:
        c.close(timeout=1)
    from_pool = [r for r in caplog.records if r.name.startswith("psycopg")]
    assert from_pool == [], [r.getMessage() for r in from_pool]
    ours = [
        r.getMessage() for r in caplog.records if "retrying in the background" in r.getMessage()
    ]
    assert len(ours) == 1, ours


def test_a_server_that_never_answers_opens_the_circuit_and_nothing_hangs(
    pg_url: str, tmp_path: Path
) -> None:
    """A partition: the connection stays open and nothing comes back. Writes are cut after
    statement_timeout, the circuit opens, health says failing; all is stored once it heals."""
    target = urlsplit(require_postgres())
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    proxy.start()
    url = pg_url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}")
    url += "&statement_timeout=1&connect_timeout=1"
    try:
        with mc.MemoryCollector(
            url, data_dir=str(tmp_path), circuit_open_after=1, retry_base=0.05, retry_max=1
        ) as c:
            ids = [c.collect("note", "before")]
            assert c.flush(timeout=30)
            proxy.stall()
            ids += [c.collect("note", f"during {i}") for i in range(20)]
            assert wait_for(lambda: c.health().status == "failing", 60), c.health()
            assert "circuit open" in " ".join(c.health().reasons)
            proxy.unstall()
            assert c.flush(timeout=60)
            assert len(c.get_many(ids)) == 21
            assert wait_for(lambda: c.health().status == "ok", 30), c.health()
    finally:
        proxy.stop()


def test_text_search_ranks_the_newest_span_first_and_all_when_it_holds_too_few(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Among the newest RECENT_SPAN memories when enough of them match, else among all:
    an old memory is still found when the newest do not answer."""
    from memcollect.backends import pgtext

    monkeypatch.setattr(pgtext, "RECENT_SPAN", 10)
    monkeypatch.setattr(pgtext, "RARE_MOST", 3)
    store = PostgresBackend(pg_url)
    store.open()
    try:
        old = [make_memory("note", "zebra crossing, and the tiger", None, None, None, None,
                           None, None, 1 << 20) for _ in range(5)]  # fmt: skip
        new = [make_memory("note", f"tiger {i} seen again", None, None, None, None, None, None,
                           1 << 20) for i in range(30)]  # fmt: skip
        store.write_batch(old + new)
        # The newest ten all hold "tiger": the answer is those ten, the oldest not looked at.
        tigers = store.search(SearchQuery(text="tiger", limit=5))
        assert {m.id for m in tigers} <= {m.id for m in new[-10:]} and len(tigers) == 5
        # Only the old ones hold "zebra": the span holds none of them, so all are ranked.
        zebras = store.search(SearchQuery(text="zebra", limit=5))
        assert {m.id for m in zebras} == {m.id for m in old}
        # No memory holds all of "okapi tiger", and the newest ten hold "tiger": the only
        # okapi, the oldest memory, is ranked too, as a rare word's holder, and ranks first.
        okapi = make_memory("note", "an okapi", None, None, None, None, None, None, 1 << 20)
        okapi.id = "0" + okapi.id[1:]  # the oldest id of all
        store.write_batch([okapi])
        assert store.search(SearchQuery(text="okapi tiger", limit=3))[0].id == okapi.id
        # No memory holds all of "zebra seen", and "zebra" is no rare word here (five hold
        # it): the span's newest sightings answer alone.
        assert {m.id for m in store.search(SearchQuery(text="zebra seen", limit=5))} <= {
            m.id for m in new[-10:]
        }
    finally:
        store.close()


def test_upkeep_merges_new_index_entries_and_analyzes_once_a_tenth_changed(
    pg_url: str,
) -> None:
    """With autovacuum off (as on this test server) a loaded table has no statistics and
    its index a list of pending entries until the worker sees to both in a quiet moment;
    then nothing again until rows come, and no new analysis for a few rows."""
    from memcollect.backends.pgstats import CHECK_EVERY_S, Upkeep
    from memcollect.testing import FakeClock

    schema = schema_of(pg_url)
    # One connection: the one that writes is the one told to report its counts at once.
    store = PostgresBackend(pg_url + "&pool_size=1")
    store.open()
    clock = FakeClock()
    upkeep = Upkeep(store._connection, store.url, clock=clock)

    def rows(n: int) -> list[mc.Memory]:
        return [make_memory("note", f"row {i}", None, None, None, None, None, None, 1 << 20)
                for i in range(n)]  # fmt: skip

    def write(memories: list[mc.Memory]) -> None:
        store.write_batch(memories)
        # A session reports its counts when idle, but at most once a second, else 10 s later:
        # made to report them as its next transaction ends (PostgreSQL 15 and newer).
        with store._connection() as conn:
            if conn.info.server_version >= 150000:
                conn.execute("SELECT pg_stat_force_next_flush()")
            conn.commit()

    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:

            def table() -> tuple[int, int, int]:
                row = conn.execute(
                    "SELECT analyze_count + autoanalyze_count, n_mod_since_analyze, n_tup_ins "
                    "FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 'memories'",
                    (schema,),
                ).fetchone()
                assert row is not None
                return int(row[0]), int(row[1]), int(row[2])

            # How many entries wait in the index's pending list (pgstattuple, a contrib
            # extension PostgreSQL ships with).
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")

            def pending() -> int:
                row = conn.execute(
                    "SELECT pending_tuples FROM pgstatginindex(%s::regclass)",
                    (f'"{schema}".memories_search',),
                ).fetchone()
                assert row is not None
                return int(row[0])

            write(rows(3000))
            # The writer's session reports its counts as it goes idle: wait for them rather
            # than guess when.
            assert wait_for(lambda: table()[1] >= 3000)
            assert table()[0] == 0 and pending() > 0
            assert upkeep.step() == ["merged", "analyzed"] and upkeep.error is None
            assert table()[0] == 1 and pending() == 0
            # Not looked at again within the minute; after it, nothing new: nothing to do.
            assert upkeep.step() == []
            clock.advance(CHECK_EVERY_S)
            assert upkeep.step() == []
            # A few rows: merged into the index, not worth a new analysis.
            write(rows(10))
            assert wait_for(lambda: table()[2] >= 3010)
            clock.advance(CHECK_EVERY_S)
            assert pending() > 0
            assert upkeep.step() == ["merged"] and table()[0] == 1 and pending() == 0
    finally:
        store.close()
