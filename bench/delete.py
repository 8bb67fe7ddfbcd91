"""Retention deletes on SQLite: delete(until=...) of the oldest memories of a large store.

Run: .venv/bin/python bench/delete.py [--total N]
Prints one line per delete, with the seconds it took (a median of three fresh stores).
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


def one_round(total: int) -> dict[str, tuple[float, int]]:
    """Fill a fresh store with `total` memories; time three deletes by filter."""
    with tempfile.TemporaryDirectory() as data:
        c = mc.MemoryCollector(f"sqlite:///{data}/m.db", durability="memory", data_dir=data)
        ids: list[str] = []
        step = 20_000  # under max_queue_size: nothing is dropped while filling
        for start in range(0, total, step):
            ids += c.collect_batch(
                {"category": "note", "content": f"memory number {i} about the login page"}
                for i in range(start, min(start + step, total))
            )
            assert c.flush(120)
        assert c.count() == total

        def created(index: int) -> float:
            memory = c.get(ids[index])
            assert memory is not None
            return memory.created_at

        timings = {}
        for label, filters in (
            ("oldest sixth, until=", {"until": created(total // 6)}),
            ("newest fifteenth, since=", {"since": created(total - total // 15)}),
            (
                "next sixth, category= and until=",
                {"category": "note", "until": created(total // 3)},
            ),
        ):
            started = time.perf_counter()
            deleted = c.delete(**filters)  # type: ignore[arg-type]
            timings[label] = (time.perf_counter() - started, deleted)
        c.close()
        return timings


def main() -> None:
    """Print the median seconds of each delete over three rounds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--total", type=int, default=300_000, help="memories in the store")
    total = parser.parse_args().total
    rounds = [one_round(total) for _ in range(3)]
    print(f"bench/delete.py: {total:,} SQLite memories (FTS5), median of 3 rounds")
    for label in rounds[0]:
        runs = [r[label][0] for r in rounds]
        deleted = "/".join(f"{r[label][1]:,}" for r in rounds)
        print(
            f"  {label} ({deleted} memories): {statistics.median(runs):.2f} s "
            f"(runs {', '.join(f'{t:.2f}' for t in runs)})"
        )


if __name__ == "__main__":
    main()
