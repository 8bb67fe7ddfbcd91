"""Retries, the circuit breaker, poison records, dead letters, shutdown against a dead store."""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import memcollect as mc
from memcollect.backends.sqlite import SQLiteBackend
from memcollect.storing import Storing, content_hash
from memcollect.testing import FaultyBackend

from .conftest import wait_for

Make = Callable[..., mc.MemoryCollector]


def test_transient_failures_are_retried_until_stored(make_collector: Make) -> None:
    backend = FaultyBackend()
    backend.fail_next(3)
    c = make_collector(backend, max_retries=5)
    ids = [c.collect("error", f"e{i}") for i in range(5)]
    assert c.flush()
    assert sorted(backend.written) == sorted(ids)
    s = c.stats()
    assert s.retried == 3 and s.failed == 3 and s.stored == 5 and s.dead_lettered == 0
    assert c.health().status == "ok"


def test_outage_opens_the_circuit_and_health_says_so(make_collector: Make) -> None:
    backend = FaultyBackend()
    backend.go_down(mc.TransientBackendError("connection refused"))
    c = make_collector(backend, max_retries=2, retry_base=0.001, retry_max=0.005)
    c.collect("bug", "during the outage")
    assert wait_for(lambda: c.health().status == "failing", 10)
    health = c.health()
    assert health.status == "failing"
    assert any("circuit" in r and "connection refused" in r for r in health.reasons)
    assert c.stats().dead_lettered == 0  # an outage never dead-letters
    backend.come_back()
    assert c.flush()
    assert c.health().status == "ok"
    assert backend.inner.count() == 1


@pytest.mark.parametrize("durability", ["memory", "spool"])
def test_a_worker_step_that_fails_as_no_store_fails_is_tried_again_not_lost(
    make_collector: Make,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    durability: str,
) -> None:
    """A bug in the storing engine: before, the worker died, flush() said everything was
    stored, nothing more ever was, and health said ok."""
    real, failures = Storing.store, []

    def fails_twice(self: Storing, batch: list[mc.Memory]) -> None:
        if len(failures) < 2:
            failures.append(len(batch))
            raise RuntimeError("a bug in the storing engine")
        real(self, batch)

    monkeypatch.setattr(Storing, "store", fails_twice)
    c = make_collector(f"sqlite:///{tmp_path}/m.db", durability=durability, storer="thread")
    with caplog.at_level(logging.WARNING, logger="memcollect"):
        ids = [c.collect("bug", f"kept through the bug {i}") for i in range(10)]
        assert c.flush(timeout=60)
    assert failures == [10, 10]
    assert sorted(m.id for m in c.get_many(ids)) == sorted(ids)
    assert c.health().status == "ok"
    lines = [r.getMessage() for r in caplog.records]
    assert [r.exc_info for r in caplog.records] == [None, None]  # no traceback
    assert re.fullmatch(
        r"the worker failed, and tries again in 0\.5 s: unexpected RuntimeError at "
        r"test_worker\.py:\d+: a bug in the storing engine",
        lines[0],
    ), lines
    assert lines[1].startswith("the worker stores again after: unexpected RuntimeError")


