"""Simulated agents collecting a realistic mix of memories: what `memcollect demo` runs."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from typing import Any

from .collector import MemoryCollector

BROWSERS = ["Safari 17", "Chrome 131", "Firefox 133", "Edge 131"]
SERVICES = ["payments API", "search index", "auth service", "email gateway", "vector store"]
MODULES = ["auth", "checkout", "search", "billing", "onboarding", "reports"]

TEMPLATES: dict[str, list[str]] = {
    "bug": [
        "Login fails on {browser} after password reset",
        "Checkout button does nothing on {browser} when the cart has one item",
        "Search results page shows duplicates after pagination in {module}",
        "Date picker in {module} ignores the user's time zone",
    ],
    "error": [
        "Timeout calling {service} after {ms} ms",
        "Connection reset by {service} during batch upload",
        "KeyError 'user_id' in {module} webhook handler",
        "Rate limited by {service}: retry after {s} seconds",
    ],
    "feedback": [
        "Love the new dashboard, much faster than before",
        "The export button is hard to find in {module}",
        "Onboarding emails arrive twice for some users",
        "Dark mode makes the charts unreadable",
    ],
    "performance": [
        "p99 latency of {service} rose to {ms} ms after deploy",
        "Slow query in {module}: full table scan on orders ({ms} ms)",
        "Memory of the worker grew to {mb} MB over one hour",
    ],
    "decision": [
        "Use PostgreSQL for shared memories once more than one host writes",
        "Retry {service} calls with exponential backoff and full jitter",
        "Cache search results for {s} seconds in {module}",
    ],
    "pattern": [
        "Timeouts from {service} cluster right after deploys",
        "Users on {browser} report most of the login bugs",
    ],
}

AGENTS = ["qa-agent", "ops-agent", "support-agent", "perf-agent"]


def memories(rng: random.Random, agent: str) -> Iterator[dict[str, Any]]:
    """An endless stream of plausible memories from one agent."""
    weights = {"bug": 3, "error": 4, "feedback": 2, "performance": 2, "decision": 1, "pattern": 1}
    categories = list(weights)
    while True:
        category = rng.choices(categories, weights=[weights[c] for c in categories])[0]
        module = rng.choice(MODULES)
        content = rng.choice(TEMPLATES[category]).format(
            browser=rng.choice(BROWSERS),
            service=rng.choice(SERVICES),
            module=module,
            ms=rng.randrange(200, 9000),
            s=rng.randrange(1, 120),
            mb=rng.randrange(200, 4000),
        )
        yield {
            "category": category,
            "content": content,
            "metadata": {"module": module, "build": rng.randrange(100, 200)},
            "tags": [module],
            "project": "shop",
            "agent": agent,
            "session": f"s-{rng.randrange(1, 50)}",
        }


def run_agents(collector: MemoryCollector, total: int, seed: int = 7) -> int:
    """Collect `total` memories from agent threads and one asyncio agent; how many were sent."""
    per_thread = total * 4 // 5 // len(AGENTS)
    async_count = total - per_thread * len(AGENTS)

    def thread_agent(name: str, index: int) -> None:
        stream = memories(random.Random(seed + index), name)
        for _ in range(per_thread):
            collector.collect(**next(stream))

    async def async_agent() -> None:
        stream = memories(random.Random(seed + 99), "planner-agent")
        await asyncio.gather(*(collector.collect_async(**next(stream)) for _ in range(async_count)))

    threads = [
        threading.Thread(target=thread_agent, args=(name, i), name=name)
        for i, name in enumerate(AGENTS)
    ]
    for thread in threads:
        thread.start()
    asyncio.run(async_agent())
    for thread in threads:
        thread.join()
    return per_thread * len(AGENTS) + async_count
