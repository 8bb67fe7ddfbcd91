"""The service layer of the framework design memcollect grew out of, on the real engine.

Code written against that design runs with only its imports changed. What differs is
listed in the README ("Coming from the framework design").
"""

from __future__ import annotations

import asyncio
import copy
import enum
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .collector import MemoryCollector
from .config import Config, from_framework_config, load_config
from .errors import ConfigError, MemcollectError, ValidationError
from .model import Memory

__all__ = [
    "AsyncMemoryCollector",
    "BaseService",
    "CollectionStats",
    "MemoryCategory",
    "MemoryOperation",
    "MemoryPriority",
    "MemoryServiceIntegration",
    "ServiceHealth",
    "ServiceManager",
    "config_errors",
    "get_config",
    "get_memory_integration",
    "quick_collect_bug",
    "quick_collect_error",
    "quick_collect_feedback",
    "set_memory_integration",
    "validate_config",
]

log = logging.getLogger("memcollect.service")


class MemoryCategory(enum.StrEnum):
    """The framework's categories (memcollect accepts any lowercase slug besides)."""

    BUG = "bug"
    FEEDBACK = "feedback"
    ARCHITECTURE = "architecture"
    PERFORMANCE = "performance"
    INTEGRATION = "integration"
    QA = "qa"
    ERROR = "error"
    OPERATION = "operation"


class MemoryPriority(enum.StrEnum):
    """The framework's priorities."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass
class MemoryOperation:
    """A collected memory in the framework's shape."""

    id: str
    category: MemoryCategory | str
    content: str
    metadata: dict[str, Any]
    priority: MemoryPriority
    created_at: datetime
    retry_count: int = 0
    max_retries: int = 3
    next_retry: datetime | None = None

    def __post_init__(self) -> None:
        if self.next_retry is None:
            self.next_retry = self.created_at

    @classmethod
    def from_memory(cls, memory: Memory, max_retries: int = 3) -> MemoryOperation:
        """The framework's view of a memcollect Memory."""
        try:
            category: MemoryCategory | str = MemoryCategory(memory.category)
        except ValueError:
            category = memory.category
        return cls(
            id=memory.id,
            category=category,
            content=memory.content,
            metadata=dict(memory.metadata),
            priority=MemoryPriority(memory.priority),
            created_at=datetime.fromtimestamp(memory.created_at),
            max_retries=max_retries,
        )


@dataclass
class CollectionStats:
    """The framework's statistics, filled from the engine's counters."""

    total_operations: int = 0
    successful_operations: int = 0
    failed_operations: int = 0
    retried_operations: int = 0
    average_latency: float = 0.0
    queue_size: int = 0
    batch_operations: int = 0
    cache_hits: int = 0
    cache_misses: int = 0

    def success_rate(self) -> float:
        """Stored as a percentage of all finished operations (100.0 before any)."""
        finished = self.successful_operations + self.failed_operations
        if finished == 0:
            return 100.0
        return self.successful_operations / finished * 100.0


@dataclass
class ServiceHealth:
    """What health_check() reports about one service."""

    name: str
    status: str  # "healthy", "degraded", "unhealthy" or "stopped"
    checks: dict[str, bool] = field(default_factory=dict)
    message: str = ""
    uptime_seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        """True when status is "healthy"."""
        return self.status == "healthy"


