"""The spool: framing, torn and corrupt tails, spill to disk, flush across the backlog."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import memcollect as mc
from memcollect.backends import open_backend
from memcollect.spool import (
    HEADER,
    Spool,
    encode_frame,
    iter_spool_records,
    read_frames,
    read_memories,
)
from memcollect.testing import FaultyBackend
from memcollect.validate import make_memory

Make = Callable[..., mc.MemoryCollector]


def mem(text: str) -> mc.Memory:
    return make_memory("note", text, {"k": text}, None, ["t"], "p", "a", "s", 65536)


def test_frames_round_trip() -> None:
    records = [mem(f"record {i} ✓") for i in range(5)]
    data = b"".join(encode_frame(m) for m in records)
    decoded, corrupt, stop = read_frames(data)
    assert [m for _, m in decoded] == records
    assert corrupt == 0 and stop == len(data)


def test_a_torn_last_record_at_every_offset_keeps_all_earlier_records() -> None:
    records = [mem(f"kept {i}") for i in range(4)]
    head = b"".join(encode_frame(m) for m in records)
    last = encode_frame(mem("torn"))
    for cut in range(len(last)):
        decoded, corrupt, _ = read_frames(head + last[:cut])
        assert [m for _, m in decoded] == records, cut
        assert corrupt == (1 if cut else 0), cut
    decoded, corrupt, _ = read_frames(head + last)
    assert len(decoded) == 5 and corrupt == 0


def test_a_corrupt_record_in_the_middle_is_skipped_and_the_rest_recovered() -> None:
    records = [mem(f"r{i}") for i in range(5)]
    frames = [bytearray(encode_frame(m)) for m in records]
    frames[2][HEADER.size + 3] ^= 0xFF  # a flipped bit in the payload: CRC mismatch
    decoded, corrupt, _ = read_frames(b"".join(frames))
    assert [m.content for _, m in decoded] == ["r0", "r1", "r3", "r4"]
    assert corrupt == 1


def test_the_preallocated_zero_tail_of_a_segment_is_a_clean_end() -> None:
    frames = encode_frame(mem("a")) + encode_frame(mem("b"))
    decoded, corrupt, stop = read_frames(frames + bytes(4096))
    assert [m.content for _, m in decoded] == ["a", "b"]
    assert corrupt == 0 and stop == len(frames)
    torn = frames + encode_frame(mem("c"))[:20] + bytes(4096)  # killed mid-copy
    decoded, corrupt, _ = read_frames(torn)
    assert [m.content for _, m in decoded] == ["a", "b"] and corrupt == 1


def test_read_memories_reads_whole_frames_and_falls_back_on_anything_else() -> None:
    records = [mem(f"r{i} ✓") for i in range(5)]
    frames = [bytearray(encode_frame(m)) for m in records]
    assert read_memories(b"".join(frames)) == records
    assert read_memories(b"") == []
    # A flipped bit, a torn tail, a zero tail: the same answer as read_frames gives.
    frames[2][HEADER.size + 3] ^= 0xFF
    assert [m.content for m in read_memories(b"".join(frames))] == ["r0 ✓", "r1 ✓", "r3 ✓", "r4 ✓"]
    whole = b"".join(encode_frame(m) for m in records)
    assert read_memories(whole + encode_frame(mem("torn"))[:15]) == records
    assert read_memories(whole + bytes(4096)) == records


def test_incomplete_tail_is_not_corrupt_while_still_being_written() -> None:
    data = encode_frame(mem("a")) + encode_frame(mem("b"))[:7]
    decoded, corrupt, stop = read_frames(data, final=False)
    assert len(decoded) == 1 and corrupt == 0 and stop == len(encode_frame(mem("a")))


def test_segments_rotate_and_are_deleted_once_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False, fsync_interval=0.02, max_bytes=1 << 30,
                  segment_bytes=600)  # fmt: skip
    placed = []
    for i in range(20):
        frame = encode_frame(mem(f"m{i}"))
        with spool.lock:
            result = spool.append_locked(frame, 1)
        assert result is not None
        placed.append(result[0])
    assert len({seg.number for seg in placed}) > 2
    files_before = len(list(spool.dir.glob("seg-*.log")))
    spool.ack(placed[:-1])
    spool.seal()
    spool.ack(placed[-1:])
    assert len(list(spool.dir.glob("seg-*.log"))) < files_before
    assert spool.pending() == 0
    assert spool.close() is True
    assert list(spool.dir.glob("seg-*.log")) == []


def append(spool: Spool, text: str) -> str:
    """Append one record; its id."""
    memory = mem(text)
    with spool.lock:
        assert spool.append_locked(encode_frame(memory), 1) is not None
    return memory.id


def test_the_next_segment_is_made_ahead_and_the_rotation_takes_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False, fsync_interval=0.02, max_bytes=1 << 30,
                  segment_bytes=64 << 10)  # fmt: skip
    first = spool.current
    ids = [append(spool, "before half")]
    spool.prefault()
    successor = first.path.with_name(f"seg-{first.number + 1:08d}.log")
    assert not successor.exists()  # not before the segment is a quarter written
    while spool.current.size * 2 < 64 << 10:
        ids.append(append(spool, f"filling {len(ids)}"))
    spool.prefault()  # what the background thread calls: the successor's file is made now
    assert successor.exists() and successor not in spool.segments
    while spool.current is first:
        ids.append(append(spool, f"filling {len(ids)}"))
    assert spool.current.path == successor  # the rotation took the file made ahead
    while spool.current.size * 2 < 64 << 10:
        ids.append(append(spool, f"second {len(ids)}"))
    spool.prefault()
    third = successor.with_name(f"seg-{first.number + 2:08d}.log")
    assert third.exists()
    assert [m.id for m in iter_spool_records(tmp_path)] == ids  # the empty file holds none
    assert spool.close() is False  # nothing was stored: the records stay for the next start
    assert not third.exists()  # a file made ahead and never written to goes at close
    again = Spool(tmp_path, fsync=False, fsync_interval=0.02, max_bytes=1 << 30)
    assert again.adopted_records == len(ids)
    again.close()


def test_a_file_made_ahead_and_left_by_a_crash_is_read_as_empty_and_removed(
    tmp_path: Path,
) -> None:
    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "src")!r})
from memcollect.frames import encode_frame
from memcollect.spool import Spool
from memcollect.validate import make_memory
from pathlib import Path
spool = Spool(Path({str(tmp_path)!r}), fsync=False, fsync_interval=0.02, max_bytes=1 << 30,
              segment_bytes=64 << 10)
n = 0
while spool.current.size * 2 < 64 << 10:
    memory = make_memory("note", f"kept {{n}}", None, None, None, None, None, None, 1 << 16)
    with spool.lock:
        spool.append_locked(encode_frame(memory), 1)
    n += 1
spool.prefault()
print(n, spool.current.number, flush=True)
os._exit(0)  # no close(): the file made ahead is left on disk
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    written, number = map(int, done.stdout.split())
    left = tmp_path / "main" / f"seg-{number + 1:08d}.log"
    assert left.exists()
    spool = Spool(tmp_path, fsync=False, fsync_interval=0.02, max_bytes=1 << 30)
    assert spool.adopted_records == written and spool.corrupt == 0
    assert not left.exists()
    assert spool.current.number > number + 1  # a new file, not the one left behind
    spool.close()


def test_find_many_reads_each_segment_once_for_any_number_of_ids(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False, fsync_interval=0.02, max_bytes=1 << 30,
                  segment_bytes=600)  # fmt: skip
    memories = [mem(f"m{i}") for i in range(30)]
    for memory in memories:
        with spool.lock:
            assert spool.append_locked(encode_frame(memory), 1) is not None
    assert len(spool.segments) > 3
    unknown = "01nosuchid0000000000000000"
    # Few ids (looked for in the bytes) and many (each span decoded): the same answers.
    for asked in (memories[:2] + memories[-1:], memories[::2]):
        found = spool.find_many([m.id for m in asked] + [unknown], everything=True)
        assert found == {m.id: m for m in asked}
    assert spool.find(memories[17].id, everything=True) == memories[17]
    assert spool.find(unknown, everything=True) is None
    assert spool.find_many([], everything=True) == {}
    # Without everything=True, only what was not yet read back into RAM (none here).
    assert spool.find_many([m.id for m in memories]) == {}
    spool.ack([seg for seg in spool.segments.values() for _ in range(seg.outstanding)])
    spool.close()


def test_spool_mode_stores_everything_and_cleans_up(make_collector: Make, tmp_path: Path) -> None:
    c = make_collector(durability="spool")
    ids = [c.collect("note", f"n{i}") for i in range(300)]
    assert c.flush()
    assert c.count() == 300 and {m.id for m in c.recent(300)} == set(ids)
    s = c.stats()
    assert s.spool_pending == 0
    c.close()
    assert list((tmp_path / "data" / "spool").rglob("seg-*.log")) == []


def test_an_outage_costs_disk_not_ram(make_collector: Make, tmp_path: Path) -> None:
    backend = FaultyBackend()
    backend.go_down()
    c = make_collector(backend, durability="spool", max_queue_size=50, batch_size=20)
    ids = [c.collect("note", f"n{i}", priority="low" if i % 2 else "high") for i in range(2000)]
    s = c.stats()
    assert s.queue_depth <= 50  # RAM holds a window ...
    assert s.spool_pending == 2000  # ... the spool holds everything
    assert s.dropped == 0 and s.accepted == 2000
    disk_only = c.get(ids[-1])  # read-your-writes reaches the disk backlog
    assert disk_only is not None and disk_only.content == "n1999"
    # And for many ids at once: those on disk, in RAM, and one unknown, in the order asked.
    asked = [ids[-1], ids[0], "01nosuchid0000000000000000", *ids[1000:1990:90]]
    assert [m.id for m in c.get_many(asked)] == [ids[-1], ids[0], *ids[1000:1990:90]]
    backend.come_back()
    assert c.flush(timeout=60)
    assert backend.inner.count() == 2000
    assert len(backend.written) == len(set(backend.written)) == 2000
    assert c.stats().spool_pending == 0


def test_a_spill_that_spans_segments_and_adopted_records_is_all_read_back(
    tmp_path: Path,
) -> None:
    data = tmp_path / "d"
    backend = FaultyBackend()
    backend.go_down()
    first = mc.MemoryCollector(backend, durability="spool", data_dir=str(data), max_queue_size=5,
                               retry_base=0.001, retry_max=0.01)  # fmt: skip
    old = {first.collect("note", f"old {i}") for i in range(40)}
    first.close(timeout=0.1)  # leaves them in the spool
    backend.come_back()
    second = mc.MemoryCollector(backend, durability="spool", data_dir=str(data), max_queue_size=5,
                                batch_size=5)  # fmt: skip
    assert second._pipeline.spool is not None
    second._pipeline.spool.segment_bytes = (
        2000  # rotate often while spilling behind the adopted ones
    )
    new = {second.collect("note", f"new {i} " + "y" * 100) for i in range(200)}
    assert second.flush(timeout=60)
    second.close()
    stored = [m.id for m in backend.inner.recent(1000)]
    assert set(stored) == old | new and len(stored) == 240


def test_a_full_spool_falls_back_to_the_ram_policy(make_collector: Make) -> None:
    backend = FaultyBackend()
    backend.go_down()
    c = make_collector(backend, durability="spool", max_spool_bytes=1 << 20,
                       max_queue_size=10, batch_timeout=30.0)  # fmt: skip
    big = "x" * 60_000
    for i in range(30):
        c.collect("note", f"{i} {big}")
    s = c.stats()
    assert s.spool_bytes <= 1 << 20
    assert s.dropped_by_reason.get("queue_full", 0) > 0
    health = c.health()
    assert health.status != "ok" and any("max_spool_bytes" in r for r in health.reasons)
    backend.come_back()


def test_fsync_mode_stores_and_syncs(make_collector: Make) -> None:
    c = make_collector(durability="fsync", fsync_interval=0.001)
    for i in range(100):
        c.collect("decision", f"d{i}")
    assert c.flush()
    assert c.count() == 100


def test_close_at_the_deadline_keeps_the_rest_for_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "d"
    url = f"sqlite:///{tmp_path}/store.db"
    backend = FaultyBackend(open_backend(url))  # fmt: skip
    backend.go_down()
    c = mc.MemoryCollector(backend, durability="spool", data_dir=str(data), retry_base=0.001,
                           retry_max=0.01)  # fmt: skip
    ids = {c.collect("note", f"n{i}") for i in range(500)}
    c.close(timeout=0.2)
    assert c.stats().dropped == 0  # not lost: on disk
    assert {m.id for m in iter_spool_records(data / "spool")} == ids
    with mc.MemoryCollector(url, durability="spool", data_dir=str(data)) as again:
        assert again.flush()
        assert again.stats().replayed == 500
        assert {m.id for m in again.recent(1000)} == ids


@pytest.mark.parametrize("mode", ["spool", "fsync"])
def test_collect_batch_and_async_in_durable_modes(make_collector: Make, mode: str) -> None:
    import asyncio

    c = make_collector(durability=mode)
    c.collect_batch([{"category": "qa", "content": f"b{i}"} for i in range(50)])
    asyncio.run(c.collect_async("qa", "async one"))
    assert c.flush()
    assert c.count("qa") == 51


def test_an_unusable_spool_directory_is_one_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("in the way")
    with pytest.raises(
        mc.MemcollectError, match=r"cannot use .* for the spool .*durability='memory'"
    ):
        mc.MemoryCollector("memory://", data_dir=str(not_a_dir), durability="spool")
