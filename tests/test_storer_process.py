"""storer="process": a storing process reads the spool; real processes and real signals."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import msgspec
import psycopg
import pytest

import memcollect as mc
from memcollect.backends import open_backend
from memcollect.config import Config
from memcollect.frames import encode_frame
from memcollect.locks import shared_lock
from memcollect.spool import iter_spool_records
from memcollect.storer import collecting as storer
from memcollect.storer.child import Child
from memcollect.storer.protocol import PROTOCOL, Range, decode_done, encode
from memcollect.validate import make_memory

from .conftest import ROOT, wait_for
from .services import POSTGRES_URL, drop_schema, require_postgres

Make = Callable[..., mc.MemoryCollector]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))


def process_collector(make: Make, tmp_path: Path, **fields: object) -> mc.MemoryCollector:
    fields.setdefault("durability", "spool")
    return make(f"sqlite:///{tmp_path}/m.db", storer="process", **fields)


def stored_ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM memories")]


def run_script(script: str, *args: str) -> str:
    """Run a Python script in a process of its own; its output, once it exited cleanly."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True, text=True, env=ENV, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def segments(data_dir: Path) -> list[Path]:
    return list((data_dir / "spool").rglob("seg-*.log"))


def gone(pid: int) -> bool:
    """Whether a process has exited (a zombie nobody reaped counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another connection holds the file's write lock: every write meanwhile is busy."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_everything_collected_is_stored_once_and_the_spool_is_emptied(
    make_collector: Make, tmp_path: Path
) -> None:
    c = process_collector(make_collector, tmp_path)
    ids = [c.collect("bug", f"login fails {i}", {"i": i}, tags=["auth"]) for i in range(3000)]
    ids += c.collect_batch([{"category": "note", "content": f"batch {i}"} for i in range(500)])
    ids.append(asyncio.run(c.collect_async("decision", "ship it")))
    # Read-your-writes: found while on its way (spool) or once stored, never missing.
    for memory_id in (ids[0], ids[2999], ids[-1]):
        found = c.get(memory_id)
        assert found is not None and found.id == memory_id
    assert [m.id for m in c.get_many(ids[::100])] == ids[::100]
    assert c.flush(timeout=60)
    assert sorted(stored_ids(tmp_path / "m.db")) == sorted(ids)
    # Stored, so get() reads the store, not the spool segment that still holds its bytes.
    assert c._pipeline.spool is not None
    assert any(ids[-1].encode() in path.read_bytes() for path in segments(tmp_path / "data"))
    assert c._pipeline.spool.find(ids[-1], everything=True) is None
    assert c.search("login fails", tags=["auth"], limit=5)
    s = c.stats()
    assert s.accepted == s.stored == len(ids)
    assert s.queue_depth == 0 and s.spool_pending == 0
    assert s.batches >= 1 and s.batch_write_latency.samples >= 1
    assert s.storer_pid is not None and s.storer_pid != os.getpid()
    assert c.health().status == "ok"
    pid = s.storer_pid
    c.close()
    assert wait_for(lambda: gone(pid))
    assert segments(tmp_path / "data") == []


# A storing process whose loop fails as no store would: a bug.
FAILING_CHILD = """
import memcollect.storer.child as child
def broken(self):
    raise RuntimeError("a bug in the storing loop")
