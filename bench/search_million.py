"""Text search at scale: SQLite (and, with --postgres, PostgreSQL) holding N varied memories
(comment lines of the Python standard library, as bench/collect.py's varied corpus), queried
with 2-3 words taken from stored lines, plain and with filters.

Run: .venv/bin/python bench/search_million.py [--n 1000000] [--postgres URL]
Prints a table and writes bench/results-million.json. Building a million memories takes a
few minutes; the database is kept in --dir (default: a temporary directory) to measure again.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from collect import memory, percentiles, varied_corpus  # noqa: E402

import memcollect as mc  # noqa: E402
from memcollect.backends import open_backend  # noqa: E402

FILTERS: list[dict[str, Any]] = [{}, {"category": "bug"}, {"tags": ["auth"]}, {"limit": 20}]


def build(url: str, n: int) -> list[str]:
    """Fill the store with n memories (unless it holds them); the queries to ask."""
    items, queries = varied_corpus(n)
    store = open_backend(url)
    store.open()
    if store.count() < n:
        started = time.perf_counter()
        for start in range(store.count(), n, 10_000):
            store.write_batch([memory(i) for i in items[start : start + 10_000]])
        print(f"stored {n:,} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    # What a collector does in its quiet moments after a load (groups folded; PostgreSQL:
    # the planner's statistics gathered), done before the clock starts, not during it.
    while store.idle_work():
        pass
    store.close()
    return queries


def measure(url: str, queries: list[str], rounds: int = 3, per_round: int = 200) -> dict[str, Any]:
    """p50 and p99 of search(), median of rounds, with the spread of the p50s."""
    c = mc.MemoryCollector(url, durability="memory", cache_size=0)
    p50s, p99s = [], []
    for _ in range(rounds):
        rng = random.Random(3)
        samples = []
        for i in range(per_round):
            text = rng.choice(queries)
            t0 = time.perf_counter_ns()
            c.search(text, **FILTERS[i % len(FILTERS)])
            samples.append(time.perf_counter_ns() - t0)
        p50, p99 = percentiles(samples)
        p50s.append(p50 / 1000)
        p99s.append(p99 / 1000)
    c.close()
    return {
        "p50_ms": round(statistics.median(p50s), 2),
        "p99_ms": round(statistics.median(p99s), 2),
        "p50_each_round_ms": [round(p, 2) for p in p50s],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--postgres", default=None, help="also a PostgreSQL URL (a schema)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.dir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        stores = {"sqlite": f"sqlite:///{where / f'million-{args.n}.db'}"}
        if args.postgres:
            stores["postgresql"] = args.postgres
        results: dict[str, Any] = {
            "machine": f"{platform.machine()}, Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d"),
            "memories": args.n,
        }
        for name, url in stores.items():
            queries = build(url, args.n)
            results[name] = measure(url, queries)
    (HERE / "results-million.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"| store, {args.n:,} memories | search p50 | p99 | p50 of each round |")
    print("|---|---|---|---|")
    for name in stores:
        r = results[name]
        each = ", ".join(f"{v:.1f}" for v in r["p50_each_round_ms"])
        print(f"| {name} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {each} |")


if __name__ == "__main__":
    main()
