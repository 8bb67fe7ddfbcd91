"""PostgreSQL benchmarks: one collector, four producer processes, search on a million rows.

Run: .venv/bin/python bench/postgres.py [--quick]
(needs the server of MEMCOLLECT_TEST_POSTGRES_URL)
Prints a table and writes bench/results-postgres.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import psycopg  # noqa: E402
from collect import compile_package, memory, varied_corpus  # noqa: E402

import memcollect as mc  # noqa: E402
from memcollect.backends.base import SearchQuery  # noqa: E402
from memcollect.backends.pgrows import copy_rows as _copy  # noqa: E402
from memcollect.backends.pgrows import row_filters as _filters  # noqa: E402
from memcollect.backends.pgrows import to_row as _to_row  # noqa: E402
from memcollect.backends.pgrows import websearch_all_words  # noqa: E402
from memcollect.backends.postgres import PostgresBackend  # noqa: E402

BASE = os.environ.get("MEMCOLLECT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

PRODUCER = """
import sys, time, memcollect as mc
url, n, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = mc.MemoryCollector(url, durability="memory", profile="high_performance",
                       max_queue_size=n + 1, data_dir=data_dir)
for i in range(n):
    c.collect("qa", f"process {sys.argv[4]} memory {i} about checkout latency", {"i": i})
