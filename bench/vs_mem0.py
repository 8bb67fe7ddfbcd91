"""memcollect in front of mem0 vs mem0 alone, in the same run, offline.

Run: .venv/bin/python bench/vs_mem0.py   (needs the mem0 extra; make test installs it)
- per-call latency: our collect() into a mem0:// store vs mem0's add(..., infer=False);
- storing rate: our worker (one embed_batch per batch, one upsert) vs mem0's add called per
  memory. Both embed with the same packaged all-MiniLM-L6-v2 on the CPU.
- the same rate into a SQLite store with semantic recall: the model (?semantic=1) and static
  token vectors distilled from it (?semantic=static).
Prints the results tables and writes bench/results-mem0.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from collect import percentiles, varied_corpus  # noqa: E402

import memcollect as mc  # noqa: E402
from memcollect.semantic import get_embedder  # noqa: E402


def main() -> None:
    out = HERE / "results-mem0.json"
    if "--table" in sys.argv:
        print_table(json.loads(out.read_text()))
        return
    n_ours, n_mem0, n_static = 3000, 300, 30_000
    items, _ = varied_corpus(n_ours + n_mem0)
    with tempfile.TemporaryDirectory() as tmp:
        c = mc.MemoryCollector(
            f"mem0:///{tmp}/ours", data_dir=f"{tmp}/data", max_queue_size=n_ours + 1
        )
        c.search("load the model first", mode="semantic")
        latencies = []
        started = time.perf_counter()
        for item in items[:n_ours]:
            t0 = time.perf_counter_ns()
            c.collect(item["category"], item["content"], tags=item["tags"])
            latencies.append(time.perf_counter_ns() - t0)
        assert c.flush(3600)
        ours_per_s = n_ours / (time.perf_counter() - started)
        assert c.count() == n_ours
        ours_p50, ours_p99 = percentiles(latencies)
        c.close()

        from memcollect.backends.mem0 import Mem0Backend

        peer = Mem0Backend(f"mem0:///{tmp}/peer")
        peer.open()
        memory = peer._mem0()
        memory.add("warm up", user_id="bench", infer=False)
        add_latencies = []
        started = time.perf_counter()
        for item in items[n_ours:]:
            t0 = time.perf_counter_ns()
            memory.add(
                item["content"], user_id="bench", metadata={"c": item["category"]}, infer=False
            )
            add_latencies.append(time.perf_counter_ns() - t0)
        mem0_per_s = n_mem0 / (time.perf_counter() - started)
        mem0_p50, mem0_p99 = percentiles(add_latencies)
        peer.close()
        sqlite_model_per_s = sqlite_rate(f"{tmp}/model.db?semantic=1", items[:n_ours])
        static_items, _ = varied_corpus(n_static)
        sqlite_static_per_s = sqlite_rate(f"{tmp}/static.db?semantic=static", static_items)
    results = {
        "command": "python bench/vs_mem0.py",
        "date": time.strftime("%Y-%m-%d"),
        "collect_p50_us": ours_p50,
        "collect_p99_us": ours_p99,
        "mem0_add_p50_ms": mem0_p50 / 1000,
        "mem0_add_p99_ms": mem0_p99 / 1000,
        "ours_stored_per_s": ours_per_s,
        "mem0_add_per_s": mem0_per_s,
        "sqlite_model_stored_per_s": sqlite_model_per_s,
        "sqlite_static_stored_per_s": sqlite_static_per_s,
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def sqlite_rate(path: str, items: list[dict[str, Any]]) -> float:
    """Memories a second embedded and stored by a collector into a semantic SQLite store."""
    with tempfile.TemporaryDirectory() as data:
        c = mc.MemoryCollector(
            f"sqlite:///{path}", data_dir=data, durability="memory", max_queue_size=len(items) + 1
        )
        # The model loads (and a static table is distilled) before the clock starts.
        kind = "static" if "semantic=static" in path else "model"
        get_embedder(kind=kind).embed(["load the model first"])
        started = time.perf_counter()
        for item in items:
            c.collect(item["category"], item["content"], tags=item["tags"])
        assert c.flush(3600)
        # Stored first, then embedded by the worker: the clock stops when both are done.
        while c.backend.pending_embeddings():  # type: ignore[attr-defined]
            time.sleep(0.05)
        rate = len(items) / (time.perf_counter() - started)
        assert c.count() == len(items)
        c.close()
    return rate


def print_table(r: dict[str, object]) -> None:
    """The results table."""
    print(f"{r['command']}, {r['date']}")
    print("| measure | memcollect → mem0:// | mem0 add(infer=False) | target |")
    print("|---|---|---|---|")
    print(
        f"| call latency p50 / p99 | {r['collect_p50_us']:.1f} / {r['collect_p99_us']:.1f} µs "
        f"| {r['mem0_add_p50_ms']:.1f} / {r['mem0_add_p99_ms']:.1f} ms | microseconds vs ms |"
    )
    ratio = float(r["ours_stored_per_s"]) / float(r["mem0_add_per_s"])  # type: ignore[arg-type]
    print(
        f"| memories embedded and stored per second | {r['ours_stored_per_s']:,.0f} "
        f"| {r['mem0_add_per_s']:,.0f} | ≥ 10x ({ratio:.1f}x) |"
    )
    if "sqlite_static_stored_per_s" not in r:
        return
    base = float(r["mem0_add_per_s"])  # type: ignore[arg-type]
    print("\n| embedded and stored by | memories/s | vs mem0 add |")
    print("|---|---|---|")
    for label, key in [
        ("mem0 add(infer=False), one call per memory", "mem0_add_per_s"),
        ("memcollect → mem0:// (the model, a batch per call)", "ours_stored_per_s"),
        ("memcollect → sqlite `?semantic=1` (the model, batched)", "sqlite_model_stored_per_s"),
        ("memcollect → sqlite `?semantic=static`", "sqlite_static_stored_per_s"),
    ]:
        rate = float(r[key])  # type: ignore[arg-type]
        print(f"| {label} | {rate:,.0f} | {rate / base:.1f}x |")


if __name__ == "__main__":
    main()
