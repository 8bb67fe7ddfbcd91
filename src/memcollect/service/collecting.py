"""AsyncMemoryCollector and MemoryServiceIntegration: the framework's collector service."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from ..collector import MemoryCollector
from ..config import Config, load_config
from ..errors import ValidationError
from .profiles import get_config
from .services import BaseService, ServiceManager
from .types import CollectionStats, MemoryCategory, MemoryPriority

__all__ = [
    "AsyncMemoryCollector",
    "MemoryServiceIntegration",
    "get_memory_integration",
    "quick_collect_bug",
    "quick_collect_error",
    "quick_collect_feedback",
    "set_memory_integration",
]

log = logging.getLogger("memcollect.service")


PerformanceCallback = Callable[[dict[str, Any]], Awaitable[None] | None]


class AsyncMemoryCollector(BaseService):
    """The framework's collector service, storing through a real MemoryCollector."""

    def __init__(self, config: Mapping[str, Any] | Config | None = None) -> None:
        framework: dict[str, Any] = get_config("default")
        if isinstance(config, Config):
            self._engine_config: Config = config
        else:
            framework.update(config or {})
            self._engine_config = load_config(framework)
        super().__init__("async_memory_collector", framework)
        self.health_check_interval = float(self.get_config("health_check_interval", 60))
        self.performance_callbacks: list[PerformanceCallback] = []
        self._collector: MemoryCollector | None = None
        self._monitor: asyncio.Task[None] | None = None

    @property
    def collector(self) -> MemoryCollector:
        """The engine underneath (created on first use)."""
        if self._collector is None:
            self._collector = MemoryCollector(self._engine_config)
        return self._collector

    async def _initialize(self) -> None:
        self.collector  # noqa: B018 - create the engine (opens the store, starts the worker)
        self._monitor = asyncio.create_task(self._performance_monitor())

    async def _cleanup(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None
        if self._collector is not None:
            collector, self._collector = self._collector, None
            # Everything in hand is stored before close() returns (or kept in the spool).
            await collector.aclose(timeout=self._engine_config.exit_timeout)

    async def collect_async(
        self,
        category: MemoryCategory | str,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        priority: MemoryPriority | str = "medium",
    ) -> str:
        """Queue one memory and return its id; never waits for the store."""
        return self.collector.collect(
            _lower(category, "category"), content, metadata, priority=_lower(priority, "priority")
        )

    async def flush_queue(self, timeout: float = 30.0) -> int:
        """Wait until everything queued is stored; how many memories finished meanwhile."""
        collector = self.collector
        before = _finished(collector)
        await collector.aflush(timeout)
        return _finished(collector) - before

    async def get_stats(self) -> CollectionStats:
        """The engine's numbers in the framework's shape."""
        s = self.collector.stats()
        failed = s.dead_lettered + s.dropped
        return CollectionStats(
            total_operations=s.accepted,
            successful_operations=s.stored,
            failed_operations=failed,
            retried_operations=s.retried_memories,
            average_latency=s.accept_to_stored_latency.mean_ms / 1000.0,
            queue_size=max(0, s.accepted - s.stored - failed),
            batch_operations=s.batches,
            cache_hits=s.cache_hits,
            cache_misses=s.cache_misses,
        )

    async def add_performance_callback(self, callback: PerformanceCallback) -> None:
        """Call `callback(metrics)` (sync or async) every health_check_interval seconds."""
        self.performance_callbacks.append(callback)

    async def _performance_monitor(self) -> None:
        while True:
            await asyncio.sleep(self.health_check_interval)
            await self.report_performance()

    async def report_performance(self) -> dict[str, Any]:
        """Send the current metrics to every performance callback now; the metrics."""
        stats = await self.get_stats()
        engine = self.collector.stats()
        metrics = {
            "timestamp": datetime.now().isoformat(),
            "queue_size": stats.queue_size,
            "retry_queue_size": 0,
            "active_operations": engine.in_flight,
            "cache_size": engine.cache_size,
            "stats": stats,
        }
        for callback in list(self.performance_callbacks):
            try:
                result = callback(metrics)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.logger.exception("performance callback %r failed", callback)
        return metrics

    async def _health_check(self) -> dict[str, bool]:
        health = self.collector.health()
        stats = await self.get_stats()
        return {
            "queue_operational": health.status != "failing",
            "queue_size_ok": stats.queue_size < 0.9 * self._engine_config.max_queue_size,
            "success_rate_ok": stats.success_rate() >= 95.0,
            "average_latency_ok": stats.average_latency < 5.0,
        }


def _lower(value: object, field_name: str) -> str:
    if isinstance(value, str):
        return str.__str__(value).lower()
    raise ValidationError(f"{field_name} must be a str or an enum member, not {value!r}")


def _finished(collector: MemoryCollector) -> int:
    s = collector.stats()
    return s.stored + s.dead_lettered + s.dropped


class MemoryServiceIntegration:
    """Registers an AsyncMemoryCollector with a ServiceManager and collects through it."""

    def __init__(self, service_manager: ServiceManager) -> None:
        self.service_manager = service_manager
        self._collector: AsyncMemoryCollector | None = None

    async def register_async_memory_collector(
        self, config: Mapping[str, Any] | None = None
    ) -> AsyncMemoryCollector:
        """Create the collector service from a framework config and register it."""
        collector = AsyncMemoryCollector(config)
        self.service_manager.register_service(
            collector, dependencies=(), startup_order=10, auto_start=True, critical=False
        )
        self._collector = collector
        return collector

    async def get_collector(self) -> AsyncMemoryCollector | None:
        """The registered collector service, if any."""
        if self._collector is None:
            found = self.service_manager.get_service("async_memory_collector")
            if isinstance(found, AsyncMemoryCollector):
                self._collector = found
        return self._collector

    async def _collect(
        self, category: str, content: str, metadata: Mapping[str, Any] | None, priority: str
    ) -> str | None:
        collector = await self.get_collector()
        if collector is None:
            log.warning("no AsyncMemoryCollector is registered: %s memory not collected", category)
            return None
        return await collector.collect_async(category, content, metadata, priority)

    async def collect_bug(
        self, content: str, metadata: Mapping[str, Any] | None = None, priority: str = "high"
    ) -> str | None:
        """Collect a bug report."""
        return await self._collect("bug", content, metadata, priority)

    async def collect_feedback(
        self, content: str, metadata: Mapping[str, Any] | None = None, priority: str = "medium"
    ) -> str | None:
        """Collect user feedback."""
        return await self._collect("feedback", content, metadata, priority)

    async def collect_error(
        self, content: str, metadata: Mapping[str, Any] | None = None, priority: str = "critical"
    ) -> str | None:
        """Collect an error."""
        return await self._collect("error", content, metadata, priority)

    async def collect_performance_data(
        self, content: str, metadata: Mapping[str, Any] | None = None, priority: str = "medium"
    ) -> str | None:
        """Collect performance data."""
        return await self._collect("performance", content, metadata, priority)

    async def collect_architecture_info(
        self, content: str, metadata: Mapping[str, Any] | None = None, priority: str = "medium"
    ) -> str | None:
        """Collect an architecture note."""
        return await self._collect("architecture", content, metadata, priority)

    async def get_collection_stats(self) -> dict[str, Any] | None:
        """The collector's statistics as a dict, with success_rate."""
        collector = await self.get_collector()
        if collector is None:
            return None
        stats = await collector.get_stats()
        return {
            "total_operations": stats.total_operations,
            "successful_operations": stats.successful_operations,
            "failed_operations": stats.failed_operations,
            "retried_operations": stats.retried_operations,
            "success_rate": stats.success_rate(),
            "average_latency": stats.average_latency,
            "queue_size": stats.queue_size,
            "batch_operations": stats.batch_operations,
            "cache_hits": stats.cache_hits,
            "cache_misses": stats.cache_misses,
        }

    async def flush_collector(self, timeout: float = 30.0) -> int | None:
        """Wait until everything collected is stored; how many finished meanwhile."""
        collector = await self.get_collector()
        if collector is None:
            return None
        return await collector.flush_queue(timeout)


_integration: MemoryServiceIntegration | None = None


def get_memory_integration() -> MemoryServiceIntegration | None:
    """The process-wide integration, if one was set."""
    return _integration


def set_memory_integration(integration: MemoryServiceIntegration | None) -> None:
    """Set (or clear, with None) the process-wide integration."""
    global _integration
    _integration = integration


async def quick_collect_bug(content: str, metadata: Mapping[str, Any] | None = None) -> str | None:
    """Collect a bug through the process-wide integration."""
    return await _quick("collect_bug", content, metadata)


async def quick_collect_feedback(
    content: str, metadata: Mapping[str, Any] | None = None
) -> str | None:
    """Collect feedback through the process-wide integration."""
    return await _quick("collect_feedback", content, metadata)


async def quick_collect_error(
    content: str, metadata: Mapping[str, Any] | None = None
) -> str | None:
    """Collect an error through the process-wide integration."""
    return await _quick("collect_error", content, metadata)


async def _quick(method: str, content: str, metadata: Mapping[str, Any] | None) -> str | None:
    integration = get_memory_integration()
    if integration is None:
        log.warning("no memory integration is set: call set_memory_integration() first")
        return None
    result: str | None = await getattr(integration, method)(content, metadata)
    return result
