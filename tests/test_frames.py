"""The spool's frame format: whatever the records and wherever a write is cut, what is read
back is a prefix of what was written, never garbage."""

from __future__ import annotations

import zlib

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from memcollect.frames import (
    HEADER,
    MAGIC,
    encode_frame,
    read_batches,
    read_frames,
    read_memories,
)
from memcollect.model import Memory
from memcollect.validate import make_memory

texts = st.text(min_size=1, max_size=300).filter(lambda t: t.strip() and "\x00" not in t)
memories = st.builds(
    lambda content, tags, priority: make_memory(
        "note", content, {"k": content[:10]}, priority, tags, None, None, None, 1 << 20
    ),
    texts,
    st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True),
    st.sampled_from(["low", "medium", "high", "critical"]),
)


def ids(found: list[Memory]) -> list[str]:
    return [m.id for m in found]


@settings(max_examples=200, deadline=None)
@given(st.lists(memories, max_size=12), st.data())
def test_a_cut_anywhere_reads_back_a_prefix_and_nothing_else(
    written: list[Memory], data: st.DataObject
) -> None:
    blob = b"".join(encode_frame(m) for m in written)
    cut = data.draw(st.integers(0, len(blob)), label="cut")
    found, corrupt, _ = read_frames(blob[:cut])
    assert ids([m for _, m in found]) == ids(written[: len(found)])  # a prefix, in order
    assert [m.content for _, m in found] == [m.content for m in written[: len(found)]]
    whole = sum(1 for end in _ends(written) if end <= cut)
    assert len(found) == whole  # every whole frame before the cut is read back
    assert corrupt <= 1  # at most the torn tail is reported


@settings(max_examples=200, deadline=None)
@given(st.lists(memories, min_size=1, max_size=8), st.data())
def test_a_corrupted_byte_loses_at_most_its_own_frame(
    written: list[Memory], data: st.DataObject
) -> None:
    blob = bytearray(b"".join(encode_frame(m) for m in written))
    at = data.draw(st.integers(0, len(blob) - 1), label="at")
    blob[at] ^= data.draw(st.integers(1, 255), label="flip")
    found = ids([m for _, m in read_frames(bytes(blob))[0]])
    expected = ids(written)
    # What is read is in the order written, with nothing that was not written.
    assert all(i in expected for i in found)
    assert found == sorted(found, key=expected.index)
    assert len(found) >= len(written) - 2  # the hit frame (and a header it ran into)


@settings(max_examples=100, deadline=None)
@given(st.lists(memories, max_size=10))
def test_whole_frames_read_fast_as_they_read_slow(written: list[Memory]) -> None:
    blob = b"".join(encode_frame(m) for m in written)
    assert ids(read_memories(blob)) == ids(written)
    assert ids(read_memories(blob[:-1])) == ids(written[:-1])  # falls back to the careful read


@settings(max_examples=100, deadline=None)
@given(st.lists(memories, max_size=12), st.integers(1, 5), st.booleans())
def test_batches_read_what_a_whole_read_reads_and_each_resumes_where_it_ended(
    written: list[Memory], size: int, torn: bool
) -> None:
    blob = b"".join(encode_frame(m) for m in written)
    if torn:
        blob = blob[:-1]  # the careful read takes over
    batches = list(read_batches(blob, size))
    assert [m.id for batch, _ in batches for m in batch] == ids(read_memories(blob))
    assert all(len(batch) == size for batch, _ in batches[:-1])
    for number, (_, end) in enumerate(batches):
        # What follows a batch's end is exactly what the later batches hold.
        later = [m.id for batch, _ in batches[number + 1 :] for m in batch]
        assert ids(read_memories(blob[end:])) == later


@settings(max_examples=100, deadline=None)
@given(st.lists(memories, min_size=1, max_size=6), st.lists(st.booleans(), min_size=6, max_size=6))
def test_records_an_earlier_version_wrote_as_maps_are_read_beside_arrays(
    written: list[Memory], as_maps: list[bool]
) -> None:
    def frame(memory: Memory, as_map: bool) -> bytes:
        if not as_map:
            return encode_frame(memory)
        payload = msgspec.msgpack.encode(memory)  # a Struct as a map of its fields
        return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload

    blob = b"".join(frame(m, as_map) for m, as_map in zip(written, as_maps, strict=False))
    assert read_memories(blob) == written  # every field, in order
    assert [m for _, m in read_frames(blob)[0]] == written
    assert len(encode_frame(written[0])) < len(frame(written[0], True))


def _ends(written: list[Memory]) -> list[int]:
    ends, pos = [], 0
    for m in written:
        pos += len(encode_frame(m))
        ends.append(pos)
    return ends