class BaseService:
    """A named service with an async lifecycle; subclasses fill in _initialize and _cleanup."""

    def __init__(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.config: dict[str, Any] = dict(config or {})
        self.logger = logging.getLogger(f"memcollect.service.{name}")
        self._running = False
        self._started_at: float | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def running(self) -> bool:
        """Whether the service has started and not stopped."""
        return self._running

    @property
    def uptime(self) -> float:
        """Seconds since start() (0 when stopped)."""
        if not self._running or self._started_at is None:
            return 0.0
        return time.monotonic() - self._started_at

    def get_config(self, key: str, default: Any = None) -> Any:
        """A config value by key; dots reach into nested dicts ("cache.ttl_seconds")."""
        value: Any = self.config
        for part in key.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return default
            value = value[part]
        return value

    def _guard(self) -> asyncio.Lock:
        # Made on first use, inside the running loop.
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def start(self) -> None:
        """Start the service (a no-op when running)."""
        async with self._guard():
            if self._running:
                return
            await self._initialize()
            self._running = True
            self._started_at = time.monotonic()

    async def stop(self) -> None:
        """Stop the service, finishing the work in hand first (a no-op when stopped)."""
        async with self._guard():
            if not self._running:
                return
            try:
                await self._cleanup()
            finally:
                self._running = False

    async def restart(self) -> None:
        """Stop, then start."""
        await self.stop()
        await self.start()

    async def health_check(self) -> ServiceHealth:
        """The service's status and the checks behind it."""
        if not self._running:
            return ServiceHealth(self.name, "stopped", message="not running")
        try:
            checks = await self._health_check()
        except Exception as exc:  # noqa: BLE001 - a failing check is a finding, not a crash
            return ServiceHealth(
                self.name, "unhealthy", message=str(exc), uptime_seconds=self.uptime
            )
        failed = [name for name, ok in checks.items() if not ok]
        status = "healthy" if not failed else "degraded"
        message = "" if not failed else "failing checks: " + ", ".join(failed)
        return ServiceHealth(self.name, status, checks, message, self.uptime)

    async def _initialize(self) -> None:
        """Acquire resources; called by start()."""

    async def _cleanup(self) -> None:
        """Release resources; called by stop()."""

    async def _health_check(self) -> dict[str, bool]:
        """Named checks, True when passing."""
        return {}


@dataclass
class _Registration:
    service: BaseService
    dependencies: tuple[str, ...]
    startup_order: int
    auto_start: bool
    critical: bool
    order: int


class ServiceManager:
    """Starts services in dependency and startup order, stops them in reverse."""

    def __init__(self) -> None:
        self._services: dict[str, _Registration] = {}
        self._started: list[str] = []

    def register_service(
        self,
        service: BaseService,
        dependencies: Iterable[str] = (),
        startup_order: int = 100,
        auto_start: bool = True,
        critical: bool = False,
    ) -> None:
        """Add a service; it starts after its dependencies and after lower startup_order."""
        if not isinstance(service, BaseService):
            raise ValidationError(f"service must be a BaseService, not {type(service).__name__}")
        if service.name in self._services:
            raise ValidationError(f"a service named {service.name!r} is registered already")
        self._services[service.name] = _Registration(
            service, tuple(dependencies), startup_order, auto_start, critical, len(self._services)
        )

    def get_service(self, name: str) -> BaseService | None:
        """A registered service by name."""
        registration = self._services.get(name)
        return registration.service if registration else None

    def _start_order(self) -> list[str]:
        order: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, path: tuple[str, ...]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                cycle = " -> ".join((*path, name))
                raise ValidationError(f"services depend on each other in a cycle: {cycle}")
            registration = self._services.get(name)
            if registration is None:
                raise ValidationError(
                    f"service {path[-1]!r} depends on {name!r}, which is not registered"
                )
            state[name] = "visiting"
            for dependency in sorted(registration.dependencies, key=self._sort_key):
                visit(dependency, (*path, name))
            state[name] = "done"
            order.append(name)

        for name in sorted(self._services, key=self._sort_key):
            visit(name, ())
        return order

    def _sort_key(self, name: str) -> tuple[int, int]:
        registration = self._services.get(name)
        return (registration.startup_order, registration.order) if registration else (0, 0)

    async def start_all(self) -> dict[str, bool]:
        """Start every auto_start service, dependencies first; which ones started.

        A service whose dependency failed is not started. A critical service that fails
        stops what was started and raises.
        """
        results: dict[str, bool] = {}
        for name in self._start_order():
            registration = self._services[name]
            if not registration.auto_start:
                continue
            if not all(results.get(d, self._services[d].service.running)
                       for d in registration.dependencies):  # fmt: skip
                log.error("not starting %s: a dependency did not start", name)
                results[name] = False
                continue
            try:
                await registration.service.start()
            except Exception as exc:
                results[name] = False
                log.exception("service %s failed to start", name)
                if registration.critical:
                    await self.stop_all()
                    raise MemcollectError(
                        f"critical service {name!r} failed to start: {exc}"
                    ) from exc
                continue
            results[name] = True
            self._started.append(name)
        return results

    async def stop_all(self) -> dict[str, bool]:
        """Stop every running service, in reverse start order, even if some fail."""
        results: dict[str, bool] = {}
        order = self._start_order()
        for name in reversed(order):
            service = self._services[name].service
            if not service.running:
                continue
            try:
                await service.stop()
                results[name] = True
            except Exception:
                log.exception("service %s failed to stop", name)
                results[name] = False
        self._started.clear()
        return results

    async def health(self) -> dict[str, ServiceHealth]:
        """Every service's health, by name."""
        return {name: await r.service.health_check() for name, r in self._services.items()}


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


# --- configuration in the framework's shape ----------------------------------------------

_FRAMEWORK_PROFILES: dict[str, dict[str, Any]] = {
    "default": {
        "batch_size": 10, "batch_timeout": 30.0, "max_queue_size": 1000, "max_retries": 3,
        "retry_delay": 1.0, "operation_timeout": 15.0, "max_concurrent_ops": 20,
        "health_check_interval": 60,
        "cache": {"enabled": True, "max_size": 1000, "ttl_seconds": 300},
    },
    "development": {
        "batch_size": 5, "batch_timeout": 10.0, "max_queue_size": 500, "max_retries": 2,
        "retry_delay": 0.5, "operation_timeout": 10.0, "max_concurrent_ops": 10,
        "health_check_interval": 30,
        "cache": {"enabled": True, "max_size": 500, "ttl_seconds": 120},
    },
    "production": {
        "batch_size": 50, "batch_timeout": 30.0, "max_queue_size": 10_000, "max_retries": 5,
        "retry_delay": 2.0, "operation_timeout": 30.0, "max_concurrent_ops": 50,
        "health_check_interval": 60,
        "cache": {"enabled": True, "max_size": 5000, "ttl_seconds": 600},
    },
    "high_performance": {
        "batch_size": 100, "batch_timeout": 5.0, "max_queue_size": 50_000, "max_retries": 3,
        "retry_delay": 0.5, "operation_timeout": 10.0, "max_concurrent_ops": 100,
        "health_check_interval": 30,
        "cache": {"enabled": True, "max_size": 10_000, "ttl_seconds": 300},
    },
    "low_resource": {
        "batch_size": 5, "batch_timeout": 60.0, "max_queue_size": 200, "max_retries": 2,
        "retry_delay": 2.0, "operation_timeout": 20.0, "max_concurrent_ops": 5,
        "health_check_interval": 120,
        "cache": {"enabled": True, "max_size": 100, "ttl_seconds": 60},
    },
}  # fmt: skip


def get_config(environment: str = "default") -> dict[str, Any]:
    """A framework config profile as a fresh dict (changing it changes no other)."""
    try:
        return copy.deepcopy(_FRAMEWORK_PROFILES[environment])
    except KeyError:
        raise ConfigError(
            f"unknown environment {environment!r}: use {', '.join(_FRAMEWORK_PROFILES)}"
        ) from None


_POSITIVE = ("batch_size", "max_queue_size", "max_concurrent_ops")
_NON_NEGATIVE = ("max_retries",)
_SECONDS = ("batch_timeout", "retry_delay", "operation_timeout", "health_check_interval")


def config_errors(config: object) -> list[str]:
    """Every problem with a framework config, one sentence each (empty when valid)."""
    if not isinstance(config, Mapping):
        return [f"config must be a dict, not {type(config).__name__}"]
    errors = []
    for key in _POSITIVE + _NON_NEGATIVE:
        if key in config:
            value = config[key]
            low = 1 if key in _POSITIVE else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                errors.append(f"{key} must be a whole number of at least {low}, not {value!r}")
    for key in _SECONDS:
        if key in config:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                errors.append(f"{key} must be a number of seconds, not {value!r}")
    cache = config.get("cache", {})
    if not isinstance(cache, Mapping):
        errors.append(f"cache must be a dict, not {cache!r}")
    else:
        if "enabled" in cache and not isinstance(cache["enabled"], bool):
            errors.append(f"cache.enabled must be True or False, not {cache['enabled']!r}")
        for key in ("max_size", "ttl_seconds"):
            value = cache.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                errors.append(f"cache.{key} must be a non-negative number, not {value!r}")
    if not errors:
        try:
            load_config(from_framework_config(config), environ={})
        except ConfigError as exc:
            errors.append(str(exc))
    return errors


def validate_config(config: object) -> bool:
    """Whether a framework config is valid (config_errors() says what is wrong)."""
    errors = config_errors(config)
    for error in errors:
        log.warning("invalid memory collector config: %s", error)
    return not errors
