"""Deleting for good: by ids and/or filters, from the store, the fallback and dead letters."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .backends.base import Backend
from .cache import Cache
from .errors import MemcollectError, TransientBackendError, ValidationError
from .model import Memory
from .pipelines import Pipeline
from .query import SearchQuery, check_ids, search_query
from .stats import Counters
from .tracing import Spans
from .validate import check_memory

__all__ = ["delete_flushed", "delete_from", "delete_request", "requeue_dead_letters"]

log = logging.getLogger("memcollect")

# Memories found and deleted in one step of a delete by filters.
DELETE_PAGE = 1000
# Dead letters a delete looks through (the most a store lists at once).
DEAD_LETTERS_SEEN = 10_000


def delete_request(
    ids: object, filters: dict[str, Any]
) -> tuple[list[str] | None, SearchQuery | None]:
    """delete()'s arguments, checked: the ids, and the query of the filters (if any)."""
    id_list = check_ids(ids)
    given = any(value is not None for value in filters.values())
    if id_list is None and not given:
        raise ValidationError(
            "delete() needs ids or a filter (category, tags, project, agent, session, "
            "since, until); it never deletes everything"
        )
    query = search_query(**filters, limit=DELETE_PAGE) if given else None
    if id_list is None and query == SearchQuery(limit=DELETE_PAGE):
        # tags=[] and the like: filters that filter nothing would delete everything.
        raise ValidationError("delete() got filters that match every memory: name one")
    return id_list, query


def delete_flushed(
    pipeline: Pipeline,
    stores: Sequence[Backend],
    counters: Counters,
    cache: Cache,
    *,
    ids: list[str] | None,
    query: SearchQuery | None,
    spans: Spans,
) -> int:
    """delete() once what was collected before it is stored: from every store, with no move
    from the fallback meanwhile; how many were deleted."""
    # The spool's bytes of what was stored stay on disk until their segment is deleted,
    # which waits for the segment being written to fill up: not for these.
    pipeline.rotate()
    deleted: set[str] = set()
    with pipeline.moving:  # one delete at a time, and no move from the fallback
        try:
            with spans("delete_memory") as span:
                deleted = delete_from(stores, ids, query)
                span.set_attribute("gen_ai.memory.record.count", len(deleted))
        finally:
            # Also after a failure part way: nothing deleted may be read from the cache.
            counters.deleted += len(deleted)
            cache.clear()
    if deleted:
        log.info("deleted %d memories", len(deleted))
    return len(deleted)


def delete_from(
    stores: Sequence[Backend], ids: list[str] | None, query: SearchQuery | None
) -> set[str]:
    """Delete from each store, with its dead letters; the ids deleted. A store's own failure
    is one error that says what to do."""
    deleted: set[str] = set()
    for store in stores:
        try:
            deleted |= _delete_from(store, ids, query)
        except MemcollectError:
            raise
        except Exception as exc:
            raise TransientBackendError(
                f"delete() could not finish in {store.url} ({type(exc).__name__}: {exc}): "
                "call it again once the store answers; what it deleted before stays deleted"
            ) from exc
    return deleted


def _delete_from(store: Backend, ids: list[str] | None, query: SearchQuery | None) -> set[str]:
    """Delete from one store, with its dead letters, the memories named by ids or matching
    the query's filters; the ids it held."""

    def chosen(memory: Memory) -> bool:
        return query is None or query.matches(memory)

    found = _delete_named(store, ids, chosen) if ids is not None else _delete_matching(store, query)
    named = set(ids) if ids is not None else None
    refused = [
        d.memory.id
        for d in store.dead_letters(DEAD_LETTERS_SEEN)
        if (named is None or d.memory.id in named) and chosen(d.memory)
    ]
    if refused:
        store.remove_dead_letters(refused)
        found.update(refused)
    return found


def _delete_named(store: Backend, ids: list[str], chosen: Any) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), DELETE_PAGE):
        page = ids[start : start + DELETE_PAGE]
        # One read a page (a request, for a server), not one a memory.
        held = [m.id for m in store.get_many(page) if chosen(m)]
        if held:
            store.delete(held)
        found.update(held)
    return found


def _delete_matching(store: Backend, query: SearchQuery | None) -> set[str]:
    assert query is not None
    found: set[str] = set()
    while True:
        page = store.filtered_ids(query)
        if not page:
            return found
        if found.issuperset(page):
            raise MemcollectError(
                f"{store.url} still lists memories it was told to delete: "
                "stopped to avoid a loop; report this"
            )
        store.delete(page)
        found.update(page)


def requeue_dead_letters(
    store: Backend, queue: Callable[[Sequence[Memory], bool], None], max_content_bytes: int
) -> int:
    """Queue every dead letter of the store again (forced past a full queue), and remove it
    from the dead letters; how many were queued. Letters that are no valid memory (kept by an
    older version) are left as they are."""
    total = 0
    invalid: set[str] = set()
    while True:
        letters = [d for d in store.dead_letters(1000 + len(invalid)) if d.memory.id not in invalid]
        if not letters:
            if invalid:
                log.warning("%d dead letters are not valid memories: left as they are",
                            len(invalid))  # fmt: skip
            return total
        memories = []
        for letter in letters:
            try:
                memories.append(check_memory(letter.memory, max_content_bytes))
            except ValidationError:
                invalid.add(letter.memory.id)
        if memories:
            queue(memories, True)
            store.remove_dead_letters([m.id for m in memories])
            total += len(memories)
