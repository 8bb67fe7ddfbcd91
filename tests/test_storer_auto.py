"""storer="auto", the default: a thread stores a short script, a storing process a load."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import memcollect as mc
from memcollect.backends import open_backend
from memcollect.collector import storer_for
from memcollect.config import Config
from memcollect.spool import iter_spool_records
from memcollect.storer import collecting as storer

from .conftest import wait_for
from .test_storer_process import run_script, stored_ids, write_lock_held

Make = Callable[..., mc.MemoryCollector]


def auto_collector(
    make: Make, tmp_path: Path, options: str = "", **fields: object
) -> mc.MemoryCollector:
    fields.setdefault("durability", "spool")
    collector = make(f"sqlite:///{tmp_path}/m.db{options}", **fields)
    assert collector.config.storer == "auto"  # the default
    return collector


def storing_children() -> list[int]:
    """PIDs of this process's children that are storing processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"memcollect.storer" in cmdline and " Z " not in stat:
            found.append(int(entry.name))
    return found


def promoted(make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> mc.MemoryCollector:
    """A collector whose load went to a storing process: while the store is locked, the
    thread cannot keep up, and the backlog passes the (lowered) mark. The load counts as going
    on for as long as the test takes (here the backlog alone decides)."""
    monkeypatch.setattr(storer, "PROMOTE_AT", 500)
    monkeypatch.setattr(storer, "_LOAD_GONE_S", 1e9)
    monkeypatch.setattr(storer, "_LOAD_GONE_WHILE_FLUSHING_S", 1e9)
    c = auto_collector(make, tmp_path, batch_size=64)
    c.collect("note", "the store exists")
    assert c.flush(timeout=30)
    with write_lock_held(tmp_path / "m.db"):
        for i in range(2000):
            c.collect("note", f"while locked {i}")
        assert wait_for(lambda: storing_children() != [], 60)
    assert wait_for(lambda: c.stats().storer_pid is not None, 60)
    return c


def test_a_short_script_is_stored_by_a_thread_and_starts_no_process(
    make_collector: Make, tmp_path: Path
) -> None:
    c = auto_collector(make_collector, tmp_path)
    ids = [c.collect("note", f"quick {i}") for i in range(200)]
    assert c.flush(timeout=30)
    assert sorted(stored_ids(tmp_path / "m.db")) == sorted(ids)
    assert c.stats().storer_pid is None
    assert storing_children() == []
    c.close()
    assert not list((tmp_path / "data" / "spool").rglob("seg-*.log"))


def test_a_storing_thread_that_fails_is_started_again_and_says_why_in_one_line(
    make_collector: Make,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from memcollect.storer.child import Child

    real = Child._store_handing_over
    calls = []

    def fails_once(self: Child, *args: object) -> tuple[int, int]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the storing loop")
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Child, "_store_handing_over", fails_once)
    c = auto_collector(make_collector, tmp_path)
    with caplog.at_level(logging.ERROR, logger="memcollect"):
        ids = [c.collect("note", f"kept through the failure {i}") for i in range(20)]
        # Before, the failed thread hung closing its pipe: never started again, nothing
        # stored, and health said ok.
        assert c.flush(timeout=60)
    assert sorted(stored_ids(tmp_path / "m.db")) == sorted(ids)
    assert c.stats().storer_restarts == 1
    said = [r for r in caplog.records if "a bug in the storing loop" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None
    assert "unexpected RuntimeError at test_storer_auto.py:" in said[0].getMessage()


def test_a_sustained_load_moves_to_a_storing_process_and_nothing_is_lost_or_doubled(
    make_collector: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = promoted(make_collector, tmp_path, monkeypatch)
    pid = c.stats().storer_pid
    assert pid in storing_children()
    more = [c.collect("note", f"after the move {i}") for i in range(3000)]
    assert c.flush(timeout=60)
    stored = stored_ids(tmp_path / "m.db")
    assert len(stored) == len(set(stored)) == 1 + 2000 + 3000
    assert set(more) <= set(stored)
    s = c.stats()
    assert s.stored == len(stored) and s.storer_restarts == 0 and s.storer_pid == pid
    c.close()
    assert wait_for(lambda: pid not in storing_children(), 30)


def gate_first_batches(
    monkeypatch: pytest.MonkeyPatch, backend: object, gates: list[threading.Event]
) -> list[int]:
    """The storing thread's first two batches each wait for their gate (appended to `gates`);
    the rest go straight through. The sizes of the batches it writes, as they come."""
    gates.extend([threading.Event(), threading.Event()])
    thread_batches: list[int] = []
    write_batch = backend.write_batch  # type: ignore[attr-defined]

    def gated(batch: Sequence[mc.Memory]) -> None:
        thread_batches.append(len(batch))
        if len(thread_batches) <= len(gates):
            gates[len(thread_batches) - 1].wait(60)
        write_batch(batch)

    monkeypatch.setattr(backend, "write_batch", gated)
    return thread_batches


def long_range_held(
    c: mc.MemoryCollector, thread_batches: list[int], gates: list[threading.Event]
) -> list[str]:
    """Make the storing thread hold a range of 3,000 memories, stuck in its first batch; the
    ids collected (one before them, then the 3,000)."""
    first = c.collect("note", "held while the rest is collected")
    assert wait_for(lambda: thread_batches == [1], 30)
    ids = [first, *(c.collect("note", f"one long range {i}") for i in range(3000))]
    gates[0].set()  # the thread stores the first range and is sent the 3,000 as its next
    assert wait_for(lambda: len(thread_batches) == 2, 30)
    return ids


def test_a_thread_holding_a_long_range_hands_its_rest_to_the_process_that_takes_over(
    make_collector: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storer, "PROMOTE_AT", 10**9)  # no promotion until the range is held
    monkeypatch.setattr(storer, "_LOAD_GONE_S", 1e9)  # the load goes on while the test runs
    monkeypatch.setattr(storer, "_LOAD_GONE_WHILE_FLUSHING_S", 1e9)
    c = auto_collector(make_collector, tmp_path, batch_size=64)
    c.collect("note", "the store exists")
    assert c.flush(timeout=30)
    shared = c._pipeline.storer._shared
    assert shared is not None
    gates: list[threading.Event] = []
    thread_batches = gate_first_batches(monkeypatch, c._backend, gates)
    ids = long_range_held(c, thread_batches, gates)
    monkeypatch.setattr(storer, "PROMOTE_AT", 500)
    # The process starts and says it is ready; the thread is told to hand over mid-range.
    assert wait_for(shared.hand_over.is_set, 60)
    gates[1].set()
    assert c.flush(timeout=60)
    assert thread_batches == [1, 64]  # one batch of the long range, then the process took over
    stored = stored_ids(tmp_path / "m.db")
    assert len(stored) == len(set(stored)) == 1 + 1 + 3000
    assert set(ids) <= set(stored)
    s = c.stats()
    assert s.stored == len(stored) and s.storer_pid in storing_children()
    c.close()
    assert not list((tmp_path / "data" / "spool").rglob("seg-*.log"))


def test_a_hand_over_given_up_leaves_the_rest_of_the_range_to_the_thread(
    make_collector: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storer, "PROMOTE_AT", 10**9)
    monkeypatch.setattr(storer, "_LOAD_GONE_S", 1e9)
    monkeypatch.setattr(storer, "_LOAD_GONE_WHILE_FLUSHING_S", 1e9)
    c = auto_collector(make_collector, tmp_path, batch_size=64)
    c.collect("note", "the store exists")
    assert c.flush(timeout=30)
    backend, process = c._backend, c._pipeline.storer
    assert process._shared is not None
    gates: list[threading.Event] = []
    thread_batches = gate_first_batches(monkeypatch, backend, gates)
    ids = long_range_held(c, thread_batches, gates)
    monkeypatch.setattr(storer, "PROMOTE_AT", 500)
    assert wait_for(process._shared.hand_over.is_set, 60)  # a process is ready to take over
    # The thread answers how far it got; the dispatcher is made to see the process gone
    # before it can switch, as when the process dies at that moment.
    switch = process._switch_to_next
    monkeypatch.setattr(process, "_switch_to_next", lambda: None)
    gates[1].set()
    assert wait_for(lambda: process._handed_back, 30)
    ready = process._next
    assert ready is not None
    os.kill(ready.pid, signal.SIGKILL)
    assert wait_for(lambda: ready.poll() is not None, 30)  # dead before it could take over
    monkeypatch.setattr(process, "_switch_to_next", switch)
    assert c.flush(timeout=60)
    stored = stored_ids(tmp_path / "m.db")
    assert len(stored) == len(set(stored)) == 1 + 1 + 3000 and set(ids) <= set(stored)
    assert len(thread_batches) > 2  # the thread stored the rest itself
    s = c.stats()
    assert s.stored == len(stored) and s.storer_pid is None and storing_children() == []
    c.close()
    assert not list((tmp_path / "data" / "spool").rglob("seg-*.log"))


def test_kill_9_of_the_process_that_took_over_loses_nothing(
    make_collector: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = promoted(make_collector, tmp_path, monkeypatch)
    first = c.stats().storer_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    ids = [c.collect("note", f"after the kill {i}") for i in range(2000)]
    assert c.flush(timeout=60)
    stored = stored_ids(tmp_path / "m.db")
    assert len(stored) == len(set(stored)) == 1 + 2000 + 2000
    assert set(ids) <= set(stored)
    s = c.stats()
    # Started again as a process, not as a thread: the load is still there.
    assert s.storer_restarts >= 1 and s.storer_pid not in (None, first)


def promotion_held_back(
    c: mc.MemoryCollector, monkeypatch: pytest.MonkeyPatch, send_settings: threading.Event
) -> tuple[list[str], list[int]]:
    """Collect (the store being locked by the caller) until a promotion starts a process,
    which gets its settings only once `send_settings` is set: it cannot be ready, and take
    over, before the test says so. The ids collected, and the storing processes started."""
    process = c._pipeline.storer
    hello = process._hello

    def later(child: object) -> None:
        threading.Thread(target=lambda: send_settings.wait(60) and hello(child)).start()

    monkeypatch.setattr(process, "_hello", later)
    ids: list[str] = []
    deadline = time.monotonic() + 60
    while not storing_children() and time.monotonic() < deadline:
        ids.extend(c.collect("note", f"a burst {len(ids)}") for _ in range(100))
    started = storing_children()
    assert started
    return ids, started


def test_a_promotion_is_given_up_when_the_load_ends_before_the_process_takes_over(
    make_collector: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setattr(storer, "PROMOTE_AT", 500)
    monkeypatch.setattr(storer, "_PROMOTE_PAUSE_S", 10.0)
    caplog.set_level(logging.INFO, logger="memcollect")
    c = auto_collector(make_collector, tmp_path, batch_size=64)
    c.collect("note", "the store exists")
    assert c.flush(timeout=30)
    process = c._pipeline.storer
    send_settings = threading.Event()
    with write_lock_held(tmp_path / "m.db"):
        ids, started = promotion_held_back(c, monkeypatch, send_settings)
        # No more collect(): the dispatcher gives the promotion up and stops the process.
        assert wait_for(lambda: not set(started) & set(storing_children()), 60)
        # The next promotion waits, and the one after a second give-up twice as long.
        assert wait_for(lambda: process._promote_pause == 2 * 10.0, 30)
        assert process._promote_after > time.monotonic()
    send_settings.set()
    assert c.flush(timeout=60)
    stored = stored_ids(tmp_path / "m.db")
    assert len(stored) == len(set(stored)) == 1 + len(ids)
    assert c.stats().storer_pid is None  # the thread stored it all
    assert any("the load ended" in r.getMessage() for r in caplog.records)
    c.close()


def test_a_flush_waiting_for_a_burst_ends_the_load_at_its_first_pause(
    make_collector: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storer, "PROMOTE_AT", 500)
    monkeypatch.setattr(storer, "_LOAD_GONE_S", 1e9)  # without a flush, the load never ends
    c = auto_collector(make_collector, tmp_path, batch_size=64)
    c.collect("note", "the store exists")
    assert c.flush(timeout=30)
    send_settings = threading.Event()
    flushed: list[bool] = []
    with write_lock_held(tmp_path / "m.db"):
        ids, started = promotion_held_back(c, monkeypatch, send_settings)
        flushing = threading.Thread(target=lambda: flushed.append(c.flush(timeout=60)))
        flushing.start()  # waits: the store is locked
        assert wait_for(lambda: not set(started) & set(storing_children()), 60)
    send_settings.set()
    flushing.join(60)
    assert flushed == [True]
    assert len(stored_ids(tmp_path / "m.db")) == 1 + len(ids)
    assert c.stats().storer_pid is None  # the thread stored it all
    c.close()


def test_callbacks_registered_later_keep_the_storing_in_the_thread(
    make_collector: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storer, "PROMOTE_AT", 100)
    c = auto_collector(make_collector, tmp_path, "?busy_timeout=0.05", batch_size=64)
    seen: list[str] = []
    c.on_stored(lambda batch: seen.extend(m.id for m in batch))
    c.collect("note", "the store exists")
    assert c.flush(timeout=30)
    with write_lock_held(tmp_path / "m.db"):
        ids = [c.collect("note", f"while locked {i}") for i in range(2000)]
        # Writes fail and are retried, reported by the thread's heartbeats: the dispatcher
        # has seen the backlog over the mark round after round meanwhile.
        assert wait_for(lambda: c.stats().failed >= 3, 60)
    assert c.flush(timeout=60)
    assert set(ids) <= set(seen)
    assert c.stats().storer_pid is None and storing_children() == []


def test_a_callback_after_the_load_moved_to_a_process_is_refused_with_what_to_do(
    make_collector: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = promoted(make_collector, tmp_path, monkeypatch)
    with pytest.raises(mc.ValidationError, match=r"pass the callbacks to MemoryCollector\(\)"):
        c.on_stored(lambda batch: None)


def test_close_past_its_deadline_leaves_what_the_thread_did_not_store_in_the_spool(
    make_collector: Make, tmp_path: Path
) -> None:
    c = auto_collector(make_collector, tmp_path, "?busy_timeout=0.05")
    c.collect("note", "the store exists")
    assert c.flush(timeout=30)
    with write_lock_held(tmp_path / "m.db"):
        ids = [c.collect("note", f"kept {i}") for i in range(50)]
        assert wait_for(lambda: c.stats().failed >= 1, 60)
        c.close(timeout=0.2)  # the thread is stuck retrying: it is given up, not waited for
        assert not set(ids) & set(stored_ids(tmp_path / "m.db"))
        kept = {m.id for m in iter_spool_records(tmp_path / "data" / "spool")}
        assert set(ids) <= kept  # not answered: still in the spool
    again = auto_collector(make_collector, tmp_path)
    assert again.flush(timeout=30)
    stored = stored_ids(tmp_path / "m.db")
    assert len(stored) == len(set(stored)) and set(ids) <= set(stored)


SHORT = """
import sys, memcollect as mc
c = mc.MemoryCollector(sys.argv[1], data_dir=sys.argv[2])
for i in range(100):
    c.collect("note", f"from a short script {i}")
print(c.stats().storer_pid)
"""


def test_a_script_that_never_closes_is_stored_at_exit_by_the_thread(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    assert run_script(SHORT, f"sqlite:///{db}", str(tmp_path / "d")).strip() == "None"
    assert len(stored_ids(db)) == 100


CLOSED = """
import sys, memcollect as mc
c = mc.MemoryCollector(sys.argv[1], data_dir=sys.argv[2])
for i in range(100):
    c.collect("note", f"from a short script {i}")
c.close()
print("subprocess" in sys.modules)
"""


def test_a_short_script_under_the_default_never_loads_what_only_a_process_needs(
    tmp_path: Path,
) -> None:
    # subprocess is 4 ms of a short script's start: it is imported once a process is started.
    db = tmp_path / "m.db"
    assert run_script(CLOSED, f"sqlite:///{db}", str(tmp_path / "d")).strip() == "False"
    assert len(stored_ids(db)) == 100


# (fields, a Backend object given, callbacks given, a clock of the caller's, cores): storer
WHERE = [
    (({}, False, False, False, 2), "auto"),
    (({"durability": "memory"}, False, False, False, 2), "thread"),
    (({}, True, False, False, 2), "thread"),
    (({}, False, True, False, 2), "thread"),
    (({}, False, False, True, 2), "thread"),
    (({"backend": "memory://"}, False, False, False, 2), "thread"),
    (({}, False, False, False, 1), "thread"),
    (({"storer": "process"}, False, False, False, 1), "process"),
    (({"storer": "thread"}, False, False, False, 2), "thread"),
]


@pytest.mark.parametrize(("case", "expected"), WHERE)
def test_auto_stores_from_a_thread_wherever_a_process_could_not_do_it_all(
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[dict[str, str], bool, bool, bool, int],
    expected: str,
) -> None:
    fields, given_backend, callbacks, own_clock, cores = case
    monkeypatch.setattr("memcollect.collector._cores", lambda: cores)
    config = Config(**{"backend": "sqlite:///x.db", **fields})
    clock = (lambda: 0.0) if own_clock else time.monotonic
    assert storer_for(config, given_backend, callbacks, clock) == expected


def test_a_backend_object_and_callbacks_work_under_the_default(tmp_path: Path) -> None:
    backend = open_backend(f"sqlite:///{tmp_path}/b.db")
    seen: list[str] = []
    with mc.MemoryCollector(
        backend, data_dir=str(tmp_path / "d"), on_stored=lambda b: seen.extend(m.id for m in b)
    ) as c:
        memory_id = c.collect("note", "given a backend")
        assert c.flush(timeout=30)
    assert seen == [memory_id]
    with sqlite3.connect(tmp_path / "b.db") as conn:
        assert conn.execute("SELECT count(*) FROM memories").fetchone()[0] == 1
