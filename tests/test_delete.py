"""delete(): memories removed for good, wherever the collector keeps them."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

import pytest

import memcollect as mc
from memcollect.backends import open_backend
from memcollect.backends.base import DeadLetter
from memcollect.backends.memory import MemoryBackend
from memcollect.backends.sqlite import SQLiteBackend
from memcollect.locks import shared_lock
from memcollect.testing import FaultyBackend

from .backends.test_conformance import mem
from .conftest import ROOT, CountingReads
from .test_failover import wait_for, with_fallback

Make = Callable[..., mc.MemoryCollector]


def test_delete_by_id_reaches_queued_memories_and_clears_the_cache(make_collector: Make) -> None:
    c = make_collector(batch_timeout=60.0)  # nothing is stored before a flush
    first = c.collect("bug", "Login fails on Safari")
    kept = c.collect("bug", "Login fails on Firefox")
    assert c.flush()
    assert c.get(first) is not None  # now in the cache
    assert c.search("login") != []  # a cached search too
    queued = c.collect("note", "collected just before the delete")
    assert c.delete([first, queued, "01nosuchid0000000000000000"]) == 2
    assert c.get(first) is None and c.get(queued) is None
    assert [m.id for m in c.search("login")] == [kept]
    assert c.delete(first) == 0  # a single id works, and a second delete finds nothing
    assert c.count() == 1 and c.stats().deleted == 2


def test_delete_by_filters_takes_stored_memories_and_dead_letters(make_collector: Make) -> None:
    c = make_collector()
    doomed = [c.collect("feedback", f"user said {i}", session="s-42") for i in range(2500)]
    kept = c.collect("feedback", "user said hello", session="s-7")
    old = c.collect("note", "an old note", tags=["tmp"])
    assert c.flush()
    refused = mc.Memory(mc.new_id(), "bug", "refused", {}, "high", (), None, None, "s-42", 1.0)
    c.backend.add_dead_letters([DeadLetter(refused, "PermanentBackendError: bad", 1.0)])
    # More than one page of matches, and the dead letter of that session.
    assert c.delete(session="s-42") == len(doomed) + 1
    assert c.dead_letters() == [] and c.count() == 2
    assert c.delete(tags=["tmp"], since=time.time() + 60) == 0  # every filter must match
    assert c.delete(tags=["tmp"], until=time.time() + 60) == 1
    assert [m.id for m in c.recent()] == [kept] and c.get(old) is None


def test_delete_needs_ids_or_filters_and_names_what_is_wrong(make_collector: Make) -> None:
    c = make_collector()
    mid = c.collect("note", "x")
    with pytest.raises(mc.ValidationError, match="needs ids or a filter"):
        c.delete()
    with pytest.raises(mc.ValidationError, match="filters that match every memory"):
        c.delete(tags=[])
    assert c.delete([mid], session="s-1") == 0  # ids and filters: the ids that pass them
    with pytest.raises(mc.ValidationError, match="ids must be an id or a list of ids, not int"):
        c.delete(42)  # type: ignore[arg-type]
    with pytest.raises(mc.ValidationError, match=r"ids\[1\] must be a str, not int"):
        c.delete([mid, 7])  # type: ignore[list-item]
    with pytest.raises(mc.ValidationError, match="category 'Bad Slug'"):
        c.delete(category="Bad Slug")
    assert c.flush() and c.get(mid) is not None  # nothing was deleted
    c.close()
    with pytest.raises(mc.ValidationError, match="closed"):
        c.delete(mid)


def test_a_deleted_memory_leaves_no_bytes_on_disk(make_collector: Make, tmp_path: Path) -> None:
    secret = "sk-live-4f9a8b7c6d5e"
    c = make_collector(f"sqlite:///{tmp_path}/m.db", durability="spool", data_dir=str(tmp_path))
    for i in range(300):
        c.collect("note", f"note {i} about caching " + "x" * 200)
        if i == 100:
            c.collect("error", f"Auth failed with key {secret} on payments", session="s-42")
    assert c.flush()

    def files_holding_the_secret() -> list[str]:
        return [
            str(f) for f in tmp_path.rglob("*") if f.is_file() and secret.encode() in f.read_bytes()
        ]

    assert files_holding_the_secret()  # in the spool and the database's log
    # Into the database file itself, where a deleted row's bytes would stay in a page.
    with closing(sqlite3.connect(tmp_path / "m.db")) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert str(tmp_path / "m.db") in files_holding_the_secret()
    assert c.delete(session="s-42") == 1
    assert files_holding_the_secret() == []
    assert c.search("payments") == [] and c.count() == 300


def test_delete_when_the_store_is_down_deletes_nothing_and_says_why(make_collector: Make) -> None:
    store = FaultyBackend()
    c = make_collector(store, max_retries=1000)
    stored = c.collect("note", "stored before the outage")
    assert c.flush()
    store.go_down()
    c.collect("note", "waiting for the store")
    with pytest.raises(mc.BackendError, match=r"still waiting to be stored.*nothing was deleted"):
        c.delete(stored, timeout=0.2)
    assert store.inner.get(stored) is not None
    store.come_back()
    assert c.delete(stored) == 1


def test_delete_reaches_the_fallback_and_what_moves_back_stays_deleted(
    make_collector: Make, tmp_path: Path
) -> None:
    c, primary, fallback_url = with_fallback(make_collector, tmp_path)
    primary.go_down()
    doomed = [c.collect("note", f"private {i}", session="s-42") for i in range(50)]
    kept = [c.collect("note", f"public {i}", session="s-7") for i in range(50)]
    assert c.flush(timeout=30)
    fallback = SQLiteBackend(fallback_url)
    assert fallback.count() == 100  # all in the fallback
    assert c.delete(session="s-42") == 50
    assert fallback.count() == 50
    primary.come_back()
    assert wait_for(lambda: fallback.count() == 0)
    assert sorted(m.id for m in primary.inner.recent(1000)) == sorted(kept)
    assert not set(doomed) & set(primary.written)
    fallback.close()


HOLD_THE_MOVE_LOCK = """
import sys
from memcollect.backends.sqlite import SQLiteBackend
from memcollect.locks import shared_lock

