"""What OpenTelemetry costs collect(): never imported, imported with no span active, and
inside an active span (its ids recorded with the memory). Each case in a fresh process,
interleaved, three rounds.

Run: .venv/bin/python bench/otel.py [--quick]
Prints a table and writes bench/results-otel.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASE = """
import gc, sys, time
sys.path.insert(0, {src!r})
case, n = sys.argv[1], int(sys.argv[2])
if case != "absent":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())
import memcollect as mc
c = mc.MemoryCollector("memory://", durability="memory", max_queue_size=2 * n)
clock, out = time.perf_counter_ns, [0] * n

def run():
    gc.collect()
    for i in range(n):
        t0 = clock()
        c.collect("bug", "Login fails on Safari 17", {{"module": "auth"}}, tags=["auth"])
        out[i] = clock() - t0

if case == "in_span":
    with trace.get_tracer("bench").start_as_current_span("request"):
        run()
else:
    run()
out.sort()
print(out[n // 2] / 1000, out[int(n * 0.99)] / 1000)
c.close()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke run")
    n = 20_000 if parser.parse_args().quick else 200_000
    script = CASE.format(src=str(HERE.parent / "src"))
    cases = ("absent", "no_span", "in_span")
    rounds: dict[str, list[tuple[float, float]]] = {case: [] for case in cases}
    for _ in range(3):
        for case in cases:
            out = subprocess.run([sys.executable, "-c", script, case, str(n)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            p50, p99 = map(float, out.stdout.split())
            rounds[case].append((p50, p99))
    results = {
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "calls": n,
        **{
            case: {
                "p50_us": statistics.median(p for p, _ in values),
                "p99_us": statistics.median(p for _, p in values),
                "p50_each_round_us": [round(p, 2) for p, _ in values],
            }
            for case, values in rounds.items()
        },
    }
    (HERE / "results-otel.json").write_text(json.dumps(results, indent=2) + "\n")
    labels = {
        "absent": "OpenTelemetry never imported",
        "no_span": "imported, no span active",
        "in_span": "inside an active span (ids recorded)",
    }
    print("| collect(), memory mode | p50 | p99 | p50 of each round |")
    print("|---|---|---|---|")
    for case in cases:
        r = results[case]
        each = ", ".join(f"{v:.2f}" for v in r["p50_each_round_us"])
        print(f"| {labels[case]} | {r['p50_us']:.2f} µs | {r['p99_us']:.2f} µs | {each} |")


if __name__ == "__main__":
    main()
