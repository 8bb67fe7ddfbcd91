"""The spool faults in the pages its next appends will write, ahead of collect()."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from memcollect.frames import encode_frame
from memcollect.spool import Spool, iter_spool_records
from memcollect.validate import make_memory

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/smaps is Linux's")


def resident_kb(path: Path) -> int:
    """How much of the mapping of `path` is in this process's page tables, in kB."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.endswith(str(path)):
            for field in lines[i + 1 : i + 25]:
                if field.startswith("Rss:"):
                    return int(field.split()[1])
    return 0


def spool_of(tmp_path: Path, segment_bytes: int) -> Spool:
    return Spool(tmp_path, fsync=False, fsync_interval=0.02, max_bytes=1 << 30,
                 segment_bytes=segment_bytes)  # fmt: skip


def test_the_pages_ahead_of_the_writes_are_faulted_in(tmp_path: Path) -> None:
    spool = spool_of(tmp_path, 8 << 20)
    path = spool.current.path
    assert resident_kb(path) == 0  # nothing written: nothing mapped in yet
    spool.prefault()
    assert resident_kb(path) >= 2048  # two megabytes ahead
    assert resident_kb(path) < 4096  # and not the whole segment
    assert spool.close() is True


def test_segments_smaller_than_a_page_are_prefaulted_and_written_as_before(
    tmp_path: Path,
) -> None:
    spool = spool_of(tmp_path, 600)
    ids = []
    for i in range(20):
        memory = make_memory("note", f"m{i}", None, None, None, None, None, None, 1 << 20)
        ids.append(memory.id)
        with spool.lock:
            assert spool.append_locked(encode_frame(memory), 1) is not None
        spool.prefault()  # returns: a segment of less than a page is done in one step
    assert [m.id for m in iter_spool_records(tmp_path)] == ids
    spool.close()


def test_pages_written_leave_the_mapping_and_the_records_stay(tmp_path: Path) -> None:
    spool = spool_of(tmp_path, 16 << 20)
    path = spool.current.path
    frames = []
    for i in range(40_000):  # ~6 MB of records
        memory = make_memory("note", f"record {i} " + "x" * 100, None, None, None, None, None,
                             None, 1 << 20)  # fmt: skip
        frames.append(memory.id)
        with spool.lock:
            assert spool.append_locked(encode_frame(memory), 1) is not None
        if i % 1000 == 0:
            spool.prefault()
    spool.prefault()
    assert spool.current.size > 6 << 20
    # What is mapped in: the megabyte not yet let go, and the two prefaulted ahead.
    assert resident_kb(path) <= 3 * 1024 + 512
    assert [m.id for m in iter_spool_records(tmp_path)] == frames
    spool.close()