child.Child.run = broken
child.main()
"""


def _start_child(script: str, tmp_path: Path, backend: str) -> subprocess.Popen[bytes]:
    """A storing process, told its settings as the collecting side tells them."""
    settings = msgspec.structs.asdict(Config(backend=backend, data_dir=str(tmp_path)))
    settings.update(durability="memory", storer="thread")
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    assert child.stdin is not None
    child.stdin.write(encode({"protocol": PROTOCOL, "config": settings}) + b"\n")
    child.stdin.flush()
    return child


@pytest.mark.parametrize(
    ("script", "backend", "said"),
    [
        (FAILING_CHILD, "sqlite:///{tmp}/m.db",
         "unexpected RuntimeError at <string>:4: a bug in the storing loop"),
        ("import memcollect.storer.child as c; c.main()", "sqlite:///{tmp}/m.db/in-a-file.db",
         "the SQLite store {tmp}/m.db/in-a-file.db cannot be opened: its directory "
         "{tmp}/m.db cannot be made (File exists)"),
    ],
    ids=["a-bug", "an-unusable-store"],
)  # fmt: skip
def test_a_storing_process_that_fails_says_why_in_one_line_and_exits(
    tmp_path: Path, script: str, backend: str, said: str
) -> None:
    """No traceback, and no abort on the thread still reading the requests as it ends."""
    (tmp_path / "m.db").write_text("a file where the store's directory should be")
    if "in-a-file" not in backend:
        (tmp_path / "m.db").unlink()
    child = _start_child(script, tmp_path, backend.format(tmp=tmp_path))
    try:
        code = child.wait(timeout=120)  # stdin still open: that thread is blocked in it
    finally:
        child.kill()
        _, err = child.communicate()
    assert code == 1
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    prefix = "memcollect storer: stopped, the collecting process starts another: "
    assert lines[0].startswith(prefix + said.format(tmp=tmp_path)), lines


def test_what_process_storing_cannot_do_is_refused_up_front(
    make_collector: Make, tmp_path: Path
) -> None:
    with pytest.raises(mc.ConfigError, match="storer='process' needs durability"):
        make_collector(f"sqlite:///{tmp_path}/m.db", storer="process", durability="memory")
    with pytest.raises(mc.ConfigError, match=r"storer .*must be one of auto, thread, process"):
        make_collector(storer="fork")
    with pytest.raises(mc.ValidationError, match="memory://"):
        make_collector("memory://", storer="process", durability="spool")
    with pytest.raises(mc.ValidationError, match="URL"):
        make_collector(open_backend("memory://"), storer="process", durability="spool")
    with pytest.raises(mc.ValidationError, match="callbacks"):
        process_collector(make_collector, tmp_path, on_stored=lambda batch: None)
    c = process_collector(make_collector, tmp_path)
    with pytest.raises(mc.ValidationError, match="callbacks"):
        c.on_failure(lambda memories, exc: None)


def test_kill_9_of_the_storing_process_loses_nothing(make_collector: Make, tmp_path: Path) -> None:
    c = process_collector(make_collector, tmp_path, batch_size=64)
    ids = [c.collect("note", f"before {i}") for i in range(20_000)]
    first = c.stats().storer_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)  # most likely with ranges sent and not answered
    ids += [c.collect("note", f"after {i}") for i in range(2000)]
    assert c.flush(timeout=60)
    stored = stored_ids(tmp_path / "m.db")
    assert len(stored) == len(set(stored))  # exactly once
    assert set(stored) == set(ids)
    s = c.stats()
    assert s.storer_restarts >= 1 and s.storer_pid not in (None, first)
    assert s.stored >= len(ids)  # what the dead process stored unanswered is stored again


def test_health_says_why_the_storing_process_cannot_start_again(
    make_collector: Make, tmp_path: Path
) -> None:
    c = process_collector(make_collector, tmp_path)
    c.collect("note", "stored before the store was replaced")
    assert c.flush(timeout=60)
    first = c.stats().storer_pid
    assert first is not None
    # The file is replaced under the running process (which keeps its own open): the next
    # process finds no database there.
    for end in ("", "-wal", "-shm"):
        Path(f"{tmp_path}/m.db{end}").unlink(missing_ok=True)
    (tmp_path / "m.db").write_bytes(b"not a database, " * 64)
    os.kill(first, signal.SIGKILL)
    c.collect("note", "kept in the spool meanwhile")

    def said() -> str:
        return " ".join(c.health().reasons)

    assert wait_for(lambda: "cannot be opened" in said(), 60), said()
    assert c.health().status == "failing"
    store = tmp_path / "m.db"
    assert f"the SQLite store {store} cannot be opened: it is not a SQLite database" in said()
    c.close(timeout=1)


def test_a_storing_process_into_postgresql_reads_ahead_and_a_kill_9_loses_nothing(
    make_collector: Make, tmp_path: Path
) -> None:
    schema = f"storer_{uuid.uuid4().hex[:10]}"
    url = f"{require_postgres()}?schema={schema}"
    try:
        # While one range is stored into a server, the next is read: the storing process
        # decides it from the store it opens.
        for store, reads_ahead in ((url, True), (f"sqlite:///{tmp_path}/r.db", False)):
            child = Child(Config(backend=store), io.BytesIO())
            assert child.read_ahead is reads_ahead
            child.close()
        c = make_collector(url, durability="spool", storer="process", batch_size=64)
        ids = [c.collect("note", f"before {i}") for i in range(20_000)]
        first = c.stats().storer_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        ids += [c.collect("note", f"after {i}") for i in range(2000)]
        assert c.flush(timeout=120)
        with psycopg.connect(POSTGRES_URL) as conn:
            stored = [row[0] for row in conn.execute(f'SELECT id FROM "{schema}".memories')]
        assert len(stored) == len(set(stored)) and set(stored) == set(ids)
        assert c.stats().storer_restarts >= 1
        c.close()
    finally:
        drop_schema(schema)


def test_a_range_the_read_ahead_could_not_read_is_read_by_the_storing_thread_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = f"storer_{uuid.uuid4().hex[:10]}"
    url = f"{require_postgres()}?schema={schema}"
    memories = [make_memory("note", f"read late {i}", None, None, None, None, None, None,
                            1 << 16) for i in range(10)]  # fmt: skip
    segment = tmp_path / "seg-1.log"
    segment.write_bytes(b"".join(encode_frame(m) for m in memories))
    requests = io.BytesIO(encode(Range(0, str(segment), 0, segment.stat().st_size)) + b"\n")
    answers = io.BytesIO()
    child = Child(Config(backend=url), answers)
    try:
        assert child.read_ahead

        def unreadable(item: Range) -> None:
            raise OSError("the disk hiccupped")

        monkeypatch.setattr(child, "read_range", unreadable)
        child.listen(requests)  # queues the range unread, then the end of input
        child.run()  # reads and stores it, answers, and returns at the end of input
        done = [decode_done(line) for line in answers.getvalue().splitlines()]
        assert [(d.number, d.records, d.stored_to) for d in done if d.number >= 0] == [(0, 10, -1)]
        assert child.backend.count() == 10
    finally:
        child.close()
        drop_schema(schema)


PRODUCER = """
import sys, memcollect as mc
c = mc.MemoryCollector(sys.argv[1], data_dir=sys.argv[2], durability="spool", storer="process")
print(c.stats().storer_pid, flush=True)
for i in range(1_000_000):
    print(c.collect("error", f"item {i}", {"i": i}), flush=True)
