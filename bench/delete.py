"""Retention deletes: delete(until=...) of the oldest memories of a large store.

Run: .venv/bin/python bench/delete.py [--total N] [--postgres]
SQLite by default; --postgres uses the server of MEMCOLLECT_TEST_POSTGRES_URL, a schema of its
own per round. Prints one line per delete, with the seconds it took (median of three rounds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import memcollect as mc  # noqa: E402

POSTGRES = os.environ.get(
    "MEMCOLLECT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def one_round(total: int, postgres: bool) -> dict[str, tuple[float, int]]:
    """Fill a fresh store with `total` memories; time three deletes by filter."""
    schema = f"d_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory() as data:
        url = f"{POSTGRES}?schema={schema}" if postgres else f"sqlite:///{data}/m.db"
        c = mc.MemoryCollector(url, durability="memory", data_dir=data)
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
    if postgres:
        import psycopg

        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return timings


def main() -> None:
    """Print the median seconds of each delete over three rounds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--total", type=int, default=300_000, help="memories in the store")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL, not SQLite")
    args = parser.parse_args()
    rounds = [one_round(args.total, args.postgres) for _ in range(3)]
    store = "PostgreSQL" if args.postgres else "SQLite (FTS5)"
    print(f"bench/delete.py: {args.total:,} {store} memories, median of 3 rounds")
    for label in rounds[0]:
        runs = [r[label][0] for r in rounds]
        deleted = "/".join(f"{r[label][1]:,}" for r in rounds)
        print(
            f"  {label} ({deleted} memories): {statistics.median(runs):.2f} s "
            f"(runs {', '.join(f'{t:.2f}' for t in runs)})"
        )


if __name__ == "__main__":
    main()
