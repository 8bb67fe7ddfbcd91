"""Failover to a second backend while the primary is down, and the move back afterwards."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import memcollect as mc
from memcollect.backends.postgres import SCHEMA_VERSION, PostgresBackend
from memcollect.backends.sqlite import SQLiteBackend
from memcollect.testing import FaultyBackend

from .conftest import wait_for
from .services import TcpProxy, drop_schema, require_postgres

Make = Callable[..., mc.MemoryCollector]


def with_fallback(
    make_collector: Make, tmp_path: Path
) -> tuple[mc.MemoryCollector, FaultyBackend, str]:
    """A collector whose primary can be taken down, with a SQLite fallback; and its parts."""
    primary = FaultyBackend()
    fallback_url = f"sqlite:///{tmp_path}/fallback.db"
    c = make_collector(
        primary, fallback=fallback_url, max_retries=2, retry_base=0.001, retry_max=0.05,
        batch_size=20,
    )  # fmt: skip
    return c, primary, fallback_url


def test_fallback_takes_over_and_gives_everything_back(
    make_collector: Make, tmp_path: Path
) -> None:
    c, primary, fallback_url = with_fallback(make_collector, tmp_path)
    before = [c.collect("note", f"before {i}") for i in range(30)]
    assert c.flush()
    primary.go_down()
    during = [c.collect("error", f"during {i}") for i in range(200)]
    assert c.flush(timeout=30)  # stored: in the fallback
    health = c.health()
    assert health.status == "degraded" and health.backend == fallback_url
    assert any("storing in the fallback" in r for r in health.reasons)
    assert c.get(during[-1]) is not None  # read-your-writes reaches the fallback
    fallback = SQLiteBackend(fallback_url)
    assert fallback.count() > 0
    primary.come_back()
    assert wait_for(lambda: fallback.count() == 0)
    assert wait_for(lambda: c.health().status == "ok")
    assert sorted(m.id for m in primary.inner.recent(1000)) == sorted(before + during)
    assert len(primary.written) == len(set(primary.written))  # nothing twice
    s = c.stats()
    assert s.stored == 230 and s.moved_to_primary == s.stored_in_fallback > 0
    fallback.close()


def test_a_fallback_left_with_memories_is_emptied_on_the_next_start(
    make_collector: Make, tmp_path: Path
) -> None:
    fallback_url = f"sqlite:///{tmp_path}/left.db"
    left = SQLiteBackend(fallback_url)
    c0 = make_collector("memory://")  # only to make valid memories
    ids = [c0.collect("note", f"left {i}") for i in range(10)]
    memories = [c0.get(i) for i in ids]
    left.write_batch([m for m in memories if m is not None])
    primary = FaultyBackend()
    c = make_collector(primary, fallback=fallback_url)
    assert wait_for(lambda: left.count() == 0)
    assert sorted(m.id for m in primary.inner.recent(100)) == sorted(ids)
    # Counted once the fallback's delete has returned, a moment after its rows are gone.
    assert wait_for(lambda: c.stats().moved_to_primary == 10)
    left.close()


def test_postgres_outage_fails_over_to_sqlite_and_drains_back(tmp_path: Path) -> None:
    base = require_postgres()
    target = urlsplit(base)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    proxy.start()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    user = target.username or "postgres"
    url = (
        f"postgresql://{user}@127.0.0.1:{proxy.port}{target.path}"
        f"?schema={schema}&pool_timeout=1&connect_timeout=1"
    )
    fallback_url = f"sqlite:///{tmp_path}/fallback.db"
    c = mc.MemoryCollector(
        url, fallback=fallback_url, data_dir=str(tmp_path / "d"), max_retries=2,
        retry_base=0.01, retry_max=0.3, batch_size=50,
    )  # fmt: skip
    ids: list[str] = []
    stop = threading.Event()

    def produce() -> None:  # memories are collected throughout: before, during, after
        i = 0
        while not stop.wait(0.002):  # paced, so that each stretch holds a few hundred
            ids.append(c.collect("error", f"collected throughout {i}"))
            i += 1

    def collected_more(n: int) -> Callable[[], bool]:
        start = len(ids)
        return lambda: len(ids) >= start + n

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert wait_for(lambda: c.stats().stored >= 100, 30)  # before: stored in PostgreSQL
        proxy.stop()  # the outage: refused and cut
        assert wait_for(lambda: c.health().backend == fallback_url, 30)
        assert wait_for(lambda: c.stats().stored_in_fallback >= 100, 30)  # during
        proxy.start()  # the recovery
        assert wait_for(collected_more(100), 30)  # after
        stop.set()
        producer.join()
        assert c.flush(timeout=60)
        fallback = SQLiteBackend(fallback_url)
        assert wait_for(lambda: fallback.count() == 0, 60)
        fallback.close()
        s = c.stats()
        assert s.stored_in_fallback > 0
        assert wait_for(lambda: c.stats().moved_to_primary == s.stored_in_fallback)
        c.close()
        store = PostgresBackend(f"{base}?schema={schema}")
        stored = [m.id for m in store.search(mc.SearchQuery(limit=10_000))]
        assert store.count() == len(stored) == len(ids)
        assert sorted(stored) == sorted(ids)
        store.close()
    finally:
        stop.set()
        proxy.stop()
        c.close()
        drop_schema(schema)


def test_two_collectors_migrate_one_schema_at_once() -> None:
    base = require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            backend = PostgresBackend(f"{base}?schema={schema}")
            barrier.wait()
            backend.open()
            backend.write_batch([])
            backend.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        check = PostgresBackend(f"{base}?schema={schema}")
        rows = check._read("SELECT value FROM memcollect_meta WHERE key = 'schema_version'")
        assert rows == [(str(SCHEMA_VERSION),)]
        check.close()
    finally:
        drop_schema(schema)