"""


def test_kill_9_of_the_collecting_process_loses_nothing(tmp_path: Path) -> None:
    url, data = f"sqlite:///{tmp_path}/m.db", tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PRODUCER), url, str(data)],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    assert proc.stdout is not None
    storer_pid = int(proc.stdout.readline())
    printed = []
    for line in proc.stdout:
        printed.append(line.strip())
        if len(printed) >= 3000:
            proc.send_signal(signal.SIGKILL)
            break
    rest, _ = proc.communicate(timeout=30)
    printed += [x for x in rest.split("\n") if len(x) == 26]
    assert proc.returncode == -signal.SIGKILL
    # The orphaned storing process sees its input end, answers what it has, and exits.
    assert wait_for(lambda: gone(storer_pid))
    with mc.MemoryCollector(url, data_dir=str(data), durability="spool") as recovered:
        assert recovered.flush(timeout=60)
    stored = stored_ids(tmp_path / "m.db")
    assert len(stored) == len(set(stored))
    assert set(printed) <= set(stored)
    assert segments(data) == []


def test_an_outage_is_retried_in_the_storing_process_and_shows_here(
    make_collector: Make, tmp_path: Path
) -> None:
    db = tmp_path / "m.db"
    c = make_collector(
        f"sqlite:///{db}?busy_timeout=0.02",
        storer="process",
        durability="spool",
        max_retries=2,
        retry_max=0.05,
    )
    c.collect("note", "create the file")
    assert c.flush(timeout=60)
    with write_lock_held(db):
        ids = [c.collect("note", f"during {i}") for i in range(100)]
        assert wait_for(lambda: c.stats().retried > 0)
        assert wait_for(lambda: c.health().status != "ok")
        assert any("lock" in reason for reason in c.health().reasons)
        assert not c.flush(timeout=0.2)
    assert c.flush(timeout=60)
    assert set(ids) <= set(stored_ids(db))
    assert wait_for(lambda: c.health().status == "ok")
    assert c.stats().failed > 0


def test_close_at_the_deadline_keeps_the_rest_for_the_next_start(tmp_path: Path) -> None:
    db, data = tmp_path / "m.db", tmp_path / "data"
    url = f"sqlite:///{db}?busy_timeout=0.02"
    c = mc.MemoryCollector(url, data_dir=str(data), durability="spool", storer="process")
    c.collect("note", "create the file")
    assert c.flush(timeout=60)
    with write_lock_held(db):
        ids = [c.collect("note", f"late {i}") for i in range(100)]
        c.close(timeout=0.3)
        assert {m.id for m in iter_spool_records(data / "spool")} >= set(ids)
    with mc.MemoryCollector(url, data_dir=str(data), durability="spool") as next_start:
        assert next_start.flush(timeout=60)
    assert set(ids) <= set(stored_ids(db))


FORKER = """
import os, sys, memcollect as mc
c = mc.MemoryCollector(sys.argv[1], data_dir=sys.argv[2], durability="spool", storer="process")
c.collect("note", "parent before fork")
parent_storer = c.stats().storer_pid
pid = os.fork()
if pid == 0:
    c.collect("note", "child")
    assert c.flush(timeout=60), "child flush"
    assert c.stats().storer_pid not in (None, parent_storer), "the parent's storing process"
    c.close()
    os._exit(0)
