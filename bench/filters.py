"""Searches by filters alone (no words) on SQLite: rare and common values, old and new.

Run: .venv/bin/python bench/filters.py [--total N]
Prints the median milliseconds of each search over 21 runs, on one store of N memories
(1,000 a session, 7 agents).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import memcollect as mc  # noqa: E402
from memcollect.backends.base import SearchQuery  # noqa: E402
from memcollect.backends.sqlite import SQLiteBackend  # noqa: E402


def main() -> None:
    """Fill a store, then time each search by filters."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--total", type=int, default=300_000, help="memories in the store")
    total = parser.parse_args().total
    sessions = total // 1000
    with tempfile.TemporaryDirectory() as data:
        url = f"sqlite:///{data}/m.db"
        c = mc.MemoryCollector(url, durability="memory", data_dir=data)
        step = 20_000  # under max_queue_size: nothing is dropped while filling
        for start in range(0, total, step):
            c.collect_batch(
                {
                    "category": "note",
                    "content": f"memory {i} about the login page",
                    "session": f"s-{i // 1000}",
                    "agent": f"a-{i % 7}",
                }
                for i in range(start, min(start + step, total))
            )
            assert c.flush(120)
        c.close()
        store = SQLiteBackend(url)
        store.open()
        print(f"bench/filters.py: {total:,} SQLite memories, median of 21 searches, limit 20")
        for label, query in (
            ("the oldest session (1,000 memories)", SearchQuery(session="s-3", limit=20)),
            ("the newest session", SearchQuery(session=f"s-{sessions - 2}", limit=20)),
            ("an agent (1 memory in 7)", SearchQuery(agent="a-3", limit=20)),
            ("a category (every memory)", SearchQuery(category="note", limit=20)),
        ):
            times = []
            for _ in range(21):
                started = time.perf_counter()
                hits = store.search(query)
                times.append(time.perf_counter() - started)
            assert len(hits) == 20
            print(f"  {label}: {statistics.median(times) * 1000:.2f} ms")
        store.close()


if __name__ == "__main__":
    main()
