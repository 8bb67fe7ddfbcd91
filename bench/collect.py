"""Benchmarks for collect(): latency, throughput, search, memory; peers measured in the same run.

Run: .venv/bin/python bench/collect.py [--quick]
Prints a table and writes bench/results.json.
"""

from __future__ import annotations

import argparse
import compileall
import gc
import json
import logging
import logging.handlers
import os
import platform
import queue
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import memcollect as mc  # noqa: E402
from memcollect.backends.sqlite import SQLiteBackend  # noqa: E402
from memcollect.demo import memories  # noqa: E402
from memcollect.validate import make_memory  # noqa: E402

CONTENT = "Login fails on Safari 17 after password reset"
METADATA = {"module": "auth", "build": 142}
TAGS = ["auth"]
FLOOR_ROWS_PER_INSERT = 256


def compile_package() -> None:
    """Write memcollect's bytecode, as an installed package has it: the processes a benchmark
    starts (storing processes, scripts) must not compile it from source each time, as they
    do under PYTHONDONTWRITEBYTECODE (measured: 30 ms more a start)."""
    compileall.compile_dir(HERE.parent / "src", quiet=1)


def run_header(command: str) -> dict[str, Any]:
    """What a results file says of its run: the machine, the day, the command."""
    return {
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
    }


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    """p50 and p99 in microseconds."""
    samples_ns.sort()
    n = len(samples_ns)
    return samples_ns[n // 2] / 1000, samples_ns[int(n * 0.99)] / 1000


def time_calls(call: Callable[[int], object], n: int) -> list[int]:
    """Nanoseconds each of n calls took (the timer's own cost is included, on both sides)."""
    clock = time.perf_counter_ns
    out = [0] * n
    gc.collect()
    for i in range(n):
        t0 = clock()
        call(i)
        out[i] = clock() - t0
    return out


def time_collect(n: int, tmp: Path, durability: str) -> list[int]:
    """Nanoseconds of each of n collect() calls into SQLite; checks all n were stored."""
    name = f"latency-{durability}-{time.monotonic_ns()}"
    collector = mc.MemoryCollector(
        f"sqlite:///{tmp / name}.db",
        durability=durability,
        data_dir=str(tmp / name),
        max_queue_size=n + 1,
        batch_size=2048,
    )
    ours_ns = time_calls(lambda i: collector.collect("bug", CONTENT, METADATA, tags=TAGS), n)
    assert collector.flush(timeout=300)
    stored = collector.stats().stored
    collector.close()
    assert stored == n, f"stored {stored} of {n}"
    return ours_ns


def compare(ours_ns: list[int], peer_ns: list[int], peer: str) -> dict[str, float]:
    """Our p50/p99 beside a peer's, and the speed-up at p50."""
    p50, p99 = percentiles(ours_ns)
    ref50, ref99 = percentiles(peer_ns)
    return {
        "p50_us": p50,
        "p99_us": p99,
        f"{peer}_p50_us": ref50,
        f"{peer}_p99_us": ref99,
        "speedup_p50": ref50 / p50,
    }


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each measure's median over rounds run one after another (the machine is shared)."""
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def bench_latency(n: int, tmp: Path) -> dict[str, float]:
    """collect() per call against a stdlib QueueHandler log call, same records, same run."""
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    logger = logging.getLogger("bench.queuehandler")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    # One handler a round: the logger outlives the round, and a handler left on it from the
    # round before would make every later log call enqueue twice.
    handler = logging.handlers.QueueHandler(q)
    logger.addHandler(handler)
    listener = logging.handlers.QueueListener(q, logging.NullHandler())
    listener.start()
    extra = {"category": "bug", "metadata": METADATA, "tags": TAGS}
    try:
        log_ns = time_calls(lambda i: logger.info(CONTENT, extra=extra), n)
    finally:
        listener.stop()
        logger.removeHandler(handler)
    return compare(time_collect(n, tmp, "memory"), log_ns, "queuehandler")


def bench_durable_latency(n: int, n_peer: int, tmp: Path) -> dict[str, float]:
    """collect() in spool mode against persist-queue's durable SQLiteQueue.put, same run."""
    import persistqueue  # bench-only dependency (the dev extra), never a runtime one

    peer = persistqueue.SQLiteQueue(
        str(tmp / f"persistqueue-{time.monotonic_ns()}"), auto_commit=True, multithreading=True
    )
    record = {"category": "bug", "content": CONTENT, "metadata": METADATA, "tags": TAGS}
    peer_ns = time_calls(lambda i: peer.put(record), n_peer)
    return compare(time_collect(n, tmp, "spool"), peer_ns, "persistqueue") | {
        "persistqueue_records": n_peer
    }


def bench_throughput(
    n: int, tmp: Path, fts: bool, durability: str = "memory", storer: str = "auto"
) -> float:
    """Memories stored per second, end to end: first collect() to flush() returning."""
    suffix = "" if fts else "?fts=0"
    name = f"tp-{durability}-{'fts' if fts else 'nofts'}-{time.monotonic_ns()}.db"
    data_dir = tmp / f"tp-{durability}-{fts}-{time.monotonic_ns()}"
    collector = mc.MemoryCollector(
        f"sqlite:///{tmp / name}{suffix}",
        durability=durability,
        data_dir=str(data_dir),
        profile="high_performance",
        max_queue_size=n + 1,
        storer=storer,
    )
    rng = random.Random(1)
    stream = memories(rng, "bench-agent")
    items = [next(stream) for _ in range(n)]
    gc.collect()
    started = time.perf_counter()
    collect = collector.collect
    for item in items:
        collect(
            item["category"],
            item["content"],
            item["metadata"],
            tags=item["tags"],
            project=item["project"],
            agent=item["agent"],
            session=item["session"],
        )
    assert collector.flush(timeout=300)
    elapsed = time.perf_counter() - started
    stats = collector.stats()
    collector.close()
    assert stats.stored == n, f"stored {stats.stored} of {n}"
    remove_store(tmp / name)
    shutil.rmtree(data_dir, ignore_errors=True)
    return n / elapsed


def remove_store(path: Path) -> None:
    """Delete a SQLite file and its log: the kernel writing back a run's files to disk must
    not compete with the runs after it."""
    for end in ("", "-wal", "-shm"):
        Path(f"{path}{end}").unlink(missing_ok=True)


def bench_raw_sqlite(n: int, tmp: Path, fts: bool, batch: int = 2048) -> float:
    """The floor: sqlite3 alone storing the same memories in memcollect's own tables, made
    beforehand, in batches of the collector's size (high_performance), the full-text index
    filled in bulk in each batch's transaction. Stored per second."""
    import sqlite3

    from memcollect.backends.sqlite.schema import _FTS_FILL, _insert_rows

    path = tmp / f"raw-{'fts' if fts else 'nofts'}-{time.monotonic_ns()}.db"
    schema = SQLiteBackend(f"sqlite:///{path}{'' if fts else '?fts=0'}")
    schema.open()  # the same tables, indexes and triggers as the collector's store
    schema.close()
    rng = random.Random(1)
    stream = memories(rng, "bench-agent")
    items = [next(stream) for _ in range(n)]
    rows = [
        make_memory(i["category"], i["content"], i["metadata"], None, i["tags"], i["project"],
                    i["agent"], i["session"], 1 << 20)
        for i in items
    ]  # fmt: skip
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    top = 0
    gc.collect()
    started = time.perf_counter()
    for start in range(0, n, batch):
        part = rows[start : start + batch]
        conn.execute("BEGIN")
        # Rows to statements as memcollect turns them (any program storing these records
        # must); what the floor leaves out is everything else memcollect does. 256 rows a
        # statement: alone, with no thread to win the GIL back from, that binds fastest.
        _insert_rows(conn, part, FLOOR_ROWS_PER_INSERT)
        if fts:
            conn.execute(f"{_FTS_FILL} WHERE seq > ?", (top,))
            top += len(part)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    stored = conn.execute("SELECT count(*) FROM memories").fetchone()[0]
    conn.close()
    assert stored == n, f"stored {stored} of {n}"
    remove_store(path)
    return n / elapsed


def memory(item: dict[str, Any]) -> mc.Memory:
    """A memory made from one corpus item, as collect() would make it."""
    return make_memory(
        item["category"],
        item["content"],
        item["metadata"],
        None,
        item["tags"],
        item["project"],
        item["agent"],
        item["session"],
        65536,
    )


def templated_corpus(n: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The demo's memories: ~20 templates, so every query matches thousands of rows."""
    stream = memories(random.Random(2), "search-agent")
    queries = [
        "safari login",
        "timeout payments",
        "slow query orders",
        "connection reset upload",
        "dark mode charts",
        "rate limited email gateway",
        "export button",
        "p99 latency deploy",
        "KeyError user_id webhook",
        "memory worker grew",
    ]
    return [next(stream) for _ in range(n)], queries


def varied_lines(rng: random.Random) -> list[str]:
    """Comment lines of the Python standard library's source, each once, shuffled by rng."""
    stdlib = Path(os.__file__).parent
    lines: list[str] = []
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            text = line.strip().lstrip("#").strip()
            if line.strip().startswith("#") and len(text) > 30 and "\x00" not in text:
                lines.append(text)
    lines = list(dict.fromkeys(lines))
    rng.shuffle(lines)
    return lines


def varied_items(
    lines: list[str], start: int, stop: int, rng: random.Random
) -> list[dict[str, Any]]:
    """Memories start..stop of the varied corpus, made from its lines."""
    categories = ["bug", "error", "feedback", "performance", "decision", "note"]
    return [
        {
            "category": rng.choice(categories),
            "content": lines[i % len(lines)],
            "metadata": {"n": i},
            "tags": [rng.choice(["auth", "ui", "api"])],
            "project": "shop",
            "agent": "a",
            "session": "s",
        }
        for i in range(start, stop)
    ]


def varied_corpus(n: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Real technical English: comment lines of the Python standard library's source, as
    varied as memories agents write; queries are 2-3 words taken from stored lines."""
    rng = random.Random(4)
    lines = varied_lines(rng)
    items = varied_items(lines, 0, n, rng)
    queries = []
    while len(queries) < 50:
        words = [w for w in re.findall(r"[a-z]{4,}", rng.choice(lines).lower())]
        if len(words) >= 3:
            queries.append(" ".join(rng.sample(words, 2 + len(queries) % 2)))
    return items, queries


def bench_search(
    n: int,
    tmp: Path,
    corpus: Callable[[int], tuple[list[dict[str, Any]], list[str]]],
    queries: int = 300,
) -> dict[str, float]:
    """Search latency on n stored memories, plain and with filters."""
    path = tmp / f"search-{corpus.__name__}.db"
    backend = SQLiteBackend(f"sqlite:///{path}")
    backend.open()
    items, words = corpus(n)
    for start in range(0, n, 5000):
        backend.write_batch([memory(i) for i in items[start : start + 5000]])
    backend.close()
    # The read cache would answer repeated queries: this measures the store's search.
    collector = mc.MemoryCollector(f"sqlite:///{path}", durability="memory", cache_size=0)
    filters: list[dict[str, Any]] = [{}, {"category": "bug"}, {"tags": ["auth"]}, {"limit": 20}]
    rounds = []
    for _ in range(3):  # the same queries each round
        rng = random.Random(3)
        samples = []
        found = 0
        for i in range(queries):
            text = rng.choice(words)
            kwargs = filters[i % len(filters)]
            t0 = time.perf_counter_ns()
            hits = collector.search(text, **kwargs)
            samples.append(time.perf_counter_ns() - t0)
            found += bool(hits)
        assert found > queries // 2, f"only {found} of {queries} queries found anything"
        p50, p99 = percentiles(samples)
        rounds.append({"p50_ms": p50 / 1000, "p99_ms": p99 / 1000})
    assert collector.count() == n
    collector.close()
    return median_of(rounds)


def bench_footprint() -> dict[str, float]:
    """Import time and RSS of an idle collector, each in a fresh interpreter."""
    code = """
import time, os, sys, tempfile
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
before = rss()
t0 = time.perf_counter()
import memcollect
import_ms = (time.perf_counter() - t0) * 1000
after_import = rss()
c = memcollect.MemoryCollector(durability="memory", data_dir=tempfile.mkdtemp())
time.sleep(0.3)
idle = rss()
c.close()
print(import_ms, after_import - before, idle - after_import)
"""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    # As installed: from cached bytecode, not compiled from source at each import (a shell
    # with PYTHONDONTWRITEBYTECODE set would time the compiler). The first run writes it.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", "import memcollect"], env=env, check=True)
    runs = []
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        runs.append([float(x) for x in out.stdout.split()])
    return {
        "import_ms": statistics.median(r[0] for r in runs),
        "import_rss_mb": statistics.median(r[1] for r in runs),
        "idle_collector_rss_mb": statistics.median(r[2] for r in runs),
    }


GROWTH = """
import json, random, sys, tempfile, time
import memcollect as mc
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
def lines_forever(path):
    # The corpus streamed from its file: this process holds no more of it than a chunk.
    while True:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\\n")
corpus, n, chunk = lines_forever(sys.argv[1]), int(sys.argv[2]), 10_000
if sys.argv[3] == "fold-after":
    # The reference: nothing folded into groups while the load runs (the first read of
    # groups folds it all, after): what storing alone does as the store grows.
    from memcollect.backends.keptgroups import IdleFolds
    IdleFolds.step = lambda self, fold: False
rng = random.Random(4)
categories = ["bug", "error", "feedback", "performance", "decision", "note"]
tmp = tempfile.mkdtemp()
before = rss()
c = mc.MemoryCollector(f"sqlite:///{tmp}/growth.db", data_dir=tmp + "/data")
rates = []
tag_lists = [["auth"], ["ui"], ["api"]]
for start in range(0, n, chunk):
    # What varies, drawn outside the timed loop; the process holds no more than a chunk of it.
    items = [(rng.choice(categories), next(corpus), rng.choice(tag_lists))
             for _ in range(chunk)]
    t0 = time.perf_counter()
    for i, (category, content, tags) in enumerate(items, start):
        c.collect(category, content, {"n": i}, tags=tags, project="shop", agent="a", session="s")
    assert c.flush(300)
    rates.append(chunk / (time.perf_counter() - t0))
    del items
after = rss()
# Then idle: the last rows folded into groups (a read of groups folds what is left), and
# the worker, caught up, has let go of what the load needed.
c.groups(limit=1)
time.sleep(2)
idle = rss()
stored_by = "thread" if c.stats().storer_pid is None else "process"
c.close()
print(json.dumps({"rates": rates, "rss_mb": after, "rss_idle_mb": idle, "rss_before_mb": before,
                  "rss_closed_mb": rss(), "stored_by": stored_by}))
"""


def bench_growth(n: int, folding: str = "as-shipped") -> dict[str, Any]:
    """Stored/s of the default collector (spool, storer="auto", FTS) as the store grows,
    10,000 varied memories at a time, and the process's RSS once all n are stored; in a
    fresh interpreter that streams its corpus from a file, so that RSS is the collector's
    (each chunk is flushed before the next: the storing thread stores them all).
    folding="fold-after": the same with groups folded only after the load."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "lines.txt"
        corpus.write_text("\n".join(varied_lines(random.Random(4))) + "\n", encoding="utf-8")
        out = subprocess.run(
            [sys.executable, "-c", GROWTH, str(corpus), str(n), folding],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
    found = json.loads(out.stdout.splitlines()[-1])
    rates = found["rates"]
    # The first and the last tenth of the load, by the median of their chunks.
    tenth = max(1, len(rates) // 10)
    first, last = statistics.median(rates[:tenth]), statistics.median(rates[-tenth:])
    return {
        "memories": n,
        "first_per_s": first,
        "last_per_s": last,
        "last_share": last / first,
        "rss_mb": found["rss_mb"],
        "rss_idle_mb": found["rss_idle_mb"],
        "rss_before_collector_mb": found["rss_before_mb"],
        "rss_closed_mb": found["rss_closed_mb"],
        "stored_by": found["stored_by"],
        "rates": [round(r) for r in rates],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer records, for a smoke run")
    parser.add_argument("--table", action="store_true", help="print bench/results.json again")
    args = parser.parse_args()
    if args.table:
        print_table(json.loads((HERE / "results.json").read_text()))
        return
    compile_package()
    n_latency = 20_000 if args.quick else 200_000
    n_throughput = 20_000 if args.quick else 200_000
    n_search = 10_000 if args.quick else 100_000
    results: dict[str, Any] = run_header("python bench/collect.py" + (" --quick" * args.quick))
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        # Latencies and searches too: each number is the median of three rounds, ours and
        # the peer's measured side by side in each.
        results["latency_memory"] = median_of([bench_latency(n_latency, tmp) for _ in range(3)])
        results["latency_spool"] = median_of(
            [bench_durable_latency(n_latency, n_latency // 40, tmp) for _ in range(3)]
        )
        # Throughput swings with what else the machine does: the median of three runs,
        # interleaved so that memory and spool modes see the same conditions.
        runs: dict[str, list[float]] = {
            "fts": [], "spool": [], "spool_thread": [], "nofts": [], "default_nofts": [],
            "process_fts": [], "process_nofts": [], "raw_fts": [], "raw_nofts": [],
        }  # fmt: skip
        for _ in range(3):
            runs["raw_fts"].append(bench_raw_sqlite(n_throughput, tmp, fts=True))
            runs["raw_nofts"].append(bench_raw_sqlite(n_throughput, tmp, fts=False))
            runs["fts"].append(bench_throughput(n_throughput, tmp, fts=True))
            # The default: spool, storer="auto".
            runs["spool"].append(bench_throughput(n_throughput, tmp, fts=True, durability="spool"))
            runs["spool_thread"].append(
                bench_throughput(n_throughput, tmp, fts=True, durability="spool", storer="thread")
            )
            runs["nofts"].append(bench_throughput(n_throughput, tmp, fts=False))
            runs["default_nofts"].append(
                bench_throughput(n_throughput, tmp, fts=False, durability="spool")
            )
            for fts in (True, False):
                runs["process_fts" if fts else "process_nofts"].append(
                    bench_throughput(
                        n_throughput, tmp, fts=fts, durability="spool", storer="process"
                    )
                )
        results["throughput_fts_per_s"] = statistics.median(runs["fts"])
        results["throughput_spool_fts_per_s"] = statistics.median(runs["spool"])
        results["throughput_spool_thread_fts_per_s"] = statistics.median(runs["spool_thread"])
        results["throughput_default_nofts_per_s"] = statistics.median(runs["default_nofts"])
        results["throughput_nofts_per_s"] = statistics.median(runs["nofts"])
        results["throughput_process_fts_per_s"] = statistics.median(runs["process_fts"])
        results["throughput_process_nofts_per_s"] = statistics.median(runs["process_nofts"])
        results["raw_sqlite_fts_per_s"] = statistics.median(runs["raw_fts"])
        results["raw_sqlite_nofts_per_s"] = statistics.median(runs["raw_nofts"])
        results["throughput_runs"] = runs
        results["search_varied"] = bench_search(n_search, tmp, varied_corpus)
        results["search_templated"] = bench_search(n_search, tmp, templated_corpus)
    results["footprint"] = bench_footprint()
    results["growth"] = bench_growth(100_000 if args.quick else 1_000_000)
    results["growth_fold_after"] = bench_growth(100_000 if args.quick else 1_000_000, "fold-after")
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def n_rows(r: dict[str, Any]) -> str:
    """How many memories the search rows ran on."""
    return "10k" if "--quick" in r["command"] else "100k"


def rate(r: dict[str, Any], key: str) -> str:
    """A stored/s result, or why there is none (results.json from before it was measured)."""
    return f"{r[key]:,.0f}" if key in r else "not in this run"


def floor_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Stored/s against sqlite3 alone storing the same rows (bench_raw_sqlite)."""
    if "raw_sqlite_fts_per_s" not in r:
        return [("sqlite3 alone, same rows (the floor)", "not in this run", "reference")]
    fts, nofts = r["raw_sqlite_fts_per_s"], r["raw_sqlite_nofts_per_s"]
    thread = r.get("throughput_spool_thread_fts_per_s")
    default_nofts = r.get("throughput_default_nofts_per_s")
    return [
        ("sqlite3 alone, same rows + FTS5 in bulk (the floor)", f"{fts:,.0f}", "reference"),
        ("sqlite3 alone, same rows, no FTS (the floor)", f"{nofts:,.0f}", "reference"),
        (
            "the default (spool, storer='auto') + FTS5, share of the floor",
            f"{r['throughput_spool_fts_per_s'] / fts:.1%}",
            "≥ 85%",
        ),
        (
            "storer='thread' (spool) + FTS5, share of the floor",
            f"{thread / fts:.0%}" if thread else "not in this run",
            "reference",
        ),
        (
            "storer='process' + FTS5, share of the floor",
            f"{r['throughput_process_fts_per_s'] / fts:.1%}",
            "≥ 85%",
        ),
        (
            "FTS off: the default / memory mode / storer='process', share of the floor",
            (f"{default_nofts / nofts:.1%} / " if default_nofts else "")
            + f"{r['throughput_nofts_per_s'] / nofts:.1%} / "
            f"{r['throughput_process_nofts_per_s'] / nofts:.1%}",
            "≥ 85%",
        ),
    ]


def growth_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Stored/s as the store grows, and RSS after it (bench_growth)."""
    if "growth" not in r:
        return [("stored/s as the store grows", "not in this run", "")]
    g = r["growth"]
    return [
        (
            f"stored/s, default collector: first / last tenth of {g['memories']:,} varied",
            f"{g['first_per_s']:,.0f} / {g['last_per_s']:,.0f} ({g['last_share']:.1%})",
            "last ≥ 80% of first",
        ),
        (
            f"RSS after {g['memories']:,} stored: flushed / idle / closed (before the "
            f"collector), stored by the {g.get('stored_by', 'thread')}",
            f"{g['rss_mb']:.1f} / {g.get('rss_idle_mb', g['rss_mb']):.1f} / "
            f"{g['rss_closed_mb']:.1f} MB ({g.get('rss_before_collector_mb', 0):.1f})",
            "≤ 40 MB",
        ),
        *(
            [
                (
                    "… the same load, its groups folded only after it (storing alone)",
                    f"{a['first_per_s']:,.0f} / {a['last_per_s']:,.0f} ({a['last_share']:.0%})",
                    "reference",
                )
            ]
            if (a := r.get("growth_fold_after"))
            else []
        ),
    ]


def print_table(r: dict[str, Any]) -> None:
    """The results table."""
    lat = r["latency_memory"]
    rows = [
        ("collect() p50, memory mode, SQLite", f"{lat['p50_us']:.2f} µs", "≤ 3 µs"),
        ("collect() p99, memory mode, SQLite", f"{lat['p99_us']:.2f} µs", "≤ 30 µs"),
        (
            "stdlib QueueHandler log call p50 / p99",
            f"{lat['queuehandler_p50_us']:.2f} / {lat['queuehandler_p99_us']:.2f} µs",
            "reference",
        ),
        ("speed-up vs QueueHandler (p50), memory mode", f"{lat['speedup_p50']:.1f}x", "≥ 6x"),
        (
            "speed-up vs QueueHandler (p50), spool mode",
            f"{lat['queuehandler_p50_us'] / r['latency_spool']['p50_us']:.1f}x",
            "≥ 4x",
        ),
        (
            "collect() p99 / p50, spool mode",
            f"{r['latency_spool']['p99_us'] / r['latency_spool']['p50_us']:.1f}x",
            "≤ 3x",
        ),
        (
            "collect() p50 / p99, spool mode (survives kill -9)",
            f"{r['latency_spool']['p50_us']:.2f} / {r['latency_spool']['p99_us']:.2f} µs",
            "≤ 10 / ≤ 60 µs",
        ),
        (
            "persist-queue SQLiteQueue.put p50 / p99 (durable)",
            f"{r['latency_spool']['persistqueue_p50_us']:.1f} / "
            f"{r['latency_spool']['persistqueue_p99_us']:.1f} µs",
            "reference",
        ),
        ("speed-up vs persist-queue (p50)", f"{r['latency_spool']['speedup_p50']:.0f}x", "≥ 15x"),
        (
            "stored/s end to end, SQLite + FTS5, spool mode (median of 3)",
            f"{r['throughput_spool_fts_per_s']:,.0f} "
            f"({r['throughput_spool_fts_per_s'] / r['throughput_fts_per_s']:.0%} of memory mode)",
            "≥ 80% of memory mode",
        ),
        (
            "stored/s end to end, SQLite + FTS5 (median of 3)",
            f"{r['throughput_fts_per_s']:,.0f}",
            "≥ 30,000",
        ),
        *floor_rows(r),
        (
            "stored/s end to end, SQLite, FTS off (median of 3)",
            f"{r['throughput_nofts_per_s']:,.0f}",
            "≥ 150,000",
        ),
        (
            "same, storer='process' (spool mode, a storing process)",
            rate(r, "throughput_process_nofts_per_s"),
            "≥ 150,000",
        ),
        (
            "stored/s end to end, SQLite + FTS5, storer='process'",
            rate(r, "throughput_process_fts_per_s"),
            "≥ 30,000",
        ),
        (
            f"search p50 / p99, {n_rows(r)} memories, real text",
            f"{r['search_varied']['p50_ms']:.2f} / {r['search_varied']['p99_ms']:.2f} ms",
            "p50 ≤ 5 ms",
        ),
        (
            f"search p50 / p99, {n_rows(r)} memories, templated (worst case)",
            f"{r['search_templated']['p50_ms']:.2f} / {r['search_templated']['p99_ms']:.2f} ms",
            "p50 ≤ 5 ms",
        ),
        *growth_rows(r),
        ("import memcollect", f"{r['footprint']['import_ms']:.0f} ms", "≤ 100 ms"),
        (
            "RSS of an idle collector (after import)",
            f"{r['footprint']['idle_collector_rss_mb']:.1f} MB",
            "≤ 10 MB",
        ),
    ]
    width = max(len(name) for name, _, _ in rows)
    print(f"{r['command']} — {r['machine']}, {r['date']}")
    print(f"| {'measure'.ljust(width)} | result | target |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for name, value, target in rows:
        print(f"| {name.ljust(width)} | {value} | {target} |")


if __name__ == "__main__":
    main()
