"""The framework flow: a ServiceManager runs the collector service; agents collect through
the integration; stopping stores everything that was collected."""

import asyncio
import tempfile

import memcollect as mc
from memcollect.service import (
    MemoryServiceIntegration,
    ServiceManager,
    get_config,
    quick_collect_error,
    set_memory_integration,
)


async def main(data_dir: str) -> None:
    manager = ServiceManager()
    integration = MemoryServiceIntegration(manager)
    set_memory_integration(integration)

    config = get_config("production")
    config["data_dir"] = data_dir  # memcollect fields ride along in the framework's dict
    await integration.register_async_memory_collector(config)
    print("started:", await manager.start_all())

    await integration.collect_bug("Checkout button does nothing on Firefox", {"build": 142})
    await integration.collect_feedback("The export button is hard to find")
    await integration.collect_performance_data("p99 of search rose to 2.1 s", {"p99_ms": 2100})
    await integration.collect_architecture_info("One writer per SQLite file; WAL for readers")
    await quick_collect_error("Timeout calling payments API after 15 s")

    print("flushed:", await integration.flush_collector(timeout=10))
    stats = await integration.get_collection_stats()
    assert stats is not None
    print(f"operations {stats['total_operations']}, success rate {stats['success_rate']:.0f}%")
    health = await manager.health()
    print("collector health:", health["async_memory_collector"].status)
    await manager.stop_all()
    set_memory_integration(None)


with tempfile.TemporaryDirectory() as data_dir:
    asyncio.run(main(data_dir))
    with mc.MemoryCollector(data_dir=data_dir) as store:
        print("in the store:", sorted(store.count_by_category().items()))