c.collect("note", "parent after fork")
_, status = os.waitpid(pid, 0)
assert status == 0, status
idle = os.fork()
if idle == 0:
    # A child that never collects starts no storing process just to close.
    c.close()
    os._exit(0 if c._pipeline.storer_pid() == parent_storer else 1)
_, status = os.waitpid(idle, 0)
assert status == 0, "the idle child started a storing process"
assert c.flush(timeout=60), "parent flush"
c.close()
print("ok")
"""


def test_after_fork_the_child_stores_through_a_storing_process_of_its_own(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    assert run_script(FORKER, f"sqlite:///{db}", str(tmp_path / "d")).strip() == "ok"
    with sqlite3.connect(db) as conn:
        contents = sorted(row[0] for row in conn.execute("SELECT content FROM memories"))
    assert contents == ["child", "parent after fork", "parent before fork"]


FORGETFUL = """
import sys, memcollect as mc
c = mc.MemoryCollector(sys.argv[1], data_dir=sys.argv[2], durability="spool", storer="process")
for i in range(5000):
    c.collect("note", f"left to the exit {i}")
"""


def test_a_script_that_never_closes_still_stores_everything_at_exit(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    run_script(FORGETFUL, f"sqlite:///{db}", str(tmp_path / "d"))
    assert len(set(stored_ids(db))) == 5000
    assert segments(tmp_path / "d") == []


def test_a_storing_process_that_cannot_start_is_reported_and_loses_nothing(
    make_collector: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As after an upgrade on disk under a running application: the storing process speaks
    # another protocol, refuses, and exits, however often it is started again.
    monkeypatch.setattr(storer, "PROTOCOL", 999)
    c = process_collector(make_collector, tmp_path)
    ids = [c.collect("note", f"kept {i}") for i in range(100)]
    assert wait_for(lambda: any("not running (last exit code 3" in r for r in c.health().reasons))
    assert c.health().status == "failing"
    assert not c.flush(timeout=0.3)
    assert c.stats().spool_pending == 100
    c.close(timeout=1)
    with mc.MemoryCollector(
        f"sqlite:///{tmp_path}/m.db", data_dir=str(tmp_path / "data"), durability="spool"
    ) as next_start:
        assert next_start.flush(timeout=60)
    assert set(stored_ids(tmp_path / "m.db")) == set(ids)


def test_a_poison_record_is_dead_lettered_by_the_storing_process_and_retried(
    make_collector: Make, tmp_path: Path
) -> None:
    db = tmp_path / "m.db"
    c = process_collector(make_collector, tmp_path)
    with sqlite3.connect(db) as conn:
        # A record the store refuses for good (a constraint error), and only that one.
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON memories WHEN NEW.content = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    ids = [c.collect("note", f"good {i}") for i in range(50)]
    poison = c.collect("note", "poison")
    ids += [c.collect("note", f"good {i}") for i in range(50, 100)]
    assert c.flush(timeout=60)
    assert set(stored_ids(db)) == set(ids)
    letters = c.dead_letters()
    assert [d.memory.id for d in letters] == [poison]
    assert "refused by the test" in letters[0].error
    assert c.stats().dead_lettered == 1
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER refuse")
    assert c.retry_dead_letters() == 1
    assert c.flush(timeout=60)
    assert set(stored_ids(db)) == {*ids, poison}
    assert c.dead_letters() == []


def test_a_delete_here_and_a_move_back_in_the_storing_process_take_turns(
    make_collector: Make, tmp_path: Path
) -> None:
    db = tmp_path / "m.db"
    fallback = open_backend(f"sqlite:///{tmp_path}/fallback.db")
    fallback.open()
    c = make_collector(
        f"sqlite:///{db}?busy_timeout=0.02", storer="process", durability="spool",
        fallback=fallback.url, max_retries=1, retry_max=0.05, batch_size=10,
    )  # fmt: skip
    first = c.collect("note", "create the file")
    assert c.flush(timeout=60)
    move_lock = shared_lock(fallback.move_lock_path())
    with ExitStack() as outage:
        outage.enter_context(write_lock_held(db))
        doomed = [c.collect("note", f"private {i}", session="s-42") for i in range(30)]
        kept = [c.collect("note", f"public {i}", session="s-7") for i in range(30)]
        assert wait_for(lambda: fallback.count() == 60)
        move_lock.__enter__()  # as a delete() would, before the store comes back
    try:
        assert not wait_for(lambda: len(stored_ids(db)) > 1, seconds=0.5)  # no move meanwhile
        deleted: list[int] = []
        deleting = threading.Thread(target=lambda: deleted.append(c.delete(session="s-42")))
        deleting.start()
    finally:
        move_lock.__exit__(None, None, None)
    deleting.join(60)
    assert deleted == [30]
    assert wait_for(lambda: fallback.count() == 0)
    assert sorted(stored_ids(db)) == sorted([first, *kept])
    assert not set(doomed) & set(stored_ids(db))
    assert wait_for(lambda: c.stats().moved_to_primary >= 30)  # reported by a heartbeat


def test_the_storing_process_is_started_again_however_often_it_fails_to_start(
    make_collector: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process at all (Popen fails), then two that die before answering: the dispatcher
    keeps trying, with backoff, and everything is stored once one starts."""
    real = storer.child_command()
    attempts = iter(
        [
            [str(tmp_path / "no-such-python")],
            [sys.executable, "-c", "import sys; sys.exit(7)"],
            [sys.executable, "-c", "import sys; sys.exit(7)"],
        ]
    )
    monkeypatch.setattr(storer, "child_command", lambda: next(attempts, real))
    c = process_collector(make_collector, tmp_path)  # the first start fails: no raise here
    ids = [c.collect("note", f"kept {i}") for i in range(100)]
    assert c.flush(timeout=60)
    assert set(stored_ids(tmp_path / "m.db")) == set(ids)
    assert c.stats().storer_restarts >= 3
    assert c.health().status == "ok"
