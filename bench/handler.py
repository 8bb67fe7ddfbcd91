"""The logging bridge's call cost: logger.warning() through MemoryHandler against the same
call through the stdlib's QueueHandler (the usual way not to block on logging), same run.

Run: .venv/bin/python bench/handler.py [--quick]
Prints a table and writes bench/results-handler.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import logging.handlers
import platform
import queue
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import memcollect as mc  # noqa: E402
from memcollect.logging import MemoryHandler  # noqa: E402

EXTRA = {"order": 7, "user": "u-42"}


def time_calls(logger: logging.Logger, n: int) -> list[int]:
    """Nanoseconds each of n logger.warning() calls took."""
    clock = time.perf_counter_ns
    out = [0] * n
    gc.collect()
    for i in range(n):
        t0 = clock()
        logger.warning("payment %s retried after %d ms", "p-42", i, extra=EXTRA)
        out[i] = clock() - t0
    return out


def percentiles(samples: list[int]) -> tuple[float, float]:
    samples.sort()
    return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000


def logger_with(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    return logger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke run")
    n = 20_000 if parser.parse_args().quick else 200_000
    rounds: dict[str, list[tuple[float, float]]] = {"memory_handler": [], "queue_handler": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(3):  # interleaved: both sides see the same machine
            q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
            listener = logging.handlers.QueueListener(q, logging.NullHandler())
            listener.start()
            rounds["queue_handler"].append(
                percentiles(time_calls(logger_with("bench.q", logging.handlers.QueueHandler(q)), n))
            )
            listener.stop()
            with mc.MemoryCollector(
                f"sqlite:///{tmp}/handler.db", durability="memory", max_queue_size=2 * n
            ) as c:
                rounds["memory_handler"].append(
                    percentiles(time_calls(logger_with("bench.m", MemoryHandler(c)), n))
                )
    results = {
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "calls": n,
        **{
            side: {
                "p50_us": sorted(p50 for p50, _ in values)[1],
                "p99_us": sorted(p99 for _, p99 in values)[1],
                "p50_spread_us": [round(p50, 2) for p50, _ in values],
            }
            for side, values in rounds.items()
        },
    }
    ratio = results["queue_handler"]["p50_us"] / results["memory_handler"]["p50_us"]
    results["queue_handler_over_memory_handler_p50"] = round(ratio, 2)
    (HERE / "results-handler.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| logger.warning() through | p50 | p99 | p50 of each round |")
    print("|---|---|---|---|")
    for side, label in (("memory_handler", "MemoryHandler (memory mode, SQLite)"),
                        ("queue_handler", "stdlib QueueHandler + QueueListener")):  # fmt: skip
        r = results[side]
        spread = ", ".join(f"{v:.2f}" for v in r["p50_spread_us"])
        print(f"| {label} | {r['p50_us']:.2f} µs | {r['p99_us']:.2f} µs | {spread} |")
    print(f"QueueHandler p50 / MemoryHandler p50: {ratio:.2f}")


if __name__ == "__main__":
    main()
