"""asyncio at a high rate: thousands of collect_async() calls awaited together with gather,
while the event loop stays responsive."""

import asyncio
import tempfile
import time

import memcollect as mc

N = 10_000


async def main(data_dir: str) -> None:
    async with mc.MemoryCollector(data_dir=data_dir, profile="high_performance") as memories:
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        beat = asyncio.create_task(heartbeat())
        started = time.perf_counter()
        ids = await asyncio.gather(
            *(
                memories.collect_async(
                    "performance",
                    f"request {i} took {i % 900} ms",
                    {"latency_ms": i % 900},
                    agent="gateway",
                )
                for i in range(N)
            )
        )
        accepted_in = time.perf_counter() - started
        stored = await memories.aflush(timeout=60)
        beat.cancel()
        print(f"accepted {len(set(ids))} memories in {accepted_in * 1000:.0f} ms")
        print("all stored:", stored and memories.count() == N)
        print("event loop kept running:", ticks > 0)


with tempfile.TemporaryDirectory() as data_dir:
    asyncio.run(main(data_dir))
