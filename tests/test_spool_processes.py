"""The spool against real processes and real signals: kill -9, outages, shared data dirs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import memcollect as mc
from memcollect.backends.sqlite import SQLiteBackend

from .conftest import ROOT, wait_for

ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))

# Collects from several threads as fast as it can, printing every id collect() returned.
PRODUCER = """
import sys, threading, memcollect as mc
from memcollect.testing import FaultyBackend
from memcollect.backends import open_backend
url, data_dir, down = sys.argv[1], sys.argv[2], sys.argv[3] == "down"
backend = FaultyBackend(open_backend(url))
if down:
    backend.go_down()
c = mc.MemoryCollector(backend, data_dir=data_dir, durability="spool", max_queue_size=500)
lock = threading.Lock()
def produce(n):
    for i in range(1_000_000):
        mid = c.collect("error", f"thread {n} item {i}", {"i": i})
        with lock:
            sys.stdout.write(mid + "\\n")
            sys.stdout.flush()
for n in range(4):
    threading.Thread(target=produce, args=(n,), daemon=True).start()
threading.Event().wait()
"""


def start_producer(url: str, data_dir: Path, down: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRODUCER, url, str(data_dir), "down" if down else "up"],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip


def kill_after(proc: subprocess.Popen[str], lines: int) -> list[str]:
    """Read ids until `lines` were printed, SIGKILL the producer, return every printed id."""
    assert proc.stdout is not None
    ids = []
    for line in proc.stdout:
        ids.append(line.strip())
        if len(ids) >= lines:
            proc.send_signal(signal.SIGKILL)
            break
    rest, _ = proc.communicate(timeout=30)
    ids.extend(x for x in rest.split("\n") if len(x) == 26)
    assert proc.returncode == -signal.SIGKILL
    return ids


def stored_ids(url: str) -> list[str]:
    store = SQLiteBackend(url)
    ids = [m.id for m in store.search(mc.SearchQuery(limit=10_000))]
    total = store.count()
    store.close()
    assert len(ids) == total
    return ids


def test_kill_9_loses_nothing_that_collect_returned(tmp_path: Path) -> None:
    url, data = f"sqlite:///{tmp_path}/crash.db", tmp_path / "data"
    printed = kill_after(start_producer(url, data, down=False), 3000)
    with mc.MemoryCollector(url, data_dir=str(data)) as recovered:
        assert recovered.flush(timeout=60)
    stored = stored_ids(url)
    assert len(stored) == len(set(stored))  # exactly once
    assert set(printed) <= set(stored)


def test_kill_9_during_an_outage_then_recover_command(tmp_path: Path) -> None:
    url, data = f"sqlite:///{tmp_path}/outage.db", tmp_path / "data"
    printed = kill_after(start_producer(url, data, down=True), 2000)
    assert SQLiteBackend(url).count() == 0  # nothing reached the store
    out = subprocess.run(
        [str(Path(sys.executable).with_name("memcollect")), "recover", "--data-dir", str(data),
         "--backend", url],
        capture_output=True, text=True, env=ENV, timeout=120, check=True,
    )  # fmt: skip
    recovered = int(out.stdout.split("recovered ")[1].split()[0])
    assert recovered >= len(set(printed))  # some were collected but not yet printed
    stored = stored_ids(url)
    assert len(stored) == len(set(stored))
    assert set(printed) <= set(stored)


def test_outage_of_100k_memories_keeps_rss_bounded(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys, memcollect as mc
        from memcollect.testing import FaultyBackend
        from memcollect.backends import open_backend
        def rss_mb():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        backend = FaultyBackend(open_backend(sys.argv[1]))
        backend.go_down()
        c = mc.MemoryCollector(backend, data_dir=sys.argv[2], durability="spool",
                               max_queue_size=1000, retry_base=0.001, retry_max=0.05)
        for i in range(2000):  # warm up allocators and caches
            c.collect("note", f"warm {i} " + "x" * 200, {"i": i})
        before = rss_mb()
        for i in range(100_000):
            c.collect("note", f"memory {i} " + "x" * 200, {"i": i})
        during = rss_mb()
        s = c.stats()
        backend.come_back()
        ok = c.flush(timeout=240)
        t = c.stats()
        c.close()
        print(ok, during - before, s.queue_depth, s.spool_pending, t.stored, t.dropped)
        """
    )
    url = f"sqlite:///{tmp_path}/rss.db"
    out = subprocess.run(
        [sys.executable, "-c", code, url, str(tmp_path / "data")],
        capture_output=True, text=True, env=ENV, timeout=280, check=True,
    )  # fmt: skip
    ok, growth, depth, pending, stored, dropped = out.stdout.split()
    assert ok == "True"
    # 100,000 memories of ~250 bytes held in RAM would take well over 60 MB.
    assert float(growth) < 20, f"RSS grew {growth} MB during the outage"
    assert int(depth) <= 1000 and int(pending) == 102_000
    assert (int(stored), int(dropped)) == (102_000, 0)
    assert SQLiteBackend(url).count() == 102_000


def test_two_processes_share_a_data_dir_and_a_dead_ones_spool_is_adopted(
    tmp_path: Path,
) -> None:
    url, data = f"sqlite:///{tmp_path}/shared.db", tmp_path / "data"
    # A: alive for the whole test, owning the "main" spool, its store down.
    alive = start_producer(url, data, down=True)
    assert alive.stdout is not None
    alive_ids = [alive.stdout.readline().strip() for _ in range(200)]
    # B: same data dir, gets a spool of its own beside A's, dies with records in it.
    dead_ids = kill_after(start_producer(url, data, down=True), 500)
    spools = sorted(p.name for p in (data / "spool").iterdir())
    assert "main" in spools and len(spools) == 2
    # C: starts while A lives: adopts B's spool, leaves A's alone.
    with mc.MemoryCollector(url, data_dir=str(data)) as adopter:
        assert adopter.flush(timeout=60)
        assert adopter.stats().replayed >= len(set(dead_ids))
    stored = set(stored_ids(url))
    assert set(dead_ids) <= stored
    assert not set(alive_ids) & stored
    assert (data / "spool" / "main").exists()
    alive.kill()
    alive.communicate(timeout=30)
    wait_for(lambda: len(list((data / "spool").iterdir())) <= 1, 5)
    assert sorted(p.name for p in (data / "spool").iterdir()) == ["main"]
