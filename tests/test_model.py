"""Validation at the call site, and ids."""

from __future__ import annotations

import math
import threading
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import memcollect as mc
from memcollect import validate
from memcollect.spool import encode_frame, read_frames
from memcollect.validate import check_category, check_metadata, make_memory

MAX = 64 * 1024


def build(**kw: Any) -> mc.Memory:
    args: dict[str, Any] = dict(
        category="bug",
        content="x",
        metadata=None,
        priority=None,
        tags=None,
        project=None,
        agent=None,
        session=None,
        max_content_bytes=MAX,
    )
    args.update(kw)
    return make_memory(**args)


def test_defaults_by_category() -> None:
    assert build(category="error").priority == "critical"
    assert build(category="bug").priority == "high"
    assert build(category="feedback").priority == "medium"
    assert build(category="my_custom-cat").priority == "medium"


def test_enums_are_accepted_and_stored_as_plain_strings() -> None:
    m = build(category=mc.Category.PERFORMANCE, priority=mc.Priority.LOW)
    assert type(m.category) is str and m.category == "performance"
    assert type(m.priority) is str and m.priority == "low"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"content": ""}, "content"),
        ({"content": 42}, "content"),
        ({"content": None}, "content"),
        ({"content": "a\x00b"}, "content"),
        ({"content": "\ud800"}, "content"),
        ({"content": "x" * (MAX + 1)}, "content"),
        ({"content": "é" * (MAX // 2 + 1)}, "content"),
        ({"category": "Bug"}, "category"),
        ({"category": "1bug"}, "category"),
        ({"category": "bug!"}, "category"),
        ({"category": ""}, "category"),
        ({"category": "a" * 65}, "category"),
        ({"category": None}, "category"),
        ({"category": ["bug"]}, "category"),
        ({"priority": "urgent"}, "priority"),
        ({"priority": 3}, "priority"),
        ({"metadata": {"s": {1, 2}}}, "metadata['s']"),
        ({"metadata": {"b": b"raw"}}, "metadata['b']"),
        ({"metadata": {"n": math.nan}}, "metadata['n']"),
        ({"metadata": {"i": math.inf}}, "metadata['i']"),
        ({"metadata": {"o": object()}}, "metadata['o']"),
        ({"metadata": {"d": datetime(2026, 1, 1)}}, "metadata['d']"),
        ({"metadata": {"deep": {"list": [1, {"x": {2}}]}}}, "metadata['deep']['list'][1]['x']"),
        ({"metadata": {1: "int key"}}, "metadata"),
        # PostgreSQL's jsonb cannot hold NUL, in keys as in values.
        ({"metadata": {"a\x00b": 1}}, "metadata"),
        ({"metadata": {"x": {"k\x00": [1]}}}, "metadata['x']"),
        ({"metadata": ["not", "a", "dict"]}, "metadata"),
        # The spool (msgpack) and the stores hold integers of 64 bits.
        ({"metadata": {"n": 2**63}}, "metadata['n']"),
        ({"metadata": {"x": [-(2**63) - 1]}}, "metadata['x'][0]"),
        # A lone surrogate cannot be encoded, on disk or on the wire, wherever it hides.
        ({"metadata": {"k": "\ud800"}}, "metadata['k']"),
        ({"metadata": {"\udfff": 1}}, "metadata"),
        ({"metadata": {"k": ["a", {"x": "\ud83d"}]}}, "metadata['k'][1]['x']"),
        ({"tags": ["\ud800"]}, "tags[0]"),
        ({"project": "\ud800"}, "project"),
        ({"agent": "a\udc00"}, "agent"),
        ({"session": "é\ud800"}, "session"),
        ({"tags": "auth"}, "tags"),
        ({"tags": {"auth": 1}}, "tags"),
        ({"tags": {}}, "tags"),
        ({"tags": ["ok", 3]}, "tags[1]"),
        ({"tags": [""]}, "tags[0]"),
        ({"project": 5}, "project"),
        ({"agent": ""}, "agent"),
        ({"session": "s\x00"}, "session"),
    ],
)
def test_invalid_input_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(mc.ValidationError) as info:
        build(**kwargs)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(field), str(info.value)


def test_cyclic_metadata_is_refused_not_a_recursion_error() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(mc.ValidationError, match="nested deeper"):
        check_metadata(cyclic)


def test_metadata_is_copied_so_later_mutation_does_not_leak() -> None:
    original = {"user": {"id": 7}, "steps": [1, 2]}
    m = build(metadata=original)
    original["user"]["id"] = 8
    original["steps"].append(3)
    assert m.metadata == {"user": {"id": 7}, "steps": [1, 2]}


def test_the_sets_of_strings_checked_before_stay_bounded() -> None:
    for i in range(validate._MAX_KNOWN + 100):
        m = build(tags=[f"tag-{i}"], session=f"session-{i}", metadata={f"key-{i}": i})
        assert m.tags == (f"tag-{i}",) and m.session == f"session-{i}"
    for known in (validate._known_labels, validate._known_tags, validate._known_keys):
        assert len(known) <= validate._MAX_KNOWN
    # Remembered or not, a string is checked the same way.
    assert build(session="session-1").session == "session-1"
    with pytest.raises(mc.ValidationError, match="session"):
        build(session="session-1\x00")


def test_metadata_integers_of_64_bits_survive_the_spool() -> None:
    extremes = {"min": -(2**63), "max": 2**63 - 1, "nested": {"list": [2**63 - 1]}}
    memory = build(metadata=extremes)
    [(_, decoded)], _, _ = read_frames(encode_frame(memory))
    assert decoded.metadata == extremes


def test_tags_are_deduplicated_in_order() -> None:
    assert build(tags=["b", "a", "b"]).tags == ("b", "a")


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text().filter(lambda s: "\x00" not in s)
    | (st.floats(allow_nan=False, allow_infinity=False))
)
json_keys = st.text(max_size=10).filter(lambda s: "\x00" not in s)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(json_keys, json_values, max_size=6))
def test_any_json_metadata_round_trips(metadata: dict[str, Any]) -> None:
    assert build(metadata=metadata).metadata == metadata


@given(st.text(min_size=1, max_size=80))
def test_category_is_accepted_exactly_when_it_is_a_slug(text: str) -> None:
    import re

    is_slug = re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", text) is not None
    try:
        check_category(text)
        accepted = True
    except mc.ValidationError:
        accepted = False
    assert accepted == is_slug


@given(st.text(max_size=300).filter(lambda s: "\x00" not in s))
def test_content_size_limit_counts_utf8_bytes(text: str) -> None:
    limit = 100
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return
    if not text:
        return
    if size > limit:
        with pytest.raises(mc.ValidationError, match="max_content_bytes"):
            build(content=text, max_content_bytes=limit)
    else:
        assert build(content=text, max_content_bytes=limit).content == text


def test_ids_are_unique_and_time_ordered_across_threads() -> None:
    out: list[list[str]] = []

    def make_ids() -> None:
        out.append([mc.new_id() for _ in range(20_000)])

    threads = [threading.Thread(target=make_ids) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for chunk in out for i in chunk]
    assert len(set(every)) == len(every) == 80_000
    for chunk in out:
        assert chunk == sorted(chunk)  # within a thread, later is larger
    assert all(len(i) == 26 for i in every)


def test_id_time_decodes_the_timestamp() -> None:
    m = build()
    assert abs(mc.id_time(m.id) - m.created_at) < 0.002
    with pytest.raises(mc.ValidationError):
        mc.id_time("!!")
