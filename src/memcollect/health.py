"""stats() as one snapshot, and health() as a table of rules."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Literal

from .backends.base import Backend
from .cache import Cache
from .pipelines import Pipeline, describe
from .stats import Counters, Health, Stats

__all__ = ["RULES", "View", "health", "stats"]

log = logging.getLogger("memcollect")

# A drop degrades health for this long: an alert, not a scar.
RECENT_DROP_S = 300.0
# A write that has not answered for this long makes health degraded while it waits.
SLOW_WRITE_S = 1.0

Level = Literal["degraded", "failing"]
Finding = tuple[Level, str]


class View:
    """What stats() and health() read of a collector."""

    def __init__(  # noqa: PLR0917 - built in one place, from the collector's parts
        self,
        pipeline: Pipeline,
        counters: Counters,
        cache: Cache,
        backend: Backend,
        fallback: Backend | None,
        clock: Callable[[], float],
        closed: Callable[[], bool],
    ) -> None:
        self.pipeline = pipeline
        self.counters = counters
        self.cache = cache
        self.backend = backend
        self.fallback = fallback
        self.clock = clock
        self.closed = closed


def stats(view: View) -> Stats:
    """A snapshot of counters, queue depth, latencies and throughput."""
    c, pipeline, cache = view.counters, view.pipeline, view.cache
    overall, recent = c.throughput()
    dropped = dict(c.dropped)
    batch_latency, store_latency = pipeline.latencies()
    return Stats(
        accepted=pipeline.accepted,
        stored=c.stored,
        retried=c.retried,
        retried_memories=c.retried_memories,
        failed=c.failed,
        dead_lettered=c.dead_lettered,
        dropped=sum(dropped.values()),
        dropped_by_reason=dropped,
        queue_depth=pipeline.queue_depth,
        in_flight=pipeline.in_flight,
        batches=c.batches,
        batch_write_latency=batch_latency,
        accept_to_stored_latency=store_latency,
        throughput_per_s=overall,
        recent_throughput_per_s=recent,
        uptime_s=view.clock() - c.started,
        backend=view.backend.url,
        circuit=pipeline.circuit().state,
        replayed=c.replayed,
        cache_hits=cache.stats.hits,
        cache_misses=cache.stats.misses,
        cache_evictions=cache.stats.evictions,
        cache_expired=cache.stats.expired,
        cache_size=len(cache),
        stored_in_fallback=c.stored_in_fallback,
        moved_to_primary=c.moved_to_primary,
        deleted=c.deleted,
        pending_embeddings=_pending_embeddings(view.backend),
        storer_pid=pipeline.storer_pid(),
        storer_restarts=pipeline.restarts,
        **describe(pipeline),
    )


def _pending_embeddings(backend: Backend) -> int:
    if not backend.supports_semantic:
        return 0
    try:
        return backend.pending_embeddings()
    except Exception as exc:  # noqa: BLE001 - stats never raise; health says what fails
        log.debug("could not count pending embeddings: %s", exc)
        return 0


# --- health: each rule yields what it finds wrong -----------------------------------------


def _circuit(view: View) -> Iterator[Finding]:
    breaker = view.pipeline.circuit()
    state = breaker.state
    if state != "closed" and view.fallback is not None:
        yield (
            "degraded",
            f"primary {view.backend.url} is down ({breaker.last_error}): "
            f"storing in the fallback {view.fallback.url}",
        )
    elif state != "closed":
        yield (
            "failing",
            f"backend circuit {state} after {breaker.failures} failed writes: {breaker.last_error}",
        )
    elif breaker.failures:
        yield "degraded", f"backend write failing, retrying: {breaker.last_error}"


def _storing(view: View) -> Iterator[Finding]:
    if view.closed():
        return
    why = view.pipeline.not_running()
    if why is not None:
        yield "failing", why


def _slow_write(view: View) -> Iterator[Finding]:
    since = view.pipeline.writing_since()
    if since is not None:
        waited = view.clock() - since
        if waited >= SLOW_WRITE_S:
            yield (
                "degraded",
                f"a write to {view.backend.url} has waited {waited:.0f} s for an answer",
            )


def _queue(view: View) -> Iterator[Finding]:
    depth, limit = view.pipeline.ram_depth, view.pipeline.config.max_queue_size
    if depth >= 0.8 * limit:
        yield "degraded", f"queue {depth}/{limit} is over 80% full"


def _drops(view: View) -> Iterator[Finding]:
    last_drop = view.counters.last_drop
    if last_drop is not None and view.clock() - last_drop < RECENT_DROP_S:
        total = sum(view.counters.dropped.values())
        yield "degraded", f"memories dropped in the last {RECENT_DROP_S:.0f} s ({total} in all)"


def _spool(view: View) -> Iterator[Finding]:
    spool = view.pipeline.spool
    if spool is None:
        return
    if spool.bytes >= 0.8 * spool.max_bytes:
        yield (
            "degraded",
            f"spool {spool.bytes / 2**20:.0f} MiB is over 80% of max_spool_bytes "
            f"({spool.max_bytes / 2**20:.0f} MiB)",
        )
    if spool.write_errors:
        yield "degraded", f"{spool.write_errors} spool writes failed: check the disk"


def _moving_back(view: View) -> Iterator[Finding]:
    if view.pipeline.fallback_pending and view.pipeline.circuit().state == "closed":
        yield "degraded", "moving what the fallback holds back to the primary"


def _store(view: View) -> Iterator[Finding]:
    for reason in view.backend.health_reasons():
        yield "degraded", reason


def _closed(view: View) -> Iterator[Finding]:
    if view.closed():
        yield "failing", "the collector is closed"


#: The rules health() applies, in the order their reasons are listed.
RULES: tuple[Callable[[View], Iterator[Finding]], ...] = (
    _circuit,
    _storing,
    _slow_write,
    _queue,
    _drops,
    _spool,
    _moving_back,
    _store,
    _closed,
)


def health(view: View) -> Health:
    """ok, degraded or failing, with the reasons."""
    findings = [finding for rule in RULES for finding in rule(view)]
    status = "ok"
    if findings:
        status = "failing" if any(level == "failing" for level, _ in findings) else "degraded"
    live = view.backend.url
    if view.pipeline.circuit().state != "closed" and view.fallback is not None:
        live = view.fallback.url
    reasons = [reason for _, reason in findings]
    return Health(status=status, reasons=reasons, backend=live)  # type: ignore[arg-type]
