"""The lock that moves from the fallback and delete() share, across threads and processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from memcollect.locks import SharedLock, shared_lock


def test_one_lock_per_path_in_a_process_and_one_of_its_own_without_a_path(tmp_path: Path) -> None:
    path = str(tmp_path / "moving.lock")
    assert shared_lock(path) is shared_lock(path)
    assert shared_lock(path) is shared_lock(os.path.relpath(path))
    assert shared_lock(None) is not shared_lock(None)


def test_threads_take_it_one_at_a_time(tmp_path: Path) -> None:
    lock = shared_lock(str(tmp_path / "threads.lock"))
    inside, most = [0], [0]
    guard = threading.Lock()

    def enter() -> None:
        for _ in range(200):
            with lock:
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=enter) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1


HOLDER = """
import sys, time
from memcollect.locks import SharedLock
lock = SharedLock(sys.argv[1])
with lock:
    print("held", flush=True)
    sys.stdin.readline()  # hold it until told
"""


def test_another_process_waits_until_the_holder_lets_go(tmp_path: Path) -> None:
    path = str(tmp_path / "process.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        entered = threading.Event()

        def enter() -> None:
            with SharedLock(path):
                entered.set()

        waiter = threading.Thread(target=enter, daemon=True)
        waiter.start()
        # While the other process holds it, this one cannot have it: a non-blocking try says so.
        import fcntl

        fd = os.open(path, os.O_RDWR)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                free = True
            except OSError:
                free = False
        finally:
            os.close(fd)
        assert not free and not entered.is_set()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert entered.wait(30)
    finally:
        holder.kill()
        holder.communicate(timeout=30)  # closes its pipes


def test_a_lock_file_that_cannot_be_made_leaves_only_the_thread_lock(tmp_path: Path) -> None:
    lock = SharedLock(str(tmp_path / "no-such-dir" / "x.lock"))
    with lock:
        pass  # not an error: moves and deletes go on, guarded within this process
    assert lock.path is None
