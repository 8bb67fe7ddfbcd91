"""What a short script pays for the default storer="auto": a fresh process collects N memories
into SQLite and closes, timed from creating the collector to close() returning, beside the same
script with storer="thread" (which never starts a storing process), interleaved in one run.

    python bench/short_scripts.py [--quick]

Writes bench/results-short-scripts.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))

from collect import compile_package, run_header  # noqa: E402

# The script each run starts: it prints the seconds from the collector's creation to close()
# returning.
SCRIPT = """
import sys, time
sys.path.insert(0, {src!r})
import memcollect as mc
n, storer, url, data_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
content = [f"request {{i}} to /api/orders timed out after {{i % 900}} ms" for i in range(n)]
started = time.perf_counter()
collector = mc.MemoryCollector(url, data_dir=data_dir, storer=storer)
for text in content:
    collector.collect("performance", text, {{"route": "/api/orders"}}, tags=["timeout"])
collector.close()
print(time.perf_counter() - started)
"""


def run_once(n: int, storer: str, tmp: Path) -> float:
    """Seconds one fresh script took, creation to close(), for n memories."""
    name = f"{storer}-{n}-{time.monotonic_ns()}"
    url = f"sqlite:///{tmp / name}.db"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(src=str(SRC)), str(n), storer, url,
         str(tmp / name)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    stored = count_rows(tmp / f"{name}.db")
    assert stored == n, f"{storer}: stored {stored} of {n}"
    for path in tmp.glob(f"{name}*"):
        if path.is_file():
            path.unlink()
    return float(out.stdout.split()[-1])


def count_rows(path: Path) -> int:
    """Memories in a SQLite store, read with sqlite3 alone."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM memories").fetchone()[0])
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and runs")
    args = parser.parse_args()
    compile_package()
    sizes = [1_000, 10_000] if args.quick else [100, 1_000, 5_000, 10_000, 20_000, 50_000]
    rounds = 3 if args.quick else 7
    command = "python bench/short_scripts.py" + (" --quick" * args.quick)
    results: dict[str, object] = run_header(command) | {"rounds": rounds}
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for n in sizes:
            runs: dict[str, list[float]] = {"auto": [], "thread": []}
            for _ in range(rounds):
                for storer in ("auto", "thread"):  # interleaved: both see the same machine
                    runs[storer].append(run_once(n, storer, tmp))
            auto, thread = statistics.median(runs["auto"]), statistics.median(runs["thread"])
            rows.append({"memories": n, "auto_s": auto, "thread_s": thread, "runs": runs})
    results["sizes"] = rows
    (HERE / "results-short-scripts.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(r: dict[str, object]) -> None:
    """The results as a Markdown table."""
    print(f"{r['command']}, {r['date']}, median of {r['rounds']} fresh processes each")
    print("| memories | storer='auto' (the default) | storer='thread' | auto / thread |")
    print("|---|---|---|---|")
    for row in r["sizes"]:  # type: ignore[attr-defined]
        auto, thread = row["auto_s"], row["thread_s"]
        print(f"| {row['memories']:,} | {auto * 1000:.0f} ms | {thread * 1000:.0f} ms "
              f"| {auto / thread:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
