"""Reads: get / get_many / search, looking where a memory is now before where it goes next."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec

from .backends.base import Backend
from .cache import Cache
from .errors import TransientBackendError, ValidationError
from .model import Memory
from .pipelines import Pipeline
from .query import (
    SEARCH_MODES,
    Hit,
    SearchQuery,
    check_ids,
    check_limit,
    check_min_score,
    search_query,
)
from .tracing import Spans

__all__ = ["Reads", "footprint"]

log = logging.getLogger("memcollect")


def footprint(memory: Memory) -> int:
    """About how many bytes a memory holds in RAM, for the cache's byte bound."""
    return 400 + 2 * len(memory.content) + 80 * (len(memory.metadata) + len(memory.tags))


class Reads:
    """Answers reads from the pipeline (not yet stored), the cache, then the stores.

    Where a memory goes next is looked at only after where it is now: disk, RAM (queued or in
    flight), then the store. A memory moving on while we look is found further along.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        cache: Cache,
        backend: Backend,
        fallback: Backend | None,
        spans: Spans,
    ) -> None:
        self.spans = spans
        self.pipeline = pipeline
        self.cache = cache
        self.backend = backend
        self.fallback = fallback

    def get(self, memory_id: str) -> Memory | None:
        """One memory by id, including one still queued (read-your-writes)."""
        if not isinstance(memory_id, str):
            raise ValidationError(f"id must be a str, not {type(memory_id).__name__}")
        found = self.get_many([memory_id])
        return found[0] if found else None

    def get_many(self, ids: Iterable[str]) -> list[Memory]:
        """Memories by id, including ones still queued, in the order asked; unknown ids are
        left out."""
        asked = check_ids(ids)
        if asked is None:
            raise ValidationError("ids must be a list of ids, not None")
        unique = list(dict.fromkeys(asked))
        found = self.pipeline.pending(unique)
        elsewhere: list[str] = []
        cache = self.cache
        for memory_id in unique:
            if memory_id in found:
                continue
            # A stored memory never changes: a cached one is good until it expires.
            cached = cache.get(memory_id)
            if cached is Cache.MISSING:
                elsewhere.append(memory_id)
            else:
                found[memory_id] = cached
        for stored in self._stored(elsewhere):
            found[stored.id] = stored
            cache.put(stored.id, stored, footprint(stored))
        return [found[memory_id] for memory_id in unique if memory_id in found]

    def _stored(self, ids: list[str]) -> list[Memory]:
        if not ids:
            return []
        fallback = self.fallback
        if fallback is None:
            return self.backend.get_many(ids) if len(ids) > 1 else _one(self.backend, ids[0])
        # During an outage the primary cannot answer, and what it missed is in the fallback.
        try:
            found = self.backend.get_many(ids)
        except Exception as exc:  # noqa: BLE001 - the fallback answers instead
            log.debug("primary read failed (%s): reading the fallback", exc)
            found = []
        held = {m.id for m in found}
        missed = [memory_id for memory_id in ids if memory_id not in held]
        return found + fallback.get_many(missed) if missed else found

    def query(self, text: object, mode: str | None, **filters: Any) -> tuple[SearchQuery, bool]:
        """A search's arguments, checked, as a query; and whether the store chose its mode."""
        if not isinstance(text, str):
            raise ValidationError(f"query must be a str, not {type(text).__name__}")
        check_limit(filters["limit"])
        chosen_mode, chosen = self.mode(mode)
        return search_query(**filters, text=text, mode=chosen_mode), chosen

    def hits(
        self, request: SearchQuery, chosen: bool, min_score: object, collapse: object = False
    ) -> list[Hit]:
        """The store's answer to a checked query, each hit with its score and how it was
        found, cached until the next write (a default hybrid search answers by words when
        meaning cannot be had); those scoring under `min_score` left out; with `collapse`,
        one hit per group."""
        if not isinstance(collapse, bool):
            raise ValidationError(f"collapse must be True or False, not {collapse!r}")
        if collapse:
            return collapsed(self.hits(widened(request), chosen, min_score), request.limit)
        threshold = check_min_score(min_score)
        key = ("search", request)
        cached = self.cache.get(key)
        if cached is not Cache.MISSING:
            found = list(cached)
        else:
            generation = self.cache.generation
            try:
                with self.spans("search_memory") as span:
                    found = self.backend.search_hits(request)
                    span.set_attribute("gen_ai.memory.record.count", len(found))
            except TransientBackendError as exc:
                if not chosen or request.mode != "hybrid":
                    raise
                # Meaning is not to be had now (a model that cannot load; health says why):
                # the default search still answers by words, and that answer is not kept.
                log.debug("hybrid search failed (%s): searching by words", exc)
                found = self.backend.search_hits(msgspec.structs.replace(request, mode="text"))
            else:
                size = sum(footprint(hit.memory) for hit in found) + 64
                self.cache.put(key, tuple(found), size, search_generation=generation)
        if threshold is None:
            return found
        return [hit for hit in found if hit.score >= threshold]

    def mode(self, mode: str | None) -> tuple[str, bool]:
        """The search mode to use, and whether the store chose it."""
        if mode is None:
            return self.backend.default_mode(), True
        if mode not in SEARCH_MODES:
            raise ValidationError(f"mode must be 'text', 'semantic' or 'hybrid', not {mode!r}")
        if mode != "text" and not self.backend.supports_semantic:
            raise ValidationError(
                f"search mode {mode!r} needs a store with embeddings: add ?semantic=1 to a "
                "sqlite:// or postgresql:// URL (pip install 'memcollect[semantic]')"
            )
        return mode, False


# A collapsed search looks at this many matches per group asked for (up to 1,000), so that a
# group repeated many times still leaves room for the others.
COLLAPSE_WIDTH = 10
COLLAPSE_MOST = 1000


def widened(request: SearchQuery) -> SearchQuery:
    """The query a collapsed search asks the store: more matches than groups wanted."""
    wider = max(request.limit, min(COLLAPSE_MOST, request.limit * COLLAPSE_WIDTH))
    return msgspec.structs.replace(request, limit=wider)


def collapsed(hits: list[Hit], limit: int) -> list[Hit]:
    """The best hit of each group, in rank order, with how many of the hits share its group."""
    from .groups import fingerprint

    best: dict[str, Hit] = {}
    counts: dict[str, int] = {}
    for hit in hits:
        key = fingerprint(hit.memory)
        counts[key] = counts.get(key, 0) + 1
        best.setdefault(key, hit)
    kept = list(best.items())[:limit]
    return [msgspec.structs.replace(h, fingerprint=k, matches=counts[k]) for k, h in kept]


def _one(backend: Backend, memory_id: str) -> list[Memory]:
    memory: Any = backend.get(memory_id)
    return [memory] if memory is not None else []
