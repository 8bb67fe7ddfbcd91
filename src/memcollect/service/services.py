"""BaseService and ServiceManager: named services with an async lifecycle, started in order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import MemcollectError, ValidationError
from .types import ServiceHealth

__all__ = ["BaseService", "ServiceManager"]

log = logging.getLogger("memcollect.service")


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
