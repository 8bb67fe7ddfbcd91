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
    # Only the first chunk, faulted in as the segment opens: a new file's first written page
    # costs milliseconds, which the first collect() must not pay.
    assert resident_kb(path) == 256
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


def append_notes(spool: Spool, count: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + count):
        memory = make_memory("note", f"record {i} " + "x" * 100, None, None, None, None, None,
                             None, 1 << 20)  # fmt: skip
        ids.append(memory.id)
        with spool.lock:
            assert spool.append_locked(encode_frame(memory), 1) is not None
    return ids


def test_an_idle_spool_lets_go_of_its_pages_and_its_records_stay(tmp_path: Path) -> None:
    spool = spool_of(tmp_path, 16 << 20)
    path = spool.current.path
    ids = append_notes(spool, 3000)  # ~400 kB: below the megabyte let go as it is written
    spool.prefault()
    assert resident_kb(path) >= 2048
    spool.release_pages()
    assert resident_kb(path) == 0
    # Appending again after a release faults the pages back in; every record is kept.
    ids += append_notes(spool, 3000, 3000)
    spool.prefault()
    assert resident_kb(path) >= 2048
    assert [m.id for m in iter_spool_records(tmp_path)] == ids
    spool.close()


def test_a_dispatcher_releases_the_pages_only_after_rounds_without_appends(
    tmp_path: Path,
) -> None:
    from memcollect.spool import _IDLE_ROUNDS

    spool = spool_of(tmp_path, 16 << 20)
    path = spool.current.path
    for round_ in range(3 * _IDLE_ROUNDS):  # busy: an append before every round
        append_notes(spool, 10, round_ * 10)
        spool.release_when_idle()
        assert resident_kb(path) >= 2048
    for _ in range(_IDLE_ROUNDS - 1):
        spool.release_when_idle()
    assert resident_kb(path) >= 2048  # not idle long enough yet
    spool.release_when_idle()
    assert resident_kb(path) == 0
    append_notes(spool, 10, 1000)
    spool.release_when_idle()  # busy again: faulted in ahead once more
    assert resident_kb(path) >= 2048
    spool.close()


@pytest.mark.parametrize("storer", ["thread", "auto"])
def test_a_collector_caught_up_holds_no_spool_pages(tmp_path: Path, storer: str) -> None:
    import memcollect as mc

    from .services import wait_for

    c = mc.MemoryCollector(f"sqlite:///{tmp_path}/c.db", data_dir=str(tmp_path / "data"),
                           storer=storer)  # fmt: skip
    try:
        for i in range(3000):
            c.collect("note", f"record {i}")
        assert c.flush(30)
        spool = c._pipeline.spool
        assert spool is not None
        assert wait_for(lambda: resident_kb(spool.current.path) == 0)
        c.collect("note", "one more")
        assert c.flush(30)
        assert c.count() == 3001
    finally:
        c.close()
