"""Recall quality: text, semantic and hybrid search on a labelled set, offline.

Run: .venv/bin/python bench/recall.py   (needs the semantic extra; make test installs it)
200 memories: 30 targets, each with a query that paraphrases it (few words in common), and 170
distractors (real technical English and the demo's agent memories). Reports recall@5 and MRR
per mode, with the model (?semantic=1) and with static token vectors (?semantic=static),
prints the recall table and writes bench/results-recall.json.
`--scale N [static]`: stored/s and search p50 on N memories.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from collect import varied_corpus  # noqa: E402

import memcollect as mc  # noqa: E402
from memcollect.demo import memories as demo_memories  # noqa: E402
from memcollect.semantic import get_embedder  # noqa: E402

# (category, the memory, a query that asks for it in other words)
LABELLED: list[tuple[str, str, str]] = [
    (
        "bug",
        "Login fails on Safari after the user resets their password",
        "can't sign in on Apple's browser once credentials were changed",
    ),
    (
        "error",
        "Payment gateway returned HTTP 502 during checkout",
        "card processor bad gateway while buying",
    ),
    (
        "performance",
        "Dashboard takes 9 seconds to render with 10k rows",
        "overview screen very slow to draw for large tables",
    ),
    ("feedback", "Customers adore the new dark theme", "people really like the night color scheme"),
    (
        "bug",
        "Uploading a profile picture larger than 5 MB crashes the app",
        "big avatar images make the application fall over",
    ),
    (
        "error",
        "Disk full on the build agent, artifacts could not be written",
        "CI runner ran out of storage space",
    ),
    (
        "architecture",
        "We split the monolith's billing module into its own service",
        "invoicing was extracted into a separate microservice",
    ),
    (
        "performance",
        "Memory usage of the worker grows until the OOM killer stops it",
        "process leaks RAM and gets terminated by the kernel",
    ),
    (
        "bug",
        "Timezone offset is ignored when scheduling meetings",
        "calendar invites land at the wrong hour for people abroad",
    ),
    (
        "feedback",
        "The onboarding wizard confuses first-time users",
        "new customers find the setup steps bewildering",
    ),
    (
        "decision",
        "We chose PostgreSQL over MongoDB for the orders store",
        "relational database picked instead of a document store for purchases",
    ),
    (
        "error",
        "TLS certificate for api.example.com expired yesterday",
        "https cert on our API host is out of date",
    ),
    (
        "integration",
        "Slack notifications stopped after the webhook URL was rotated",
        "chat alerts no longer arrive since the hook endpoint changed",
    ),
    (
        "performance",
        "Cold start of the lambda function takes 4 seconds",
        "serverless handler is sluggish on its first invocation",
    ),
    (
        "bug",
        "Search returns no results when the query contains an apostrophe",
        "looking up words with a quote mark finds nothing",
    ),
    (
        "qa",
        "Flaky end-to-end test: the cart badge count is sometimes off by one",
        "intermittent UI test failure on the basket item counter",
    ),
    (
        "operation",
        "Nightly backup job skipped because the cron daemon was down",
        "scheduled snapshot never ran overnight, the scheduler was stopped",
    ),
    (
        "feedback",
        "Users want to export their reports as spreadsheets",
        "request to download analytics as Excel files",
    ),
    (
        "error",
        "Rate limit exceeded when syncing contacts with the CRM",
        "too many requests to the customer relationship system during import",
    ),
    (
        "architecture",
        "Events are published to Kafka and consumed by the analytics pipeline",
        "the data warehouse ingests messages from the streaming log",
    ),
    (
        "bug",
        "Password reset emails land in the spam folder",
        "recovery messages get flagged as junk mail",
    ),
    (
        "performance",
        "N+1 queries in the orders endpoint slow every page load",
        "the purchases API fires a database call per row",
    ),
    (
        "decision",
        "Feature flags will be managed with an in-house service, not a vendor",
        "we build our own toggle system rather than buying one",
    ),
    (
        "integration",
        "The Stripe webhook signature check fails after the library upgrade",
        "payment provider callback verification broke when dependencies were bumped",
    ),
    (
        "qa",
        "Accessibility audit: buttons lack labels for screen readers",
        "controls are not announced to blind users",
    ),
    (
        "operation",
        "Kubernetes pods evicted under node memory pressure",
        "containers got kicked off machines that were short on RAM",
    ),
    (
        "bug",
        "Mobile app freezes when switching between tabs quickly",
        "phone application hangs on rapid navigation",
    ),
    (
        "feedback",
        "Pricing page is hard to understand",
        "visitors are confused about how much plans cost",
    ),
    (
        "error",
        "DNS resolution for the internal registry times out intermittently",
        "name lookups of our private package host sometimes hang",
    ),
    (
        "architecture",
        "Read replicas serve the reporting queries to offload the primary",
        "analytics reads go to follower databases instead of the main one",
    ),
]


def build_store(tmp: Path, semantic: str = "1") -> tuple[mc.MemoryCollector, list[str]]:
    collector = mc.MemoryCollector(
        f"sqlite:///{tmp}/recall-{semantic}.db?semantic={semantic}",
        durability="memory",
        data_dir=str(tmp),
    )
    target_ids = [collector.collect(cat, text) for cat, text, _ in LABELLED]
    corpus, _ = varied_corpus(120)
    for item in corpus:
        collector.collect(item["category"], item["content"])
    seen: set[str] = set()
    stream = demo_memories(random.Random(11), "bench-agent")
    while len(seen) < 50:
        memory = next(stream)
        if memory["content"] not in seen:
            seen.add(memory["content"])
            collector.collect(memory["category"], memory["content"])
    assert collector.flush(600)
    assert collector.count() == 200
    return collector, target_ids


def evaluate(collector: mc.MemoryCollector, target_ids: list[str], mode: str) -> dict[str, float]:
    hits_at_5 = 0
    reciprocal = 0.0
    latencies = []
    for target, (_, _, query) in zip(target_ids, LABELLED, strict=True):
        started = time.perf_counter()
        found = [m.id for m in collector.search(query, mode=mode, limit=10)]
        latencies.append(time.perf_counter() - started)
        if target in found[:5]:
            hits_at_5 += 1
        if target in found:
            reciprocal += 1 / (found.index(target) + 1)
    latencies.sort()
    return {
        "recall_at_5": hits_at_5 / len(LABELLED),
        "mrr": reciprocal / len(LABELLED),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
    }


def scale(n: int, semantic: str = "1") -> dict[str, float]:
    """Stored/s with embeddings computed in the worker, and search p50 on n memories."""
    items, words = varied_corpus(n)
    with tempfile.TemporaryDirectory() as tmp:
        c = mc.MemoryCollector(
            f"sqlite:///{tmp}/scale.db?semantic={semantic}",
            durability="memory",
            data_dir=tmp,
            max_queue_size=n + 1,
            batch_size=256,
        )
        # The model loads (or the static table is distilled) before the clock starts.
        get_embedder(kind="static" if semantic == "static" else "model").embed(["warm up"])
        started = time.perf_counter()
        for item in items:
            c.collect(item["category"], item["content"], tags=item["tags"])
        assert c.flush(3600)
        stored_per_s = n / (time.perf_counter() - started)
        # Embedded by the worker after storing, while nothing else comes in.
        while c.backend.pending_embeddings():  # type: ignore[attr-defined]
            time.sleep(0.05)
        embedded_per_s = n / (time.perf_counter() - started)
        rng = random.Random(5)
        c.search("load every vector", mode="semantic")
        timings: dict[str, list[float]] = {"semantic": [], "hybrid": []}
        for i in range(100):
            query = rng.choice(words)
            mode = ("semantic", "hybrid")[i % 2]
            t0 = time.perf_counter()
            c.search(query, mode=mode, limit=10)
            timings[mode].append(time.perf_counter() - t0)
        c.close()
    for samples in timings.values():
        samples.sort()
    return {
        "memories": n,
        "semantic": semantic,
        "stored_per_s": stored_per_s,
        "stored_per_s_with_embeddings": embedded_per_s,
        "semantic_p50_ms": timings["semantic"][50 // 2] * 1000,
        "hybrid_p50_ms": timings["hybrid"][50 // 2] * 1000,
        "hybrid_max_ms": timings["hybrid"][-1] * 1000,
    }


def main() -> None:
    out = HERE / "results-recall.json"
    if "--table" in sys.argv:
        print_table(json.loads(out.read_text()))
        return
    if "--scale" in sys.argv:
        at = sys.argv.index("--scale")
        n = int(sys.argv[at + 1])
        semantic = "static" if "static" in sys.argv[at + 2 :] else "1"
        result = scale(n, semantic)
        saved = json.loads(out.read_text()) if out.exists() else {}
        saved["scale_static" if semantic == "static" else "scale"] = result
        out.write_text(json.dumps(saved, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    modes: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for semantic, suffix in (("1", ""), ("static", " (static)")):
            collector, target_ids = build_store(Path(tmp), semantic)
            collector.search("warm up the model", mode="semantic")
            for mode in (
                ("text", "semantic", "hybrid") if semantic == "1" else ("semantic", "hybrid")
            ):
                modes[mode + suffix] = evaluate(collector, target_ids, mode)
            collector.close()
    results: dict[str, object] = {
        "command": "python bench/recall.py",
        "date": time.strftime("%Y-%m-%d"),
        "memories": 200,
        "queries": len(LABELLED),
        "modes": modes,
    }
    saved = json.loads(out.read_text()) if out.exists() else {}
    results.update({k: v for k, v in saved.items() if k.startswith("scale")})
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(r: dict[str, object]) -> None:
    """The results table."""
    print(
        f"{r['command']}, {r['date']}: {r['queries']} paraphrased queries, {r['memories']} memories"
    )
    print("| mode | recall@5 | MRR (top 10) | search p50 |")
    print("|---|---|---|---|")
    for mode, m in r["modes"].items():  # type: ignore[attr-defined]
        print(f"| {mode} | {m['recall_at_5']:.2f} | {m['mrr']:.2f} | {m['p50_ms']:.1f} ms |")
    for key in ("scale", "scale_static"):
        scaled = r.get(key)
        if not isinstance(scaled, dict):
            continue
        static = " static" if key == "scale_static" else ""
        print(f"\nat scale (python bench/recall.py --scale {scaled['memories']}{static}):")
        rate = scaled["stored_per_s_with_embeddings"]
        if "stored_per_s" in scaled:
            print(f"- stored/s (searchable by text): {scaled['stored_per_s']:,.0f}")
        print(f"- stored and embedded/s, embeddings in the worker: {rate:,.0f}")
        print(
            f"- semantic p50 {scaled['semantic_p50_ms']:.1f} ms; hybrid p50 "
            f"{scaled['hybrid_p50_ms']:.1f} ms, slowest {scaled['hybrid_max_ms']:.1f} ms"
        )


if __name__ == "__main__":
    main()
