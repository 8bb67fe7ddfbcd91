"""Prometheus metrics, generated from every field of Stats at scrape time (nothing on the hot
path, and no list kept by hand that could fall behind Stats)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..collector import MemoryCollector
from ..stats import Health, Latency, Stats

__all__ = ["metric_name", "metrics_registry", "metrics_text", "stats_metrics"]

_HEALTH = {"ok": 0, "degraded": 1, "failing": 2}

# Fields that go up and down; every other number only grows, and is a counter.
GAUGES = frozenset({
    "queue_depth", "in_flight", "spool_bytes", "spool_segments", "spool_pending", "cache_size",
    "pending_embeddings", "throughput_per_s", "recent_throughput_per_s", "uptime_s",
    "storer_pid",
})  # fmt: skip
# Fields whose metric has another name than the field: units Prometheus spells out, and the
# drop total, which the per-reason family already sums.
NAMES = {
    "uptime_s": "uptime_seconds",
    "batch_write_latency": "batch_write_seconds",
    "accept_to_stored_latency": "accept_to_stored_seconds",
    "dropped_by_reason": "dropped",
    "dropped": "dropped",
    "backend": "backend_info",
    "circuit": "circuit_open",
}
HELP = {
    "accepted": "Memories accepted by collect()",
    "stored": "Memories stored",
    "retried": "Batch writes retried",
    "retried_memories": "Memories in batch writes retried",
    "failed": "Batch writes that failed (each retry counts)",
    "dead_lettered": "Memories dead-lettered",
    "dropped_by_reason": "Memories dropped, by reason",
    "queue_depth": "Memories waiting to be stored",
    "in_flight": "Memories in the batch being written",
    "batches": "Batches written",
    "batch_write_latency": "Batch write latency quantiles over recent samples",
    "accept_to_stored_latency": "collect() to stored latency quantiles over recent samples",
    "throughput_per_s": "Memories stored per second since start",
    "recent_throughput_per_s": "Memories stored per second, recently",
    "uptime_s": "Seconds since the collector started",
    "backend": "The store written to",
    "circuit": "1 while the backend circuit is not closed",
    "spool_bytes": "Bytes in the spool",
    "spool_segments": "Spool segment files",
    "spool_pending": "Memories waiting in the spool",
    "replayed": "Memories replayed from the spool",
    "corrupt_skipped": "Corrupt spool stretches skipped",
    "cache_hits": "Read cache hits",
    "cache_misses": "Read cache misses",
    "cache_evictions": "Read cache evictions",
    "cache_expired": "Read cache entries expired",
    "cache_size": "Entries in the read cache",
    "stored_in_fallback": "Memories stored in the fallback",
    "moved_to_primary": "Memories moved from the fallback to the primary",
    "deleted": "Memories deleted by delete()",
    "pending_embeddings": "Memories stored, not yet embedded for semantic recall",
    "storer_pid": "The storing process's PID (storer='process')",
    "storer_restarts": "Times the storing process was started again (storer='process')",
}


def metric_name(field: str) -> str:
    """The metric a Stats field is exposed as (without the _total of counters)."""
    return "memcollect_" + NAMES.get(field, field)


def stats_metrics(stats: Stats, health: Health) -> Iterator[Metric]:
    """A metric for every field of Stats, and one for health."""
    for field in msgspec.structs.fields(Stats):
        if field.name == "dropped":
            continue  # the sum of dropped_by_reason, which is exposed by reason
        value = getattr(stats, field.name)
        name, doc = metric_name(field.name), HELP.get(field.name, field.name.replace("_", " "))
        if isinstance(value, Latency):
            family = GaugeMetricFamily(name, doc, labels=["quantile"])
            family.add_metric(["0.5"], value.p50_ms / 1000)
            family.add_metric(["0.99"], value.p99_ms / 1000)
            yield family
        elif isinstance(value, dict):
            counts = CounterMetricFamily(name, doc, labels=["reason"])
            for reason, n in sorted(value.items()):
                counts.add_metric([reason], n)
            yield counts
        elif field.name == "backend":
            yield _info(name, doc, value)
        elif field.name == "circuit":
            yield GaugeMetricFamily(name, doc, value=float(value != "closed"))
        elif value is None:
            continue  # not known here (no storing process): no sample rather than a false one
        elif field.name in GAUGES:
            yield GaugeMetricFamily(name, doc, value=float(value))
        else:
            yield CounterMetricFamily(name, doc, value=value)
    yield GaugeMetricFamily(
        "memcollect_health", "Health: 0 ok, 1 degraded, 2 failing", value=_HEALTH[health.status]
    )


def _info(name: str, doc: str, url: str) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=["backend"])
    family.add_metric([url], 1.0)
    return family


class _CollectorMetrics(Collector):
    def __init__(self, get_collector: Callable[[], MemoryCollector]) -> None:
        self.get_collector = get_collector

    def collect(self) -> Iterator[Metric]:
        collector = self.get_collector()
        return stats_metrics(collector.stats(), collector.health())


def metrics_registry(get_collector: Callable[[], MemoryCollector]) -> CollectorRegistry:
    """A registry whose scrape reads the collector's stats and health."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_CollectorMetrics(get_collector))
    return registry


def metrics_text(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition text of a registry, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