assert c.flush(timeout=600)
c.close()
"""


def drop(schema: str) -> None:
    with psycopg.connect(BASE, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def one_collector(
    n: int, writers: int = 2, durability: str = "memory", storer: str = "auto"
) -> float:
    """Stored per second, end to end, one collector into one PostgreSQL (durability="spool":
    the default collector, storer="auto", which hands this load to a storing process)."""
    schema = f"b_{uuid.uuid4().hex[:10]}"
    items, _ = varied_corpus(n)
    with tempfile.TemporaryDirectory() as data_dir:
        c = mc.MemoryCollector(
            f"{BASE}?schema={schema}&writers={writers}",
            durability=durability,
            profile="high_performance",
            max_queue_size=n + 1,
            data_dir=data_dir,
            storer=storer,
        )
        started = time.perf_counter()
        for item in items:
            c.collect(item["category"], item["content"], item["metadata"], tags=item["tags"])
        assert c.flush(timeout=600)
        elapsed = time.perf_counter() - started
        assert c.count() == n
        c.close()
    drop(schema)
    return n / elapsed


def server_alone(n: int, connections: int) -> float:
    """Stored per second by PostgreSQL alone: rows made beforehand, COPY batches of 2,048 on
    `connections` connections at once, no collector. The ceiling a collector can reach."""
    schema = f"b_{uuid.uuid4().hex[:10]}"
    items, _ = varied_corpus(n)
    rows = [_to_row(memory(item)) for item in items]
    batches = [rows[i : i + 2048] for i in range(0, n, 2048)]
    backend = PostgresBackend(f"{BASE}?schema={schema}&pool_size={connections}")
    backend.open()

    def copy_every(nth: int) -> None:
        for batch in batches[nth::connections]:
            with backend._get_pool().connection() as conn, conn.transaction():
                _copy(conn, "memories", batch)

    threads = [threading.Thread(target=copy_every, args=(k,)) for k in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    assert backend.count() == n
    backend.close()
    drop(schema)
    return n / elapsed


def processes(n_each: int, count: int, writers: int = 2) -> float:
    """Aggregate stored per second with `count` producer processes, each its own collector."""
    schema = f"b_{uuid.uuid4().hex[:10]}"
    url = f"{BASE}?schema={schema}&writers={writers}"
    PostgresBackend(url).open()  # the schema exists before they race to write
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    with tempfile.TemporaryDirectory() as data_dir:
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", PRODUCER, url, str(n_each), data_dir, str(p)], env=env
            )
            for p in range(count)
        ]
        for proc in procs:
            assert proc.wait(timeout=900) == 0
        elapsed = time.perf_counter() - started
    check = PostgresBackend(url)
    assert check.count() == n_each * count
    check.close()
    drop(schema)
    return n_each * count / elapsed


def search_million(n: int, queries: int = 200) -> dict[str, float]:
    """Search latency on n stored memories of real technical English."""
    schema = f"b_{uuid.uuid4().hex[:10]}"
    url = f"{BASE}?schema={schema}"
    backend = PostgresBackend(url)
    backend.open()
    items, words = varied_corpus(n)
    for start in range(0, n, 10_000):
        backend.write_batch([memory(i) for i in items[start : start + 10_000]])
    with psycopg.connect(BASE, autocommit=True) as conn:
        conn.execute(f'VACUUM ANALYZE "{schema}".memories')
    c = mc.MemoryCollector(url, durability="memory", cache_size=0, data_dir=tempfile.mkdtemp())
    rng = random.Random(5)
    samples = []
    filled = []  # latencies of searches where too few memories hold every word
    for i in range(queries):
        text = rng.choice(words)
        kwargs: dict[str, Any] = [{}, {"category": "bug"}, {"tags": ["auth"]}][i % 3]
        t0 = time.perf_counter_ns()
        c.search(text, **kwargs)
        samples.append(time.perf_counter_ns() - t0)
        clauses, params = _filters(SearchQuery(text=text, **kwargs))
        where = " AND ".join(["m.search @@ websearch_to_tsquery('english', %s)", *clauses])
        holding_every_word = backend._read(
            f"SELECT count(*) FROM (SELECT 1 FROM memories m WHERE {where} LIMIT 10) x",
            [websearch_all_words(text), *params],
        )[0][0]
        if holding_every_word < 10:
            filled.append(samples[-1])
    assert c.count() == n
    c.close()
    backend.close()
    drop(schema)
    return {
        **percentiles_ms(samples),
        "filled_share": len(filled) / len(samples),
        "filled": percentiles_ms(filled),
    }


def percentiles_ms(samples: list[int]) -> dict[str, float]:
    """p50 and p99 of nanosecond samples, in milliseconds."""
    samples = sorted(samples)
    return {
        "p50_ms": samples[len(samples) // 2] / 1e6,
        "p99_ms": samples[int(len(samples) * 0.99)] / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the saved results again")
    parser.add_argument(
        "--storing", action="store_true", help="measure only stored/s again (not search)"
    )
    args = parser.parse_args()
    out = HERE / "results-postgres.json"
    if args.table:
        print_table(json.loads(out.read_text()))
        return
    compile_package()
    n = 20_000 if args.quick else 100_000
    # writers=2 (the default) and writers=1 interleaved, so both meet the machine at one hour;
    # beside them the default collector (spool, storer="auto") and COPY on one connection.
    single: dict[int, list[float]] = {1: [], 2: []}
    default: dict[int, list[float]] = {1: [], 2: []}
    copy_one: list[float] = []
    process: list[float] = []  # storer='process': the storing process from the first memory
    for _ in range(3):
        for writers in (2, 1):
            single[writers].append(one_collector(n, writers))
            default[writers].append(one_collector(n, writers, durability="spool"))
        process.append(one_collector(n, durability="spool", storer="process"))
        copy_one.append(server_alone(n, 1))
    storing = {
        "default_per_s": statistics.median(default[2]),
        "default_runs": default[2],
        "default_writers1_per_s": statistics.median(default[1]),
        "default_writers1_runs": default[1],
        "copy_one_connection_per_s": statistics.median(copy_one),
        "copy_one_connection_runs": copy_one,
        "process_per_s": statistics.median(process),
        "process_runs": process,
    }
    if args.storing:
        # Only the stored/s rows, measured again into the results kept.
        kept: dict[str, Any] = (
            json.loads(out.read_text())
            | storing
            | {
                "one_collector_per_s": statistics.median(single[2]),
                "one_collector_runs": single[2],
                "one_collector_writers1_per_s": statistics.median(single[1]),
                "one_collector_writers1_runs": single[1],
                "storing_date": time.strftime("%Y-%m-%d"),
            }
        )
        out.write_text(json.dumps(kept, indent=2) + "\n")
        print_table(kept)
        return
    four: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(3):
        for writers in (2, 1):
            four[writers].append(processes(n // 4, 4, writers))
    results: dict[str, Any] = {
        "command": "python bench/postgres.py" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d"),
        "one_collector_per_s": statistics.median(single[2]),
        "one_collector_runs": single[2],
        "one_collector_writers1_per_s": statistics.median(single[1]),
        "one_collector_writers1_runs": single[1],
        "server_alone_per_s": [server_alone(n, 1), server_alone(n, 2)],
        "one_process_per_s": processes(n, 1),
        "four_processes_per_s": statistics.median(four[2]),
        "four_processes_runs": four[2],
        "four_processes_writers1_per_s": statistics.median(four[1]),
        "four_processes_writers1_runs": four[1],
        "search": search_million(100_000 if args.quick else 1_000_000),
        "search_rows": 100_000 if args.quick else 1_000_000,
    } | storing
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def default_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The default collector against COPY on one connection, same run."""
    if "default_writers1_per_s" not in r:
        return []
    copy = r["copy_one_connection_per_s"]
    rows = [
        (
            "stored/s, the default collector (spool, storer='auto'), writers=2 / writers=1",
            f"{r['default_per_s']:,.0f} / {r['default_writers1_per_s']:,.0f}",
            "reference",
        ),
        (
            "… against COPY on one connection, same run (median of 3), writers=2 / writers=1",
            f"{r['default_per_s'] / copy:.1%} / {r['default_writers1_per_s'] / copy:.1%} "
            f"of {copy:,.0f}",
            "≥ 90%",
        ),
        (
            "… memory mode (a storing thread), writers=1, against the same COPY",
            f"{r['one_collector_writers1_per_s'] / copy:.0%}",
            "reference",
        ),
    ]
    if "process_per_s" in r:
        rows.append(
            (
                "… storer='process' (a storing process from the start), writers=2",
                f"{r['process_per_s']:,.0f}, {r['process_per_s'] / copy:.0%}",
                "reference",
            )
        )
    return rows


