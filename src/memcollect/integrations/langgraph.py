"""A LangGraph store (BaseStore) backed by a memcollect collector.

Needs the langgraph extra (`pip install 'memcollect[langgraph]'`).

How items map onto memories: an item is one memory, its `value` kept whole in the metadata
(with its namespace, key and times) and its text in the content, so that search finds it by
words or meaning as any memory. Tags carry the lookups: `lg:key:<digest of namespace and
key>` for get and delete, and `lg:ns:<digest>` for the namespace and each of its prefixes,
for search under a prefix. A put writes the new memory through to the store before it
returns (so that get and search see it at once), then deletes the memory it replaces; the
newest wins, should a delete have failed. Expired items (TTL) are skipped on read and deleted
when found.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

try:
    from langgraph.store.base import (
        BaseStore,
        GetOp,
        Item,
        ListNamespacesOp,
        MatchCondition,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
        TTLConfig,
    )
except ImportError as exc:  # pragma: no cover - exercised by users without the extra
    raise ImportError(
        "the LangGraph store needs the langgraph extra: pip install 'memcollect[langgraph]'"
    ) from exc

from ..collector import MemoryCollector
from ..model import Memory
from ..storing import content_hash
from ..validate import make_memory

__all__ = ["MemcollectStore"]

TAG = "langgraph"
# How many times more memories than asked for a filtered search reads, before filtering.
_FILTER_READ_AHEAD = 5


def _digest(*parts: str) -> str:
    return content_hash("\x1f".join(parts))[:24]


def _key_tag(namespace: tuple[str, ...], key: str) -> str:
    return "lg:key:" + _digest(*namespace, "\x1e", key)


def _namespace_tag(prefix: tuple[str, ...]) -> str:
    return "lg:ns:" + _digest(*prefix)


class MemcollectStore(BaseStore):
    """A LangGraph BaseStore whose items are memories of a collector: durable, searchable by
    words and meaning with scores, and seen by every other reader of the same store."""

    supports_ttl = True

    def __init__(
        self,
        collector: MemoryCollector,
        *,
        category: str = "note",
        fields: Sequence[str] | None = None,
        ttl: TTLConfig | None = None,
        wall_clock: Any = time.time,
    ) -> None:
        self.collector = collector
        self.category = category
        #: The value's fields whose text is searched (all of the value, as JSON, when None).
        self.fields = list(fields) if fields is not None else None
        self.ttl_config = ttl
        self.wall_clock = wall_clock

    # --- the protocol ---------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run each operation in order; a list of their results."""
        results: list[Result] = []
        for op in ops:
            if isinstance(op, GetOp):
                results.append(self._get(op.namespace, op.key, op.refresh_ttl))
            elif isinstance(op, PutOp):
                self._put(op)
                results.append(None)
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            else:
                raise TypeError(f"unknown store operation {type(op).__name__}")
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """batch() without blocking the event loop."""
        return await asyncio.to_thread(self.batch, list(ops))

    # --- operations -----------------------------------------------------------------------

    def _versions(self, namespace: tuple[str, ...], key: str) -> list[Memory]:
        """The memories holding an item, newest first (one, unless a replace was cut short)."""
        found = self.collector.search(tags=[_key_tag(namespace, key)], limit=10)
        return [m for m in found if _item_of(m) == (namespace, key)]

    def _get(self, namespace: tuple[str, ...], key: str, refresh: bool) -> Item | None:
        versions = self._versions(namespace, key)
        if not versions:
            return None
        newest = versions[0]
        if self._expired(newest):
            self.collector.delete([m.id for m in versions])
            return None
        record = newest.metadata["langgraph"]
        if refresh and record.get("ttl") and self._refreshes():
            self._write(namespace, key, record["value"], record["ttl"], record["created_at"],
                        replaces=versions)  # fmt: skip
        return _item(newest)

    def _put(self, op: PutOp) -> None:
        old = self._versions(op.namespace, op.key)
        if op.value is None:
            if old:
                self.collector.delete([m.id for m in old])
            return
        created = old[0].metadata["langgraph"]["created_at"] if old else None
        ttl = op.ttl if op.ttl is not None else (self.ttl_config or {}).get("default_ttl")
        self._write(op.namespace, op.key, dict(op.value), ttl, created, replaces=old)

    def _write(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: dict[str, Any],
        ttl: float | None,
        created: str | None,
        *,
        replaces: Sequence[Memory] | None = None,
    ) -> None:
        now = self.wall_clock()
        stamp = datetime.fromtimestamp(now, UTC).isoformat()
        record = {
            "namespace": list(namespace),
            "key": key,
            "value": value,
            "created_at": created or stamp,
            "updated_at": stamp,
            "ttl": ttl,
            "expires_at": now + ttl * 60 if ttl else None,
        }
        prefixes = [_namespace_tag(namespace[:depth]) for depth in range(1, len(namespace) + 1)]
        memory = make_memory(
            self.category,
            self._text(key, value),
            {"langgraph": record},
            None,
            [TAG, _key_tag(namespace, key), *prefixes],
            None,
            None,
            None,
            self.collector.config.max_content_bytes,
        )
        # Through to the store before returning: get() and search() read the store.
        self.collector.store_now([memory])
        stale = replaces if replaces is not None else self._versions(namespace, key)
        older = [m.id for m in stale if m.id != memory.id]
        if older:
            self.collector.delete(older)

    def _search(self, op: SearchOp) -> list[SearchItem]:
        prefix = tuple(op.namespace_prefix)
        tag = _namespace_tag(prefix) if prefix else TAG
        want = op.offset + op.limit
        read = min(10_000, want * _FILTER_READ_AHEAD if op.filter else want + 10)
        hits = self.collector.search_scored(op.query or "", tags=[tag], limit=read)
        items: list[SearchItem] = []
        seen: set[tuple[tuple[str, ...], str]] = set()
        for hit in hits:
            where = _item_of(hit.memory)
            if where is None or where[0][: len(prefix)] != prefix or where in seen:
                continue
            seen.add(where)
            value = hit.memory.metadata["langgraph"]["value"]
            if self._expired(hit.memory) or not _matches(value, op.filter):
                continue
            score = hit.score if op.query else None
            items.append(_search_item(hit.memory, score))
        return items[op.offset : want]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        namespaces: set[tuple[str, ...]] = set()
        after: str | None = None
        backend = self.collector.backend
        while True:
            page = backend.scan(after, 1000)
            if not page:
                break
            after = page[-1].id
            for memory in page:
                where = _item_of(memory)
                if where is None or self._expired(memory):
                    continue
                namespace = where[0]
                if op.match_conditions and not all(
                    _namespace_matches(c, namespace) for c in op.match_conditions
                ):
                    continue
                namespaces.add(namespace[: op.max_depth] if op.max_depth else namespace)
        return sorted(namespaces)[op.offset : op.offset + op.limit]

    # --- helpers --------------------------------------------------------------------------

    def _text(self, key: str, value: Mapping[str, Any]) -> str:
        """What search reads of an item: the chosen fields' text, or the whole value."""
        if self.fields is not None:
            parts = [_text_of(value.get(name)) for name in self.fields]
            text = " ".join(p for p in parts if p)
        else:
            text = json.dumps(value, ensure_ascii=False, default=str)
        return text if text.strip() else key

    def _expired(self, memory: Memory) -> bool:
        expires = memory.metadata["langgraph"].get("expires_at")
        return expires is not None and expires <= self.wall_clock()

    def _refreshes(self) -> bool:
        return bool((self.ttl_config or {}).get("refresh_on_read", True))


