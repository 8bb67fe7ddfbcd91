"""The model cache: processes starting at once make each entry once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from memcollect import semantic

from .services import wait_for

# Makes the entry unless it finds it made, under the cache's lock, and says which it did.
MAKER = """
import sys
from pathlib import Path
from memcollect.semantic import _one_maker
target = Path(sys.argv[1])
with _one_maker(target):
    print("found" if target.exists() else "made", flush=True)
    if not target.exists():
        target.write_text("made by the second process")
"""


def _waits_for_a_lock(pid: int) -> bool:
    """Whether the process is blocked on a file lock (/proc/locks marks waiters "->")."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "->" and fields[5] == str(pid):
            return True
    return False


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks")
def test_a_process_finds_the_entry_another_made_while_it_waited(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "onnx" / "model.onnx"
    with semantic._one_maker(target):  # this process is making the entry
        second = subprocess.Popen(
            [sys.executable, "-c", MAKER, str(target)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert wait_for(lambda: _waits_for_a_lock(second.pid), 60), "it did not wait"
            target.write_text("made by the first process")
        except BaseException:
            second.kill()
            second.communicate()
            raise
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0
    assert out.split() == ["found"]
    assert target.read_text() == "made by the first process"


def test_an_unwritable_cache_makes_without_the_lock(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should go")
    target = blocker / "onnx" / "model.onnx"
    entered = False
    with semantic._one_maker(target):
        entered = True  # the making runs, and fails where it always reported its failure
    assert entered
    assert not target.exists()