with shared_lock(SQLiteBackend(sys.argv[1]).move_lock_path()):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_moves_and_deletes_take_turns_with_another_process_on_the_same_fallback(
    make_collector: Make, tmp_path: Path
) -> None:
    # Another process moving from the same fallback file (another application's collector,
    # or a storing process) holds the lock: this one neither moves nor deletes meanwhile.
    fallback_url = f"sqlite:///{tmp_path}/fallback.db"
    left = SQLiteBackend(fallback_url)
    left.open()
    doomed = [mem(f"private {i}", session="s-42") for i in range(30)]
    kept = [mem(f"public {i}", session="s-7") for i in range(30)]
    left.write_batch(doomed + kept)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_MOVE_LOCK, fallback_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        primary = FaultyBackend()
        c = make_collector(primary, fallback=fallback_url, batch_size=10)
        deleted: list[int] = []
        deleting = threading.Thread(target=lambda: deleted.append(c.delete(session="s-42")))
        deleting.start()
        deleting.join(0.5)
        assert deleting.is_alive() and primary.written == []
    finally:
        holder.communicate("release\n", timeout=30)
    deleting.join(30)
    assert deleted == [30]
    assert wait_for(lambda: left.count() == 0)
    assert sorted(m.id for m in primary.inner.recent(100)) == sorted(m.id for m in kept)
    left.close()


def test_where_the_lock_between_moves_and_deletes_lives() -> None:
    # Beside a SQLite file; for a server, one file per URL that names no password; none for
    # a store no other process reaches.
    assert SQLiteBackend("sqlite:///data/fb.db").move_lock_path() == "data/fb.db-moving.lock"
    assert SQLiteBackend("sqlite://:memory:").move_lock_path() is None
    assert MemoryBackend().move_lock_path() is None
    server = open_backend("postgresql://alice:s3cret@db.internal/memories")
    path = server.move_lock_path()
    assert path is not None and "s3cret" not in path and "alice" not in path
    assert path == open_backend(server.url).move_lock_path()
    assert path != open_backend("postgresql://alice:s3cret@db.internal/other").move_lock_path()
    assert shared_lock(path) is shared_lock(path)  # two collectors here take turns too


def test_a_forked_child_waits_for_the_lock_its_parent_holds_then_takes_it(
    tmp_path: Path,
) -> None:
    lock = shared_lock(str(tmp_path / "fb.db-moving.lock"))
    readable, writable = os.pipe()
    with lock:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            signal.alarm(60)  # a child stuck on a lock copied from its parent dies, in the end
            # The parent's hold on the in-process lock was copied here; it must not count.
            with shared_lock(lock.path):
                os.write(writable, b"taken")
            os._exit(0)
        os.close(writable)
        assert not select.select([readable], [], [], 0.3)[0]  # the parent still holds it
    assert select.select([readable], [], [], 30)[0]
    assert os.read(readable, 5) == b"taken"
    assert os.waitpid(pid, 0)[1] == 0
    os.close(readable)


def test_a_store_failing_part_way_is_one_clear_error_and_a_retry_finishes(
    make_collector: Make,
) -> None:
    class Unreachable(MemoryBackend):
        """Lists memories, then loses its connection for deletes until told otherwise."""

        down = True

        def delete(self, ids: Sequence[str]) -> None:
            if self.down:
                raise ConnectionError("connection reset by peer")
            super().delete(ids)

    store = Unreachable()
    c = make_collector(store)
    ids = [c.collect("note", f"private {i}", session="s-42") for i in range(5)]
    assert c.flush() and c.get(ids[0]) is not None  # cached
    with pytest.raises(mc.BackendError) as failed:
        c.delete(session="s-42")
    message = str(failed.value)
    assert "could not finish in memory://" in message and "ConnectionError" in message
    assert "call it again" in message
    store.down = False
    assert c.delete(session="s-42") == 5 and c.get(ids[0]) is None


def test_delete_by_ids_reads_a_page_at_a_time_not_a_memory_at_a_time(
    make_collector: Make,
) -> None:
    store = CountingReads()
    c = make_collector(store)
    ids = [c.collect("note", f"private {i}") for i in range(1500)]
    assert c.flush()
    store.reads.clear()
    assert c.delete([*ids[:1200], "01nosuchid0000000000000000"]) == 1200
    assert store.reads == [("get_many", 1000), ("get_many", 201)]  # two pages of ids
    assert c.count() == 300