def _item_of(memory: Memory) -> tuple[tuple[str, ...], str] | None:
    record = memory.metadata.get("langgraph")
    if not isinstance(record, dict):
        return None
    return tuple(record["namespace"]), record["key"]


def _item(memory: Memory) -> Item:
    record = memory.metadata["langgraph"]
    return Item(
        value=record["value"],
        key=record["key"],
        namespace=tuple(record["namespace"]),
        created_at=datetime.fromisoformat(record["created_at"]),
        updated_at=datetime.fromisoformat(record["updated_at"]),
    )


def _search_item(memory: Memory, score: float | None) -> SearchItem:
    record = memory.metadata["langgraph"]
    return SearchItem(
        namespace=tuple(record["namespace"]),
        key=record["key"],
        value=record["value"],
        created_at=datetime.fromisoformat(record["created_at"]),
        updated_at=datetime.fromisoformat(record["updated_at"]),
        score=score,
    )


def _text_of(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _namespace_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "suffix":
        namespace, path = namespace[::-1], path[::-1]
    return all(p in ("*", n) for n, p in zip(namespace, path, strict=False))


def _matches(value: Mapping[str, Any], conditions: Mapping[str, Any] | None) -> bool:
    """Whether an item's value passes a filter, as LangGraph's own stores read one."""
    return not conditions or all(_compare(value.get(k), c) for k, c in conditions.items())


def _compare(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict):
        if any(key.startswith("$") for key in wanted):
            return all(_operator(actual, op, operand) for op, operand in wanted.items())
        return isinstance(actual, dict) and all(
            _compare(actual.get(k), v) for k, v in wanted.items()
        )
    if isinstance(wanted, (list, tuple)):
        return (
            isinstance(actual, (list, tuple))
            and len(actual) == len(wanted)
            and all(_compare(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)


def _operator(actual: Any, operator: str, operand: Any) -> bool:
    if operator == "$eq":
        return bool(actual == operand)
    if operator == "$ne":
        return bool(actual != operand)
    if actual is None:
        return False
    comparisons = {
        "$gt": float.__gt__, "$gte": float.__ge__, "$lt": float.__lt__, "$lte": float.__le__,
    }  # fmt: skip
    if operator not in comparisons:
        raise ValueError(f"filter operator {operator!r} is not one of $eq $ne $gt $gte $lt $lte")
    return bool(comparisons[operator](float(actual), float(operand)))