def print_table(r: dict[str, Any]) -> None:
    """The results table."""
    rows = [
        (
            "stored/s, one collector into PostgreSQL (median of 3)",
            f"{r['one_collector_per_s']:,.0f}",
            "≥ 50,000",
        ),
        (
            "… the same with `writers=1` (one connection a batch)",
            f"{r['one_collector_writers1_per_s']:,.0f}",
            "reference",
        ),
        *default_rows(r),
        (
            "stored/s, PostgreSQL alone: COPY of ready rows on 1 / 2 connections",
            " / ".join(f"{rate:,.0f}" for rate in r["server_alone_per_s"]),
            "ceiling",
        ),
        ("stored/s, 1 producer process", f"{r['one_process_per_s']:,.0f}", "reference"),
        (
            "stored/s, 4 producer processes, one database (aggregate, median of 3)",
            f"{r['four_processes_per_s']:,.0f} "
            f"({r['four_processes_per_s'] / r['one_process_per_s']:.1f}x)",
            "reported",
        ),
        (
            "… the same with `writers=1` in each",
            f"{r['four_processes_writers1_per_s']:,.0f}",
            "reference",
        ),
        (
            f"search p50 / p99 on {r['search_rows']:,} memories",
            f"{r['search']['p50_ms']:.1f} / {r['search']['p99_ms']:.1f} ms",
            "p50 ≤ 20 ms",
        ),
        (
            f"… of which {r['search']['filled_share']:.0%} had under 10 memories holding every "
            "word (p50 / p99)",
            f"{r['search']['filled']['p50_ms']:.1f} / {r['search']['filled']['p99_ms']:.1f} ms",
            "reported",
        ),
    ]
    width = max(len(name) for name, _, _ in rows)
    print(f"{r['command']}, {r['date']}")
    print(f"| {'measure'.ljust(width)} | result | target |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for name, value, target in rows:
        print(f"| {name.ljust(width)} | {value} | {target} |")


if __name__ == "__main__":
    main()
