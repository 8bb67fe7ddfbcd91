"""The framework design's service layer, end to end on the real engine."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

import memcollect as mc
from memcollect import service as svc
from memcollect.backends.sqlite import SQLiteBackend
from memcollect.testing import FaultyBackend

PROFILES = ["default", "development", "production", "high_performance", "low_resource"]


def framework_config(profile: str, tmp_path: Path) -> dict[str, Any]:
    config = svc.get_config(profile)
    config.update(backend=f"sqlite:///{tmp_path}/framework.db", data_dir=str(tmp_path / "d"))
    return config


@pytest.mark.parametrize("profile", PROFILES)
def test_the_framework_flow_stores_everything(profile: str, tmp_path: Path) -> None:
    async def flow() -> tuple[list[str], dict[str, Any], dict[str, svc.ServiceHealth]]:
        manager = svc.ServiceManager()
        integration = svc.MemoryServiceIntegration(manager)
        svc.set_memory_integration(integration)
        collector = await integration.register_async_memory_collector(
            framework_config(profile, tmp_path)
        )
        assert await integration.get_collector() is collector
        assert (await manager.start_all()) == {"async_memory_collector": True}
        ids = [
            await integration.collect_bug("Login fails on Safari 17", {"module": "auth"}),
            await integration.collect_feedback("Love the new dashboard"),
            await integration.collect_error("Timeout calling payments API"),
            await integration.collect_performance_data("p99 rose to 2.1 s", {"p99_ms": 2100.0}),
            await integration.collect_architecture_info("Use PostgreSQL past one host"),
            await svc.quick_collect_bug("quick bug"),
            await svc.quick_collect_feedback("quick feedback"),
            await svc.quick_collect_error("quick error"),
            await collector.collect_async(
                svc.MemoryCategory.QA, "enum category", priority=svc.MemoryPriority.LOW
            ),
        ]
        ids += await asyncio.gather(
            *(integration.collect_bug(f"bug {i}", {"i": i}) for i in range(300))
        )
        health = await manager.health()
        stats = await integration.get_collection_stats()
        assert stats is not None
        # Collected in the very last instant before stopping: must be stored too.
        ids.append(await integration.collect_error("the last one"))
        await manager.stop_all()
        svc.set_memory_integration(None)
        return [i for i in ids if i], stats, health

    ids, stats, health = asyncio.run(flow())
    assert len(ids) == len(set(ids)) == 310
    store = SQLiteBackend(f"sqlite:///{tmp_path}/framework.db")
    stored = {m.id: m for m in store.search(mc.SearchQuery(limit=1000))}
    store.close()
    assert set(stored) == set(ids)
    assert stored[ids[0]].priority == "high" and stored[ids[2]].priority == "critical"
    assert stored[ids[8]].category == "qa" and stored[ids[8]].priority == "low"
    assert stats["total_operations"] == 309
    assert stats["failed_operations"] == 0 and stats["success_rate"] == 100.0
    assert health["async_memory_collector"].status in ("healthy", "degraded")


def test_flush_collector_really_waits_and_stats_come_from_the_engine(tmp_path: Path) -> None:
    async def run() -> tuple[int | None, svc.CollectionStats]:
        manager = svc.ServiceManager()
        integration = svc.MemoryServiceIntegration(manager)
        collector = await integration.register_async_memory_collector(
            framework_config("default", tmp_path)
        )
        await manager.start_all()
        for i in range(50):
            await integration.collect_feedback(f"f{i}")
        flushed = await integration.flush_collector(timeout=30)
        stats = await collector.get_stats()
        await manager.stop_all()
        return flushed, stats

    flushed, stats = asyncio.run(run())
    # All 50 are stored once it returns. It counts those that finished while it waited: the
    # worker may have stored some of them already, as fast as the machine lets it.
    assert 0 <= flushed <= 50
    assert (stats.total_operations, stats.successful_operations, stats.queue_size) == (50, 50, 0)
    assert stats.batch_operations >= 1 and stats.average_latency > 0


def test_a_poison_record_is_one_failure_counted_once(tmp_path: Path) -> None:
    backend = FaultyBackend(poison=lambda m: m.content == "poison")
    engine = mc.Config(backend="memory://", durability="memory", data_dir=str(tmp_path))

    async def run() -> svc.CollectionStats:
        collector = svc.AsyncMemoryCollector(engine)
        collector._collector = mc.MemoryCollector(backend, durability="memory")
        await collector.start()
        for text in ["ok 1", "poison", "ok 2"]:
            await collector.collect_async("bug", text)
        await collector.flush_queue()
        stats = await collector.get_stats()
        await collector.stop()
        return stats

    stats = asyncio.run(run())
    assert (stats.total_operations, stats.successful_operations) == (3, 2)
    assert stats.failed_operations == 1
    assert stats.success_rate() == pytest.approx(200 / 3)


def test_invalid_input_raises_and_no_collector_returns_none_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        integration = svc.MemoryServiceIntegration(svc.ServiceManager())
        with caplog.at_level(logging.WARNING, logger="memcollect.service"):
            assert await integration.collect_bug("nobody listens") is None
        assert "no AsyncMemoryCollector is registered" in caplog.text
        await integration.register_async_memory_collector(framework_config("default", tmp_path))
        with pytest.raises(mc.ValidationError, match="content is empty"):
            await integration.collect_bug("")
        with pytest.raises(mc.ValidationError, match="priority 'urgent' is unknown"):
            await integration.collect_bug("x", priority="urgent")
        collector = await integration.get_collector()
        assert collector is not None
        await collector.stop()  # never started: a no-op
        assert collector.collector is not None
        collector.collector.close()

    asyncio.run(run())


def test_service_manager_orders_by_dependencies_and_stops_everything() -> None:
    events: list[str] = []

    class Recorder(svc.BaseService):
        def __init__(self, name: str, fail_stop: bool = False) -> None:
            super().__init__(name)
            self.fail_stop = fail_stop

        async def _initialize(self) -> None:
            events.append(f"start {self.name}")

        async def _cleanup(self) -> None:
            events.append(f"stop {self.name}")
            if self.fail_stop:
                raise RuntimeError("stop failed")

    async def run() -> None:
        manager = svc.ServiceManager()
        manager.register_service(Recorder("api"), dependencies=["db", "cache"], startup_order=1)
        manager.register_service(Recorder("db", fail_stop=True), startup_order=50)
        manager.register_service(Recorder("cache"), startup_order=20)
        manager.register_service(Recorder("manual"), auto_start=False)
        assert await manager.start_all() == {"cache": True, "db": True, "api": True}
        api = manager.get_service("api")
        assert api is not None and api.running and api.uptime >= 0
        health = await manager.health()
        assert health["api"].healthy and health["manual"].status == "stopped"
        results = await manager.stop_all()
        assert results == {"api": True, "db": False, "cache": True}
        assert not any(s.running for s in (manager.get_service(n) for n in ("api", "cache")) if s)

    asyncio.run(run())
    assert events == [
        "start cache",
        "start db",
        "start api",
        "stop api",
        "stop db",
        "stop cache",
    ]


def test_service_manager_refuses_cycles_and_a_critical_failure_raises() -> None:
    class Broken(svc.BaseService):
        async def _initialize(self) -> None:
            raise RuntimeError("cannot connect")

    async def run() -> None:
        cyclic = svc.ServiceManager()
        cyclic.register_service(svc.BaseService("a"), dependencies=["b"])
        cyclic.register_service(svc.BaseService("b"), dependencies=["a"])
        with pytest.raises(mc.ValidationError, match="cycle"):
            await cyclic.start_all()
        manager = svc.ServiceManager()
        manager.register_service(svc.BaseService("fine"), startup_order=1)
        manager.register_service(Broken("broken"), startup_order=2, critical=True)
        with pytest.raises(mc.MemcollectError, match="critical service 'broken'"):
            await manager.start_all()
        fine = manager.get_service("fine")
        assert fine is not None and not fine.running  # what started was stopped again

    asyncio.run(run())


def test_performance_callbacks_receive_the_metrics(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []

    async def run() -> None:
        config = framework_config("default", tmp_path)
        config["health_check_interval"] = 0.01
        collector = svc.AsyncMemoryCollector(config)
        await collector.add_performance_callback(received.append)

        both = asyncio.Event()

        async def async_callback(metrics: dict[str, Any]) -> None:
            received.append({"async": True, **metrics})
            if any("async" not in m for m in received):
                both.set()

        await collector.add_performance_callback(async_callback)
        await collector.start()
        await collector.collect_async("bug", "watched")
        await asyncio.wait_for(both.wait(), 30)  # a bound on the wait, not a measurement
        await collector.stop()

    asyncio.run(run())
    assert any("async" in m for m in received) and any("async" not in m for m in received)
    sample = received[-1]
    assert set(sample) >= {"timestamp", "queue_size", "active_operations", "cache_size", "stats"}
    assert isinstance(sample["stats"], svc.CollectionStats)


def test_get_config_returns_independent_copies() -> None:
    first = svc.get_config("production")
    first["cache"]["max_size"] = 1
    assert svc.get_config("production")["cache"]["max_size"] == 5000
    with pytest.raises(mc.ConfigError, match="unknown environment 'staging'"):
        svc.get_config("staging")


def test_validate_config_and_its_errors() -> None:
    for profile in PROFILES:
        assert svc.validate_config(svc.get_config(profile))
    bad = svc.get_config()
    bad.update(batch_size=0, retry_delay="soon")
    bad["cache"]["ttl_seconds"] = -1
    assert not svc.validate_config(bad)
    errors = svc.config_errors(bad)
    assert any(e.startswith("batch_size") for e in errors)
    assert any(e.startswith("retry_delay") for e in errors)
    assert any(e.startswith("cache.ttl_seconds") for e in errors)


def test_a_framework_dict_is_accepted_wherever_a_config_is(tmp_path: Path) -> None:
    config = svc.get_config("low_resource")  # batch_timeout 60 s, retry_delay 2 s
    config.update(backend="memory://", durability="memory")
    with mc.MemoryCollector(config) as c:
        assert c.config.batch_timeout == 0.25  # the linger is capped: idle memories wait 250 ms
        assert c.config.retry_base == 2.0 and c.config.max_queue_size == 200
        assert c.config.cache_size == 100 and c.config.cache_ttl == 60
        assert c.config.exit_timeout == 20.0
    off = svc.get_config()
    off.update(backend="memory://", durability="memory", cache={"enabled": False})
    with mc.MemoryCollector(off) as c:
        assert c.config.cache_size == 0
    with pytest.raises(mc.ConfigError, match="unknown cache setting 'size'"):
        mc.MemoryCollector({"cache": {"size": 3}, "backend": "memory://"})
