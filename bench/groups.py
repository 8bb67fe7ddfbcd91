"""Groups at scale: what keeping groups costs the writer, and how fast groups(), group() and
report() answer from them.

Run: .venv/bin/python bench/groups.py [--n 1000000] [--json FILE]
         [--postgres "postgresql://postgres@127.0.0.1:5432/test"]

Memories: comment lines of the Python standard library (bench/collect.py's varied corpus),
a third of them with an order number and a duration, as the same event recurring; spread
over the last 30 days, oldest first. They are stored twice through a MemoryCollector into
SQLite with full-text search, in the same run: once as shipped (rows are folded into groups
in the worker's quiet moments, and before a read), once with the folding switched off. Then
the first groups() (which folds what the writer left) and each read are timed. With
--postgres, the same on PostgreSQL (folding off: its trigger dropped), in schemas of their
own that are dropped afterwards. Writes bench/results-groups.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from collect import varied_corpus  # noqa: E402

import memcollect as mc  # noqa: E402
from memcollect.backends.sqlite.groups import KeptGroups  # noqa: E402

DAYS = 30


def corpus(n: int) -> list[mc.Memory]:
    """n memories over the last DAYS days: stdlib comment lines, and a third of them the same
    line with an order number and a duration, as the same event recurring."""
    items, _ = varied_corpus(n)
    rng = random.Random(7)
    now = time.time()
    out = []
    for i, item in enumerate(items):
        content = item["content"]
        if i % 3 == 0:
            content = f"{content[:60]} (order {rng.randrange(10**6)}, {rng.randrange(5000)} ms)"
        at = now - DAYS * 86400 * (1 - i / n)
        out.append(
            mc.Memory(mc.new_id(), item["category"], content, {}, "medium", (),
                      rng.choice(["shop", "web", "api"]), rng.choice(["a", "b"]), None, at)
        )  # fmt: skip
    return out


def store_all(url: str, data_dir: str, memories: list[mc.Memory]) -> float:
    """Stored per second, from the first memory handed in to the flush."""
    c = mc.MemoryCollector(url, durability="memory", data_dir=data_dir, max_queue_size=1 << 21)
    started = time.perf_counter()
    for start in range(0, len(memories), 10_000):
        c.collect_memories(memories[start : start + 10_000])
    assert c.flush(3600)
    rate = len(memories) / (time.perf_counter() - started)
    c.close()
    return rate


def timed(call: Callable[[], Any], times: int) -> dict[str, float]:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(samples[len(samples) // 2], 2),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2),
    }


def reads_of(c: mc.MemoryCollector) -> tuple[float, dict[str, dict[str, float]]]:
    """The first groups() (folding what the writer left), then each read, timed."""
    started = time.perf_counter()
    first = c.groups()
    catch_up = time.perf_counter() - started
    reads: dict[str, dict[str, float]] = {}
    reads["groups()"] = timed(c.groups, 50)
    reads["groups(category='bug')"] = timed(lambda: c.groups(category="bug"), 50)
    reads["groups(order='last_seen')"] = timed(lambda: c.groups(order="last_seen"), 50)
    reads["groups(order='new')"] = timed(lambda: c.groups(order="new"), 50)
    reads["groups(since='1d')"] = timed(lambda: c.groups(since="1d"), 10)
    reads["groups(since='7d')"] = timed(lambda: c.groups(since="7d"), 5)
    reads["groups(order='rising')"] = timed(lambda: c.groups(order="rising"), 5)
    reads["group() of the largest"] = timed(lambda: c.group(first[0].fingerprint), 20)
    reads["report(since='7d')"] = timed(lambda: c.report(since="7d"), 3)
    reads["groups(project='web')"] = timed(lambda: c.groups(project="web"), 3)
    return catch_up, reads


def sqlite_run(memories: list[mc.Memory], tmp: str) -> dict[str, Any]:
    """SQLite with and without folding, then the reads."""
    kept_rows = KeptGroups._stored_rows
    KeptGroups._stored_rows = lambda self: None  # type: ignore[method-assign]
    try:
        without = store_all(f"sqlite:///{tmp}/without.db", tmp, memories)
    finally:
        KeptGroups._stored_rows = kept_rows  # type: ignore[method-assign]
    url = f"sqlite:///{tmp}/groups.db"
    with_groups = store_all(url, tmp, memories)
    c = mc.MemoryCollector(url, durability="memory", data_dir=tmp)
    catch_up, reads = reads_of(c)
    held = c.backend._read("SELECT count(*) FROM groups")[0][0]  # type: ignore[attr-defined]
    c.close()
    return record_of("SQLite + FTS", len(memories), held, without=without,
                     with_groups=with_groups, catch_up=catch_up, reads=reads)  # fmt: skip


def postgres_run(memories: list[mc.Memory], base: str, tmp: str) -> dict[str, Any]:
    """PostgreSQL with its trigger dropped (nothing queued for folding), and as shipped."""
    import psycopg

    tag = f"{int(time.time())}"
    schemas = [f"groups_off_{tag}", f"groups_on_{tag}"]
    try:
        off = f"{base}?schema={schemas[0]}"
        with mc.MemoryCollector(off, durability="memory", data_dir=tmp):
            pass  # the schema, its tables and its trigger
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP TRIGGER memcollect_group ON "{schemas[0]}".memories')
        without = store_all(off, tmp, memories)
        on = f"{base}?schema={schemas[1]}"
        with_groups = store_all(on, tmp, memories)
        c = mc.MemoryCollector(on, durability="memory", data_dir=tmp)
        catch_up, reads = reads_of(c)
        held = c.backend._read("SELECT count(*) FROM groups", ())[0][0]  # type: ignore[attr-defined]
        c.close()
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return record_of("PostgreSQL", len(memories), held, without=without,
                     with_groups=with_groups, catch_up=catch_up, reads=reads)  # fmt: skip


def record_of(
    store: str, n: int, held: int, *, without: float, with_groups: float, catch_up: float,
    reads: dict[str, dict[str, float]],
) -> dict[str, Any]:  # fmt: skip
    """One store's results, printed as a table and returned for the results file."""
    cost = 1 - with_groups / without
    print(f"\n{store}, {n:,} memories over {DAYS} days, {held:,} groups")
    print(f"stored/s: {without:,.0f} without groups, {with_groups:,.0f} with "
          f"(cost {cost:.1%}, target <= 10%)")  # fmt: skip
    print(f"first groups() after the load, folding what the writer left: {catch_up:.1f} s "
          f"({n / catch_up:,.0f} rows/s)")  # fmt: skip
    print("| read | p50 | p99 |\n|---|---|---|")
    for name, result in reads.items():
        print(f"| {name} | {result['p50_ms']} ms | {result['p99_ms']} ms |")
    return {
        "memories": n,
        "groups": held,
        "stored_per_s_without_groups": round(without),
        "stored_per_s_with_groups": round(with_groups),
        "write_cost": round(cost, 3),
        "first_read_folding_s": round(catch_up, 2),
        "fold_rows_per_s": round(n / catch_up),
        "reads": reads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--postgres", help="a PostgreSQL URL: the same run there too")
    parser.add_argument("--json", type=Path, default=HERE / "results-groups.json")
    parser.add_argument("--no-sqlite", action="store_true", help="only the PostgreSQL run")
    args = parser.parse_args()
    memories = corpus(args.n)
    record: dict[str, Any] = {
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([".venv/bin/python bench/groups.py", *sys.argv[1:]]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_sqlite:
            record["sqlite"] = sqlite_run(memories, tmp)
        if args.postgres:
            record["postgresql"] = postgres_run(memories, args.postgres, tmp)
    args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
