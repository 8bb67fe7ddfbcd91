"""The LangGraph store: the BaseStore contract, on a real collector and store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("langgraph", reason="!!! SKIPPED, NOT TESTED: langgraph is not installed")

from langgraph.store.base import BaseStore, ListNamespacesOp, MatchCondition

import memcollect as mc
from memcollect.integrations.langgraph import MemcollectStore

Make = Callable[..., mc.MemoryCollector]


@pytest.fixture
def store(make_collector: Make, tmp_path: Path) -> BaseStore:
    return MemcollectStore(make_collector(f"sqlite:///{tmp_path}/graph.db"))


def test_put_get_replace_delete(store: BaseStore) -> None:
    assert store.get(("users", "u1"), "prefs") is None
    store.put(("users", "u1"), "prefs", {"theme": "dark", "lang": "en"})
    first = store.get(("users", "u1"), "prefs")
    assert first is not None and first.value == {"theme": "dark", "lang": "en"}
    assert first.namespace == ("users", "u1") and first.key == "prefs"
    store.put(("users", "u1"), "prefs", {"theme": "light"})  # replaces
    second = store.get(("users", "u1"), "prefs")
    assert second is not None and second.value == {"theme": "light"}
    assert second.created_at == first.created_at and second.updated_at >= first.updated_at
    assert store.get(("users", "u2"), "prefs") is None  # another namespace
    store.delete(("users", "u1"), "prefs")
    assert store.get(("users", "u1"), "prefs") is None


def test_search_by_prefix_filter_query_with_scores_limit_and_offset(store: BaseStore) -> None:
    store.put(("docs", "a"), "1", {"text": "Login fails on Safari after a reset", "kind": "bug"})
    store.put(("docs", "a"), "2", {"text": "Users love the dark mode", "kind": "feedback"})
    store.put(("docs", "b"), "3", {"text": "Safari crashes at start", "kind": "bug", "n": 3})
    store.put(("other",), "4", {"text": "Safari elsewhere", "kind": "bug"})
    under_docs = store.search(("docs",), limit=10)
    assert {item.key for item in under_docs} == {"1", "2", "3"}
    assert all(item.score is None for item in under_docs)  # no query: no score
    assert {i.key for i in store.search(("docs", "a"))} == {"1", "2"}
    bugs = store.search(("docs",), filter={"kind": "bug"})
    assert {item.key for item in bugs} == {"1", "3"}
    assert [i.key for i in store.search(("docs",), filter={"n": {"$gte": 3}})] == ["3"]
    found = store.search(("docs",), query="safari login reset")
    assert found[0].key == "1" and found[0].score == 1.0
    assert all(0 <= (item.score or 0) <= 1 for item in found)
    everything = store.search((), limit=10)
    assert len(everything) == 4
    assert len(store.search((), limit=2)) == 2 and len(store.search((), limit=2, offset=3)) == 1


def test_list_namespaces_with_prefix_suffix_and_depth(store: BaseStore) -> None:
    for namespace in [("a", "b", "c"), ("a", "b", "d"), ("a", "x"), ("z",)]:
        store.put(namespace, "k", {"v": 1})
    assert store.list_namespaces() == [("a", "b", "c"), ("a", "b", "d"), ("a", "x"), ("z",)]
    assert store.list_namespaces(prefix=("a", "b")) == [("a", "b", "c"), ("a", "b", "d")]
    assert store.list_namespaces(suffix=("d",)) == [("a", "b", "d")]
    assert store.list_namespaces(prefix=("a", "*", "c")) == [("a", "b", "c")]
    assert store.list_namespaces(max_depth=2) == [("a", "b"), ("a", "x"), ("z",)]
    assert store.list_namespaces(limit=1, offset=1) == [("a", "b", "d")]
    match = MatchCondition(match_type="prefix", path=("a",))
    (listed,) = store.batch([ListNamespacesOp(match_conditions=(match,), limit=10)])
    assert listed == [("a", "b", "c"), ("a", "b", "d"), ("a", "x")]


def test_items_expire_after_their_ttl_and_a_read_refreshes_it(
    make_collector: Make, tmp_path: Path
) -> None:
    now = [1_800_000_000.0]
    store = MemcollectStore(
        make_collector(f"sqlite:///{tmp_path}/ttl.db"),
        ttl={"default_ttl": 10.0, "refresh_on_read": True},
        wall_clock=lambda: now[0],
    )
    store.put(("s",), "short", {"v": 1}, ttl=1.0)  # one minute
    store.put(("s",), "default", {"v": 2})  # ten minutes
    now[0] += 50
    assert store.get(("s",), "short") is not None  # read: refreshed for another minute
    now[0] += 50
    assert store.get(("s",), "short", refresh_ttl=False) is not None  # 50 s after the refresh
    now[0] += 20
    assert store.get(("s",), "short") is None  # expired, and deleted
    assert [i.key for i in store.search(("s",))] == ["default"]
    now[0] += 600
    assert store.search(("s",)) == [] and store.list_namespaces() == []


def test_the_async_api_and_what_other_readers_of_the_store_see(
    make_collector: Make, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    store = MemcollectStore(make_collector(url))

    async def run() -> None:
        await store.aput(("team",), "decision", {"text": "Use WAL for the spool"})
        item = await store.aget(("team",), "decision")
        assert item is not None and item.value["text"] == "Use WAL for the spool"
        assert [i.key for i in await store.asearch(("team",), query="spool")] == ["decision"]

    asyncio.run(run())
    # An item is a memory: any collector of the same store recalls it by its words.
    other = make_collector(url, data_dir=str(tmp_path / "other"))
    assert [m.category for m in other.search("spool WAL")] == ["note"]


def test_a_value_none_put_deletes_and_searches_see_only_live_items(store: BaseStore) -> None:
    store.put(("n",), "k", {"text": "alpha"})
    store.put(("n",), "k", None)  # type: ignore[arg-type]
    assert store.get(("n",), "k") is None and store.search(("n",)) == []


def test_namespaces_are_checked_as_langgraph_checks_them(store: BaseStore) -> None:
    from langgraph.store.base import InvalidNamespaceError

    for bad in [(), ("a.b",), ("langgraph",)]:
        with pytest.raises(InvalidNamespaceError):
            store.put(bad, "k", {"v": 1})
