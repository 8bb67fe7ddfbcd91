"""MemoryCollector: the front door. collect() validates, queues and returns an id."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from . import health as _health
from .backends import open_backend
from .backends.base import Backend
from .cache import Cache
from .config import Config, load_config
from .errors import TransientBackendError, ValidationError
from .groups import Group, GroupDetail, group_query
from .model import DeadLetter, Memory
from .pipelines import Parts, Pipeline, RamPipeline
from .query import SEARCH_MODES, Hit, check_limit
from .reads import Reads
from .report import Report, build_report
from .retention import delete_flushed, delete_request, requeue_dead_letters
from .spooling import SpoolPipeline
from .stats import Counters, Health, Stats
from .storing import FailureCallback, StoredCallback
from .tracing import current_span_ids, link_span
from .validate import (
    check_category,
    check_fingerprint,
    check_memories,
    make_memory,
    memory_from_dict,
)

__all__ = ["SEARCH_MODES", "MemoryCollector"]

log = logging.getLogger("memcollect")

Clock = Callable[[], float]

_modules = sys.modules


class _Process:
    """The current PID, refreshed by an at-fork hook so the hot path needs no syscall."""

    pid = os.getpid()


def _refresh_pid() -> None:
    _Process.pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


class MemoryCollector:
    """Collects memories without blocking the caller and stores them in the background."""

    def __init__(
        self,
        target: str | Config | Mapping[str, Any] | Backend | None = None,
        /,
        *,
        on_stored: StoredCallback | None = None,
        on_failure: FailureCallback | None = None,
        clock: Clock = time.monotonic,
        **fields: Any,
    ) -> None:
        backend: Backend | None = None
        if isinstance(target, Backend):
            backend, target = target, None
        elif isinstance(target, str):
            fields.setdefault("backend", target)
            target = None
        self.config = load_config(target, **fields)
        self._storer = storer_for(
            self.config, backend is not None, bool(on_stored or on_failure), clock
        )
        if self.config.storer == "process":
            from .storer.pipeline import check_process_storer

            check_process_storer(
                backend is not None, self.config.backend_url, bool(on_stored or on_failure)
            )
        self._backend = backend or open_backend(self.config.backend_url)
        self._backend.open()
        self._fallback = open_backend(self.config.fallback) if self.config.fallback else None
        if self._fallback is not None:
            self._fallback.open()
        self._clock = clock
        self._on_stored: list[StoredCallback] = [on_stored] if on_stored else []
        self._on_failure: list[FailureCallback] = [on_failure] if on_failure else []
        self._max_bytes = self.config.max_content_bytes
        self._close_lock = threading.Lock()
        # Closed until fully built, so that a failed construction never warns from __del__.
        self._closed = True
        try:
            self._start()
        except BaseException:
            self._backend.close()
            raise
        self._closed = False
        # A script that never calls close() still stores what it collected.
        self_ref = weakref.ref(self)
        self._atexit = lambda: _close_at_exit(self_ref)
        atexit.register(self._atexit)

    def _start(self) -> None:
        """Build the pipeline the configuration asks for, and what reads and reports need."""
        self._pid = _Process.pid
        self.counters = Counters(self._clock)
        self._cache = Cache(
            self.config.cache_size, self.config.cache_bytes, self.config.cache_ttl, self._clock
        )
        parts = Parts(
            self.config,
            self._backend,
            self._fallback,
            self.counters,
            on_stored=self._on_stored,
            on_failure=self._on_failure,
            on_change=self._cache.invalidate_searches,
            clock=self._clock,
        )
        pipeline = _pipeline_for(parts, self._storer)
        self._pipeline = pipeline
        self.breaker = pipeline.circuit()
        self._put = pipeline.put
        self._writes = parts.write_through()
        self._spans = parts.spans
        self._reads = Reads(pipeline, self._cache, self._backend, self._fallback, parts.spans)
        self._view = _health.View(
            pipeline,
            self.counters,
            self._cache,
            self._backend,
            self._fallback,
            self._clock,
            lambda: self._closed,
        )
        pipeline.start()

    def _check_fork(self) -> None:
        if self._pid != _Process.pid:
            self._after_fork()

    def _after_fork(self) -> None:
        # The parent's worker thread does not exist here and its locks may be held forever;
        # what it had queued is the parent's to store. Start afresh with its own worker,
        # connections and spool.
        self._pipeline.let_go_after_fork()
        self._start()

    def _check_open(self, doing: str) -> None:
        self._check_fork()
        if self._closed:
            raise ValidationError(f"this collector is closed: {doing} before close()")

    # --- collect -------------------------------------------------------------------------

    def collect(
        self,
        category: str,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        priority: str | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        fingerprint: str | None = None,
    ) -> str:
        """Queue one memory and return its id at once; raises only ValidationError."""
        if self._pid != _Process.pid:
            self._after_fork()
        memory = make_memory(
            category, content, metadata, priority, tags, project, agent, session, self._max_bytes
        )
        if fingerprint is not None:
            memory.fingerprint = check_fingerprint(fingerprint)
        if _modules.get("opentelemetry.trace") is not None:  # one lookup when it is not in use
            link_span(memory)
        self._put(memory)
        return memory.id

    async def collect_async(
        self,
        category: str,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        priority: str | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        fingerprint: str | None = None,
    ) -> str:
        """collect() for coroutines: never awaits I/O; with on_full="block" it yields instead."""
        self._check_fork()
        memory = make_memory(
            category, content, metadata, priority, tags, project, agent, session, self._max_bytes
        )
        if fingerprint is not None:
            memory.fingerprint = check_fingerprint(fingerprint)
        link_span(memory)
        await self._pipeline.put_async(memory)
        return memory.id

    def collect_batch(self, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """Queue many memories (dicts with collect()'s argument names); all valid or none."""
        memories = []
        for index, item in enumerate(items):
            try:
                memories.append(memory_from_dict(item, self._max_bytes))
            except ValidationError as exc:
                raise ValidationError(f"item {index}: {exc}") from None
        if current_span_ids() is not None:
            for memory in memories:
                link_span(memory)
        return self.collect_checked(memories)

    def collect_memories(self, memories: Sequence[Memory]) -> list[str]:
        """Queue Memory objects built elsewhere (a replay, another store), keeping their ids
        and times; each is checked as collect() checks its arguments: all valid or none."""
        checked = check_memories(memories, self._max_bytes)
        return self.collect_checked(checked)

    def collect_checked(self, memories: Sequence[Memory]) -> list[str]:
        """Queue memories already checked (by memory_from_record: a server, an import),
        keeping their ids: collect_memories() without checking them twice."""
        self._check_fork()
        if memories:
            self._pipeline.put_many(memories)
        return [m.id for m in memories]

    def store_now(self, memories: Sequence[Memory]) -> None:
        """Store memories in the caller's thread before returning (write-through), counted in
        stats; raises what the store raised. For callers that keep their own copy until this
        returns, such as a server whose clients retry: no queue, no spool, no retries here."""
        self._check_open("store")
        if not memories:
            return
        self._writes.store_now(memories)
        self._pipeline.count_accepted(len(memories))

    # --- flush / close -------------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything accepted so far is stored or dead-lettered; False on timeout."""
        self._check_fork()
        return self._pipeline.flush(timeout)

    async def aflush(self, timeout: float | None = 10.0) -> bool:
        """flush() without blocking the event loop."""
        import asyncio

        return await asyncio.to_thread(self.flush, timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Store what is queued (up to `timeout`), stop the worker, release the backend."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._pipeline.closed = True
        atexit.unregister(self._atexit)
        if self._pid != _Process.pid:
            # Forked, and nothing collected here since (that would have started afresh):
            # there is nothing to store, so start nothing just to stop it.
            self._pipeline.let_go_after_fork()
            return
        self._pipeline.close(timeout)

    async def aclose(self, timeout: float | None = 10.0) -> None:
        """close() without blocking the event loop."""
        import asyncio

        await asyncio.to_thread(self.close, timeout)

    def __enter__(self) -> MemoryCollector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> MemoryCollector:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- read ----------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory | None:
        """One memory by id, including one still queued (read-your-writes)."""
        self._check_fork()
        return self._reads.get(memory_id)

    def get_many(self, ids: Iterable[str]) -> list[Memory]:
        """Memories by id, including ones still queued, in the order asked; unknown ids are
        left out."""
        self._check_fork()
        return self._reads.get_many(ids)

    def search(
        self,
        query: str = "",
        *,
        category: str | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        since: float | Any | None = None,
        until: float | Any | None = None,
        limit: int = 10,
        mode: str | None = None,
        min_score: float | None = None,
        collapse: bool = False,
    ) -> list[Memory]:
        """Stored memories matching `query`, best first, with filters: by its words
        (mode="text"), by meaning (mode="semantic") or both (mode="hybrid"); by default
        hybrid where the store has embeddings, text where it has none. `min_score` (0 to 1)
        drops weak hits; `collapse` keeps one per group (see search_scored)."""
        request, chosen = self._reads.query(
            query, mode, category=category, tags=tags, project=project, agent=agent,
            session=session, since=since, until=until, limit=limit,
        )  # fmt: skip
        return [hit.memory for hit in self._reads.hits(request, chosen, min_score, collapse)]

    def search_scored(
        self,
        query: str = "",
        *,
        category: str | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        since: float | Any | None = None,
        until: float | Any | None = None,
        limit: int = 10,
        mode: str | None = None,
        min_score: float | None = None,
        collapse: bool = False,
    ) -> list[Hit]:
        """search(), each result a Hit: the memory, its score from 0 to 1 (the share of the
        query's words it holds, or its similarity in meaning; in hybrid search the stronger),
        how it was found ("text", "meaning", "both", "session" or "filters"); with
        `collapse`, the best hit of each group with how many matches share it."""
        request, chosen = self._reads.query(
            query, mode, category=category, tags=tags, project=project, agent=agent,
            session=session, since=since, until=until, limit=limit,
        )  # fmt: skip
        return self._reads.hits(request, chosen, min_score, collapse)

    def recent(self, limit: int = 20, category: str | None = None) -> list[Memory]:
        """The newest stored memories first."""
        return self.search(category=category, limit=limit)

    def count(self, category: str | None = None) -> int:
        """How many memories are stored."""
        return self._backend.count(check_category(category) if category is not None else None)

    def count_by_category(self) -> dict[str, int]:
        """How many memories are stored, per category."""
        return self._backend.count_by_category()

    def groups(
        self,
        *,
        category: str | None = None,
        project: str | None = None,
        agent: str | None = None,
        since: object = None,
        until: object = None,
        order: str = "count",
        limit: int = 20,
    ) -> list[Group]:
        """What keeps happening: stored memories grouped by fingerprint (docs/groups.md)."""
        query = group_query(category=category, project=project, agent=agent, since=since,
                            until=until, order=order, limit=limit)  # fmt: skip
        return self._backend.groups(query)

    def group(
        self, fingerprint: str, *, limit: int = 20, before: str | None = None
    ) -> GroupDetail | None:
        """One group, a page of its newest members and its count per day, or None."""
        check_limit(limit)
        return self._backend.group(check_fingerprint(fingerprint), limit, before)

    def report(
        self,
        *,
        since: object = "7d",
        until: object = None,
        category: str | None = None,
        project: str | None = None,
        agent: str | None = None,
        limit: int = 10,
    ) -> Report:
        """A period in review: what recurred most, what is new, what is rising, by category,
        project and agent, dead letters and health; .to_markdown(), .to_html(), .to_json()."""
        return build_report(self, since=since, until=until, category=category,
                            project=project, agent=agent, limit=limit)  # fmt: skip

    # --- delete, dead letters ------------------------------------------------------------

    def delete(
        self,
        ids: str | Iterable[str] | None = None,
        *,
        category: str | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        since: float | Any | None = None,
        until: float | Any | None = None,
        timeout: float | None = 10.0,
    ) -> int:
        """Delete memories for good, by ids and/or filters, wherever they are kept; how many."""
        self._check_open("delete")
        filters = {"category": category, "tags": tags, "project": project, "agent": agent,
                   "session": session, "since": since, "until": until}  # fmt: skip
        id_list, query = delete_request(ids, filters)
        # What was collected before this call must be stored first, or it would be stored
        # after the delete, and stay.
        if not self.flush(timeout):
            raise TransientBackendError(
                f"delete() found memories still waiting to be stored after {timeout} s "
                "(is the store down?): nothing was deleted; try again once it is reachable"
            )
        stores = [s for s in (self._fallback, self._backend) if s is not None]
        return delete_flushed(
            self._pipeline, stores, self.counters, self._cache, ids=id_list, query=query,
            spans=self._spans,
        )  # fmt: skip

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Memories the backend refused for good, with their errors, oldest first."""
        check_limit(limit)
        return self._backend.dead_letters(limit)

    def retry_dead_letters(self) -> int:
        """Queue every dead letter again; how many were queued."""
        self._check_open("retry dead letters")
        return requeue_dead_letters(self._backend, self._pipeline.put_many, self._max_bytes)

    # --- callbacks, stats, health --------------------------------------------------------

    def on_stored(self, callback: StoredCallback) -> StoredCallback:
        """Call `callback(batch)` in the worker after each batch is stored."""
        self._check_callbacks()
        self._on_stored.append(callback)
        return callback

    def on_failure(self, callback: FailureCallback) -> FailureCallback:
        """Call `callback(memories, error)` when memories are dead-lettered or dropped."""
        self._check_callbacks()
        self._on_failure.append(callback)
        return callback

    def _check_callbacks(self) -> None:
        if not self._pipeline.allow_callbacks():
            from .storer.pipeline import CALLBACKS_AFTER_HANDOVER, CALLBACKS_NEED_THREAD

            auto = self._storer == "auto"
            raise ValidationError(CALLBACKS_AFTER_HANDOVER if auto else CALLBACKS_NEED_THREAD)

    @property
    def closed(self) -> bool:
        """True once close() has begun."""
        return self._closed

    @property
    def backend(self) -> Backend:
        """The store this collector writes to."""
        return self._backend

    def stats(self) -> Stats:
        """A snapshot of counters, queue depth, latencies and throughput."""
        self._check_fork()
        return _health.stats(self._view)

    def health(self) -> Health:
        """ok, degraded or failing, with the reasons."""
        self._check_fork()
        return _health.health(self._view)

    def __del__(self) -> None:
        if getattr(self, "_closed", True) or self._pid != _Process.pid:
            return
        warnings.warn(
            f"{self!r} was never closed: call close() or use it as a context manager",
            ResourceWarning,
            stacklevel=2,
        )
        atexit.unregister(self._atexit)
        self._pipeline.release()

    def __repr__(self) -> str:
        return f"<MemoryCollector {self._backend.url} queued={self._pipeline.queue_depth}>"


def storer_for(config: Config, given_backend: bool, callbacks: bool, clock: Clock) -> str:
    """Where a collector stores from: "thread", "process", or "auto" (a thread, then a
    process once the load is sustained) where the storing process can do all it is asked."""
    if config.storer != "auto":
        return config.storer
    if (
        config.durability == "memory"  # the spool is how memories reach another process
        or given_backend  # a Backend object cannot be opened again elsewhere
        or callbacks  # they run where memories are stored
        or clock is not time.monotonic  # a test's clock cannot drive another process
        or config.backend_url.startswith(("memory:", "MEMORY:"))
        or _cores() < 2  # one core: a second process only takes turns with this one
    ):
        return "thread"
    return "auto"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _pipeline_for(parts: Parts, storer: str) -> Pipeline:
    """The pipeline the configuration asks for."""
    config = parts.config
    if storer in ("process", "auto"):
        from .storer import ProcessPipeline  # here: it costs `import subprocess`

        return ProcessPipeline(parts, start_in_thread=storer == "auto")
    if config.durability == "memory":
        return RamPipeline(parts)
    return SpoolPipeline(parts)


def _close_at_exit(ref: weakref.ref[MemoryCollector]) -> None:
    collector = ref()
    if collector is not None:
        collector.close(timeout=collector.config.exit_timeout)
