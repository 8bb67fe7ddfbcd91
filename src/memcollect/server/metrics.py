"""Prometheus metrics, read from the collector's stats at scrape time (nothing on the hot path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..collector import MemoryCollector

__all__ = ["metrics_registry", "metrics_text"]

_HEALTH = {"ok": 0, "degraded": 1, "failing": 2}


class _CollectorMetrics(Collector):
    def __init__(self, get_collector: Callable[[], MemoryCollector]) -> None:
        self.get_collector = get_collector

    def collect(self) -> Iterator[Metric]:
        collector = self.get_collector()
        stats = collector.stats()
        health = collector.health()
        counters = {
            "accepted": ("Memories accepted by collect()", stats.accepted),
            "stored": ("Memories stored", stats.stored),
            "retried": ("Batch writes retried", stats.retried),
            "dead_lettered": ("Memories dead-lettered", stats.dead_lettered),
            "batches": ("Batches written", stats.batches),
            "replayed": ("Memories replayed from the spool", stats.replayed),
            "corrupt_skipped": ("Corrupt spool stretches skipped", stats.corrupt_skipped),
            "stored_in_fallback": ("Memories stored in the fallback", stats.stored_in_fallback),
            "moved_to_primary": ("Memories moved from fallback", stats.moved_to_primary),
            "deleted": ("Memories deleted by delete()", stats.deleted),
            "storer_restarts": (
                "Times the storing process was started again (storer='process')",
                stats.storer_restarts,
            ),
            "cache_hits": ("Read cache hits", stats.cache_hits),
            "cache_misses": ("Read cache misses", stats.cache_misses),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"memcollect_{name}", doc, value=value)
        dropped = CounterMetricFamily(
            "memcollect_dropped", "Memories dropped, by reason", labels=["reason"]
        )
        for reason, n in sorted(stats.dropped_by_reason.items()):
            dropped.add_metric([reason], n)
        yield dropped
        gauges = {
            "queue_depth": ("Memories queued in RAM", stats.queue_depth),
            "in_flight": ("Memories in the batch being written", stats.in_flight),
            "spool_bytes": ("Bytes in the spool", stats.spool_bytes),
            "spool_pending": ("Memories waiting in the spool", stats.spool_pending),
            "spool_segments": ("Spool segment files", stats.spool_segments),
            "pending_embeddings": (
                "Memories stored, not yet embedded for semantic recall",
                stats.pending_embeddings,
            ),
            "uptime_seconds": ("Seconds since the collector started", stats.uptime_s),
            "health": ("Health: 0 ok, 1 degraded, 2 failing", _HEALTH[health.status]),
            "circuit_open": ("1 while the backend circuit is open", stats.circuit != "closed"),
        }
        for name, (doc, gauge) in gauges.items():
            yield GaugeMetricFamily(f"memcollect_{name}", doc, value=float(gauge))
        for name, latency in (
            ("batch_write_seconds", stats.batch_write_latency),
            ("accept_to_stored_seconds", stats.accept_to_stored_latency),
        ):
            family = GaugeMetricFamily(
                f"memcollect_{name}",
                "Latency quantiles over recent samples",
                labels=["quantile"],
            )
            family.add_metric(["0.5"], latency.p50_ms / 1000)
            family.add_metric(["0.99"], latency.p99_ms / 1000)
            yield family


def metrics_registry(get_collector: Callable[[], MemoryCollector]) -> CollectorRegistry:
    """A registry whose scrape reads the collector's stats and health."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_CollectorMetrics(get_collector))
    return registry


def metrics_text(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition text of a registry, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
