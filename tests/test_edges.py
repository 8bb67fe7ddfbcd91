"""The edges a user meets first: a default install, odd files, and the environment."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import memcollect as mc

from .conftest import ROOT


def run_python(code: str, tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a script in a fresh interpreter using this checkout's memcollect."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_delete_works_without_numpy(tmp_path: Path) -> None:
    """The default install has no numpy: a delete on SQLite must not need it."""
    result = run_python(
        """
        import sys
        sys.modules["numpy"] = None  # as if numpy were not installed: `import numpy` fails
        import memcollect as mc
        with mc.MemoryCollector("sqlite:///m.db", durability="memory") as c:
            ids = [c.collect("bug", f"bug {i}") for i in range(3)]
            assert c.flush()
            print(c.delete(ids[:2]), c.count())
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "1"]


def test_numpy_is_imported_by_one_thread_at_a_time(tmp_path: Path) -> None:
    """A search and the worker importing numpy at once saw it half initialized: every
    import of numpy memcollect makes goes through one lock."""
    result = run_python(
        """
        import builtins, sys, threading
        from memcollect import semantic

        real_import = builtins.__import__
        inside, most, entered = {}, [0], [0]
        everyone_waits = threading.Event()
        guard = threading.Lock()

        def counting_import(name, *args, **kwargs):
            if name != "numpy" or "numpy" in sys.modules and semantic._numpy is not None:
                return real_import(name, *args, **kwargs)
            me = threading.get_ident()
            with guard:  # threads inside an import of numpy (numpy imports itself too)
                inside[me] = inside.get(me, 0) + 1
                most[0] = max(most[0], len(inside))
            # Hold the first import until every thread has asked for numpy.
            everyone_waits.wait(30)
            try:
                return real_import(name, *args, **kwargs)
            finally:
                with guard:
                    inside[me] -= 1
                    if not inside[me]:
                        del inside[me]

        builtins.__import__ = counting_import

        def ask():
            with guard:
                entered[0] += 1
                if entered[0] == 8:
                    everyone_waits.set()
            semantic.numpy()

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        print(most[0], semantic.numpy().__name__)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "numpy"]


def test_a_half_initialized_import_is_not_called_a_missing_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a module that is not installed means the extra is missing."""
    import builtins

    from memcollect import semantic

    real_import = builtins.__import__

    def broken(name: str, *args: object, **kwargs: object) -> object:
        if name == "sentence_transformers":
            raise ImportError("cannot import name 'x' from partially initialized module")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(ImportError, match="partially initialized"):
        semantic._sentence_transformer("/nowhere")


@pytest.mark.slow
def test_semantic_and_mem0_stores_leave_the_environment_alone(tmp_path: Path) -> None:
    """OPENAI_API_KEY, HF_HUB_OFFLINE and the like belong to the host's own code."""
    result = run_python(
        f"""
        import os
        before = dict(os.environ)
        import memcollect as mc
        for url in ("sqlite:///s.db?semantic=1", "mem0:///{tmp_path}/mem0"):
            with mc.MemoryCollector(url, durability="memory") as c:
                c.collect("bug", "Login fails on Safari 17")
                assert c.flush(60)
                assert c.search("browser sign-in", mode="semantic")
        ours = ("OPENAI", "HF_", "TRANSFORMERS", "MEM0", "TOKENIZERS")
        print(sorted(k for k in set(os.environ) ^ set(before) if k.startswith(ours)))
        """,
        tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
    assert "Loading weights" not in result.stderr


def test_the_package_ships_py_typed() -> None:
    """Users' type checkers see memcollect's types."""
    assert (Path(mc.__file__).parent / "py.typed").is_file()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs of its own (the machine's root can mount one), unmounted after."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        message = f"cannot mount a tmpfs to fill ({done.stderr.strip()}): run as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip("!!! SKIPPED, NOT TESTED: " + message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> None:
    """Take every free byte of the disk."""
    with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


@pytest.mark.parametrize("storer", ["thread", "process", "auto"])
def test_a_full_disk_is_logged_once_not_once_a_memory(
    small_disk: Path, tmp_path: Path, storer: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="memcollect")
    backend = "memory://" if storer == "thread" else f"sqlite:///{tmp_path}/m.db"
    with mc.MemoryCollector(backend, data_dir=str(small_disk), storer=storer) as c:
        fill(small_disk)
        for i in range(2000):
            c.collect("note", f"memory {i}")
        assert c.flush(30)
        failed = [r.getMessage() for r in caplog.records if "spool write failed" in r.getMessage()]
        assert len(failed) == 1, failed
        # Both keep them in RAM and store them from there (the storing process cannot reach
        # them: a thread of this process stores them).
        assert "kept in RAM" in failed[0]
        assert c.count() == 2000
        assert not c.stats().dropped_by_reason
        assert c.health().status != "ok"


def test_odd_entries_in_the_spool_are_skipped_and_the_collector_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with mc.MemoryCollector("memory://", data_dir=str(data)) as c:
        c.collect("note", "before")
    main = data / "spool" / "main"
    (main / "seg-00000001.log").mkdir()  # a directory named like a segment
    (main / "seg-00000002.log").symlink_to(tmp_path / "nowhere")  # a dangling link
    other = data / "spool" / "p1-dead"
    (other / "lock").mkdir(parents=True)  # a lock that is a directory
    taken = data / "spool" / "p2-dead"
    taken.mkdir()
    (taken / "lock").mkdir()
    backend = f"sqlite:///{tmp_path}/m.db"
    for attempt in range(2):
        with mc.MemoryCollector(backend, data_dir=str(data)) as c:
            c.collect("note", f"after {attempt}")
            assert c.flush(10)
            assert c.count() == attempt + 1
    assert (main / "seg-00000001.log").is_dir()  # left as found: not ours to remove


def test_starts_and_closes_racing_on_one_data_dir_never_raise(tmp_path: Path) -> None:
    """Real processes starting and closing collectors on one data dir at once: spool
    directories come and go under each other's feet, and nothing raises."""
    script = f"""
        import sys
        import memcollect as mc
        errors = 0
        for i in range(15):
            try:
                c = mc.MemoryCollector("memory://", data_dir={str(tmp_path / "shared")!r})
                c.collect("note", f"m {{i}}")
                c.close()
            except Exception as exc:
                errors += 1
                print(type(exc).__name__, exc, file=sys.stderr)
        print(errors)
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script)],
            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert [out.strip() for out, _ in results] == ["0"] * 8, results
