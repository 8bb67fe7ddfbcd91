"""Groups at scale: how fast groups() and group() answer, counted from the rows.

Run: .venv/bin/python bench/groups.py [--n 50000] [--json FILE]

Stores N varied memories (comment lines of the Python standard library, as bench/collect.py's
varied corpus, with numbers and ids in a third of them so that occurrences of one event
differ) through a MemoryCollector into SQLite with full-text search, then times groups() in
each order and with a period, and group() of the largest group. Writes
bench/results-groups.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from collect import varied_corpus  # noqa: E402

import memcollect as mc  # noqa: E402
from memcollect.groups import GROUP_ORDERS  # noqa: E402


def events(n: int) -> list[tuple[str, str]]:
    """(category, content) of n memories: stdlib comment lines, and a third of them the same
    line with an order number and a duration, as the same event recurring."""
    items, _ = varied_corpus(n)
    rng = random.Random(7)
    out = []
    for i, item in enumerate(items):
        content = item["content"]
        if i % 3 == 0:
            content = f"{content[:60]} (order {rng.randrange(10**6)}, {rng.randrange(5000)} ms)"
        out.append((item["category"], content))
    return out


def store_all(url: str, data_dir: str, memories: list[tuple[str, str]]) -> float:
    """Stored per second, from the first collect() to the flush."""
    c = mc.MemoryCollector(url, durability="memory", data_dir=data_dir, max_queue_size=1 << 20)
    started = time.perf_counter()
    for category, content in memories:
        c.collect(category, content)
    assert c.flush(600)
    rate = len(memories) / (time.perf_counter() - started)
    c.close()
    return rate


def timed(call: Any, times: int = 30) -> dict[str, float]:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"p50_ms": round(samples[len(samples) // 2], 2), "p99_ms": round(samples[-1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--json", type=Path, default=HERE / "results-groups.json")
    args = parser.parse_args()
    memories = events(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'groups.db'}"
        stored = store_all(url, tmp, memories)
        c = mc.MemoryCollector(url, durability="memory", data_dir=tmp)
        reads = {
            f"groups(order={order!r})": timed(lambda o=order: c.groups(order=o), 5)
            for order in GROUP_ORDERS
        }
        reads["groups(since='7d')"] = timed(lambda: c.groups(since="7d"), 5)
        largest = c.groups(limit=1)[0]
        reads["group() of the largest"] = timed(lambda: c.group(largest.fingerprint), 5)
        groups_held = len(c.groups(limit=10_000))
        c.close()
    record = {
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "memories": args.n,
        "groups_at_most_10000": groups_held,
        "stored_per_s": round(stored),
        "reads": reads,
    }
    print(f"| SQLite + FTS, {args.n:,} memories ({stored:,.0f} stored/s) | time |")
    print("|---|---|")
    for name, result in reads.items():
        print(f"| {name} | p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms |")
    args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
