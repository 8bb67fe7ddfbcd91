"""Failure paths of storing that used to stall or lie: poison, refused dead letters, locks."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import memcollect as mc
from memcollect.backends.base import DeadLetter
from memcollect.retry import CircuitBreaker
from memcollect.testing import FaultyBackend

from .conftest import wait_for


class Unclassified(FaultyBackend):
    """Refuses every batch holding a poison record with a RuntimeError nobody classifies."""

    def __init__(self, poison: Callable[[mc.Memory], bool], refuse_dead_letters: bool) -> None:
        super().__init__()
        self.is_poison = poison
        self.refuse_dead_letters = refuse_dead_letters
        self.writes = 0

    def write_batch(self, batch: Sequence[mc.Memory]) -> None:
        self.writes += 1
        if any(self.is_poison(m) for m in batch):
            raise RuntimeError("the store cannot say why")
        super().write_batch(batch)

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if self.refuse_dead_letters:
            raise mc.PermanentBackendError("dead letters refused too")
        super().add_dead_letters(letters)


def test_poison_nobody_can_classify_is_retried_once_not_at_every_level(
    make_collector: Callable[..., mc.MemoryCollector],
) -> None:
    store = Unclassified(lambda m: m.content.endswith("7 poison"), refuse_dead_letters=False)
    c = make_collector(store, batch_size=256, max_retries=5)
    for i in range(2048):
        c.collect("note", f"{i} poison" if i % 200 == 7 else f"memory {i}")
    assert c.flush(60)
    stats = c.stats()
    assert stats.stored == 2048 - 11 and stats.dead_lettered == 11
    # Only a batch first written is retried (5 times; at most 11 batches hold a poison
    # record, however the batches were cut); the halves of a split are tried once each, two
    # a level, at most 8 levels for 256. Retrying at every level took 480 retries here.
    assert stats.retried <= 5 * 11, stats.retried
    assert stats.failed <= 11 * (1 + 5 + 2 * 8), stats.failed


def test_a_memory_whose_dead_letter_is_refused_is_counted_and_health_says_so(
    make_collector: Callable[..., mc.MemoryCollector],
) -> None:
    store = Unclassified(lambda m: "poison" in m.content, refuse_dead_letters=True)
    failed: list[str] = []
    c = make_collector(
        store,
        batch_size=64,
        max_retries=1,
        on_failure=lambda ms, e: failed.extend(m.id for m in ms),
    )
    ids = [c.collect("note", "poison" if i % 20 == 0 else f"memory {i}") for i in range(100)]
    assert c.flush(30)
    stats = c.stats()
    assert stats.stored + stats.dead_lettered + stats.dropped == stats.accepted == 100
    assert stats.dropped_by_reason == {"unstorable": 5}
    assert sorted(failed) == sorted(ids[::20])
    health = c.health()
    assert health.status == "degraded" and any("dropped" in r for r in health.reasons)


def test_the_circuit_opens_on_time_as_well_as_on_count() -> None:
    now = [100.0]
    breaker = CircuitBreaker(threshold=5, cooldown=10, clock=lambda: now[0], open_after=5)
    now[0] = 104.0
    breaker.record_failure(RuntimeError("slow"), started=100.0)
    assert breaker.state == "closed"  # one failure, 4 s of failing
    now[0] = 105.0
    breaker.record_failure(RuntimeError("slow"), started=104.5)
    assert breaker.state == "open"  # two failures, but 5 s of failing since the first began
    now[0] = 115.0
    assert breaker.state == "half_open"
    breaker.record_success()
    assert breaker.state == "closed" and breaker.failing_since is None


def hold_write_lock(path: Path) -> subprocess.Popen[str]:
    """Another process holding the SQLite file's write lock until its stdin closes."""
    script = f"""
        import sqlite3, sys
        conn = sqlite3.connect({str(path)!r}, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        print("locked", flush=True)
        sys.stdin.read()
        conn.execute("ROLLBACK")
    """
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def release(holder: subprocess.Popen[str]) -> None:
    """Let the lock go, and reap the process."""
    if holder.poll() is None:
        holder.communicate(timeout=30)  # closes its stdin: it rolls back and exits
    elif holder.stdout is not None:
        holder.stdout.close()


def test_a_locked_sqlite_file_fails_over_and_health_goes_failing(tmp_path: Path) -> None:
    """Held by another process: the collector starts at once, health says what is wrong
    within the thresholds, a fallback takes the writes, and all is stored once it lets go."""
    db = tmp_path / "locked.db"
    with mc.MemoryCollector(f"sqlite:///{db}", durability="memory"):
        pass  # the file exists, with its schema
    holder = hold_write_lock(db)
    try:
        url = f"sqlite:///{db}?busy_timeout=0.2"
        with mc.MemoryCollector(
            url, durability="memory", circuit_open_after=0.5, retry_max=0.5, retry_base=0.01
        ) as c:
            ids = [c.collect("note", f"m{i}") for i in range(50)]
            assert wait_for(lambda: c.health().status == "failing", 30), c.health()
            assert "circuit open" in " ".join(c.health().reasons)
            release(holder)
            assert c.flush(30)
            assert len(c.get_many(ids)) == 50 and c.health().status == "ok"
        holder = hold_write_lock(db)
        fallback = f"sqlite:///{tmp_path}/fallback.db"
        with mc.MemoryCollector(
            url, durability="memory", fallback=fallback, circuit_open_after=0.5, retry_max=0.5
        ) as c:
            c.collect("note", "while locked")
            assert wait_for(lambda: c.stats().stored_in_fallback == 1, 30)
            assert c.health().status == "degraded"
    finally:
        release(holder)
    with sqlite3.connect(tmp_path / "fallback.db") as conn:
        assert conn.execute("SELECT count(*) FROM memories").fetchone()[0] == 1
