"""Real processes: fork, interpreter exit without close(), several writers on one file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import memcollect as mc
from memcollect.backends.sqlite import SQLiteBackend

from .conftest import ROOT

Make = Callable[..., mc.MemoryCollector]


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def in_forked_child(child: Callable[[], str], collector: mc.MemoryCollector) -> tuple[str, int]:
    """Run `child` in a forked process, then close its copy of `collector`; what it
    answered, and the child's exit status."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.write(write, child().encode())
            collector.close(timeout=10)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    _, code = os.waitpid(pid, 0)
    return answer, code


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("durability", ["memory", "spool"])
def test_forked_child_gets_a_working_collector_of_its_own(
    make_collector: Make, tmp_path: Path, durability: str
) -> None:
    url = f"sqlite:///{tmp_path}/fork.db"
    # The parent's batch lingers across the fork.
    c = make_collector(url, batch_timeout=5.0, durability=durability)
    parent_ids = [c.collect("note", f"parent {i}") for i in range(50)]

    def child() -> str:  # must not deadlock, must not store the parent's queue
        ids = [c.collect("note", f"child {i}") for i in range(30)]
        ok = c.flush(timeout=20)
        return f"{ok} {len(set(ids))} {ids[0]}"

    report, code = in_forked_child(child, c)
    assert code == 0
    ok, unique, first_child_id = report.split()
    assert ok == "True" and unique == "30"
    assert first_child_id not in parent_ids
    assert c.flush(timeout=20)
    store = SQLiteBackend(url)
    contents = [m.content for m in store.recent(1000)]
    assert sorted(contents) == sorted(
        [f"parent {i}" for i in range(50)] + [f"child {i}" for i in range(30)]
    )
    store.close()


def test_script_that_never_closes_still_stores_at_exit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/exit.db"
    result = run_python(
        """
        import sys, memcollect as mc
        c = mc.MemoryCollector(sys.argv[1], durability="memory", batch_timeout=60.0)
        for i in range(1000):
            c.collect("note", f"at exit {i}")
        # No flush, no close: the at-exit hook must store all of it.
        """,
        url,
    )
    assert result.returncode == 0, result.stderr
    store = SQLiteBackend(url)
    assert store.count() == 1000
    store.close()


def test_several_processes_write_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/multi.db"
    code = """
        import sys, memcollect as mc
        with mc.MemoryCollector(sys.argv[1], durability="memory", batch_size=50) as c:
            for i in range(2000):
                c.collect("qa", f"proc {sys.argv[2]} item {i}")
        print(c.stats().stored, c.stats().dead_lettered, c.stats().dropped)
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), url, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.split() == ["2000", "0", "0"]
    store = SQLiteBackend(url)
    assert store.count() == 8000
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_during_a_write_transaction_leaves_the_child_a_writable_store(
    make_collector: Make, tmp_path: Path
) -> None:
    import threading

    url = f"sqlite:///{tmp_path}/busy.db"
    c = make_collector(url, durability="memory")
    store = c.backend
    entered, release = threading.Event(), threading.Event()

    def long_write(conn: object) -> None:
        conn.execute("INSERT OR REPLACE INTO memcollect_meta VALUES ('held', '1')")  # type: ignore[attr-defined]
        entered.set()
        release.wait(30)

    holder = threading.Thread(target=lambda: store._write(long_write))  # type: ignore[attr-defined]
    holder.start()
    assert entered.wait(30)
    # The transaction ends a moment after the fork begins: the fork waits for it.
    threading.Timer(0.2, release.set).start()

    def child() -> str:
        c.collect("note", "written by the child")
        return str(c.flush(timeout=20))

    answer, _ = in_forked_child(child, c)
    holder.join(30)
    assert answer == "True"
    assert [m.content for m in SQLiteBackend(url).recent(10)] == ["written by the child"]
