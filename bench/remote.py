"""HTTP ingest: a collector whose store is a memcollect server (`memcollect serve`) on loopback.

Run: .venv/bin/python bench/remote.py [--quick]
Prints a table and writes bench/results-remote.json. The server is a separate process storing in
SQLite with its default spool; the client is a MemoryCollector("http://127.0.0.1:PORT").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import httpx  # noqa: E402
from collect import varied_corpus  # noqa: E402

import memcollect as mc  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMCOLLECT_")}
        env["PYTHONPATH"] = str(HERE.parent / "src")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memcollect",
                "serve",
                "--port",
                str(self.port),
                "--backend",
                f"sqlite:///{data}/served.db",
                "--data-dir",
                str(data / "server"),
                "--log-level",
                "warning",
            ],
            env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0


def ingest(n: int, batch_size: int, sync: bool) -> float:
    """Memories per second from the first collect() until the server has stored them all."""
    items, _ = varied_corpus(n)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        server = Server(data)
        url = server.url + ("" if sync else "?sync=0")
        c = mc.MemoryCollector(
            url,
            durability="memory",
            batch_size=batch_size,
            max_queue_size=n + 1,
            data_dir=str(data / "client"),
        )
        started = time.perf_counter()
        for item in items:
            c.collect(item["category"], item["content"], item["metadata"], tags=item["tags"])
        assert c.flush(timeout=600)
        if not sync:  # acknowledged once spooled by the server: wait until it has stored them
            while httpx.get(server.url + "/v1/counts").json()["total"] < n:
                time.sleep(0.01)
        elapsed = time.perf_counter() - started
        assert c.count() == n
        c.close()
        server.stop()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the saved results again")
    args = parser.parse_args()
    out = HERE / "results-remote.json"
    if args.table:
        print_table(json.loads(out.read_text()))
        return
    n = 20_000 if args.quick else 100_000
    runs = 1 if args.quick else 3
    results: dict[str, Any] = {
        "command": "python bench/remote.py" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d"),
        "memories": n,
        "cases": {},
    }
    for batch_size, sync in ((256, True), (1000, True), (256, False)):
        rates = [ingest(n, batch_size, sync) for _ in range(runs)]
        results["cases"][f"{batch_size}-{'stored' if sync else 'spooled'}"] = {
            "batch_size": batch_size,
            "sync": sync,
            "per_s": statistics.median(rates),
            "runs": rates,
        }
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(r: dict[str, Any]) -> None:
    """The results table."""
    print(f"{r['command']}, {r['date']}, {r['memories']:,} memories, median of runs")
    print("| remote collector → memcollect serve (SQLite) on loopback | stored/s | target |")
    print("|---|---|---|")
    for case in r["cases"].values():
        how = "server answers once stored" if case["sync"] else "server answers once spooled"
        print(f"| batch_size={case['batch_size']}, {how} | {case['per_s']:,.0f} | ≥ 20,000 |")


if __name__ == "__main__":
    main()