def test_health_says_the_worker_fails_while_a_bug_repeats(
    make_collector: Make, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def always_fails(self: Storing, batch: list[mc.Memory]) -> None:
        raise RuntimeError("a bug in the storing engine")

    monkeypatch.setattr(Storing, "store", always_fails)
    c = make_collector(f"sqlite:///{tmp_path}/m.db", storer="thread")
    c.collect("bug", "waits in the queue")
    assert wait_for(lambda: c.health().status == "failing", 30), c.health()
    (reason,) = c.health().reasons
    assert reason.startswith("the worker fails, and tries again: unexpected RuntimeError at ")
    assert c.stats().stored == 0
    c.close(timeout=0.5)  # what it could not store is counted as left, within the deadline


def test_a_poison_record_is_dead_lettered_and_its_batch_stored(make_collector: Make) -> None:
    backend = FaultyBackend(poison=lambda m: m.content == "poison")
    failures: list[tuple[list[str], str]] = []
    c = make_collector(
        backend,
        batch_size=64,
        batch_timeout=1.0,
        on_failure=lambda ms, exc: failures.append(([m.content for m in ms], str(exc))),
    )
    contents = [f"good {i}" for i in range(63)]
    contents.insert(40, "poison")
    c.collect_batch([{"category": "note", "content": text} for text in contents])
    assert c.flush()
    assert backend.inner.count() == 63
    letters = c.dead_letters()
    assert [d.memory.content for d in letters] == ["poison"]
    assert "PermanentBackendError" in letters[0].error
    assert failures == [(["poison"], f"poison record {letters[0].memory.id}")]
    # Bisection narrows one poison record in 64 down in about 2*log2(64) writes, not 64.
    assert backend.write_calls <= 2 * 6 + 1
    s = c.stats()
    assert (s.stored, s.dead_lettered) == (63, 1)


def test_dead_letters_persist_and_can_be_retried(make_collector: Make, tmp_path: object) -> None:
    poisoned = {"yes": True}
    backend = FaultyBackend(
        SQLiteBackend(f"sqlite:///{tmp_path}/dl.db"),
        poison=lambda m: poisoned["yes"] and m.content.startswith("bad"),
    )
    c = make_collector(backend)
    c.collect("note", "bad one")
    c.collect("note", "fine")
    assert c.flush()
    assert [d.memory.content for d in c.dead_letters()] == ["bad one"]
    poisoned["yes"] = False  # the store was fixed
    assert c.retry_dead_letters() == 1
    assert c.flush()
    assert c.dead_letters() == []
    assert sorted(m.content for m in c.recent(10)) == ["bad one", "fine"]


def test_unclassified_errors_are_retried_then_bisected(make_collector: Make) -> None:
    backend = FaultyBackend()
    backend.fail_next(10, RuntimeError("mystery"))
    c = make_collector(backend, max_retries=2)
    c.collect("note", "only one")
    assert c.flush()
    # Three attempts (two retries) failed, then the single record was dead-lettered.
    assert [d.error for d in c.dead_letters()] == ["RuntimeError: mystery"]


def test_close_against_a_dead_backend_is_bounded(make_collector: Make) -> None:
    backend = FaultyBackend()
    backend.go_down()
    c = make_collector(backend, retry_base=5.0, retry_max=60.0)  # long sleeps between retries
    for i in range(100):
        c.collect("note", f"n{i}")
    started = time.monotonic()
    c.close(timeout=0.3)
    # The retry sleep woke on close; what could not be stored is counted, not silently lost.
    assert time.monotonic() - started < 5.0
    s = c.stats()
    assert s.stored == 0
    assert s.dropped_by_reason.get("shutdown_deadline") == 100


def test_content_hash_is_blake2b_and_import_leaves_hashlib_out() -> None:
    # Stored digests must not change from one version to the next.
    text = "Login fails on Safari 17 — ошибка 😀"
    expected = hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
    assert content_hash(text) == expected
    # The worker's own (inlined) hashing makes the same digests, each of its memory alone.
    texts = [text, "another", text + "!"]
    with mc.MemoryCollector("memory://", durability="memory") as c:
        ids = [c.collect("bug", t) for t in texts]
        assert c.flush()
        stored = [c.get(i) for i in ids]
    assert [m.content_hash if m else None for m in stored] == [
        hashlib.blake2b(t.encode("utf-8"), digest_size=16).hexdigest() for t in texts
    ]
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, memcollect; print('_hashlib' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "False"  # OpenSSL's hashlib costs ~5 ms of import time


class PutOffWork(FaultyBackend):
    """A store with work put off for quiet moments: `steps` steps, then none until a write."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.left = 0  # until something is written
        self.idle_calls: list[int] = []  # the queue depth at each call

    def write_batch(self, batch: object) -> None:
        super().write_batch(batch)  # type: ignore[arg-type]
        self.left = self.steps

    def idle_work(self) -> bool:
        self.idle_calls.append(self.written_count())
        if self.left == 0:
            return False
        self.left -= 1
        return self.left > 0

    def written_count(self) -> int:
        return len(self.written)


def test_the_collector_runs_put_off_work_in_its_quiet_moments(make_collector: Make) -> None:
    """The worker thread does the store's put-off work (that it stops when done, and waits
    while the store is down, is shown step by step in test_storing.py)."""
    backend = PutOffWork(steps=3)
    c = make_collector(backend)
    assert wait_for(lambda: len(backend.idle_calls) >= 1)
    c.collect("bug", "one")
    assert c.flush()
    assert wait_for(lambda: backend.left == 0)
    # Once at start (nothing to do), then three steps after the write.
    assert backend.idle_calls == [0, 1, 1, 1]
