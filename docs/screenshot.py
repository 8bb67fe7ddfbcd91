"""Render docs/dashboard.png and docs/dashboard-recurring.png: a server, simulated agents
posting for a while, then a search, and the recurring tab.

Run: .venv/bin/python docs/screenshot.py   (needs Chromium at /usr/bin/chromium)
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import expect, sync_playwright

import memcollect as mc
from memcollect.demo import AGENTS, memories
from memcollect.server import create_app

OUT = Path(__file__).with_name("dashboard.png")
RECURRING = Path(__file__).with_name("dashboard-recurring.png")


def main() -> None:
    data = Path(tempfile.mkdtemp(prefix="memcollect-shot-"))
    app = create_app(
        token="", backend=f"sqlite:///{data}/memories.db", data_dir=str(data / "d"),
        history_interval=1.0,
    )  # fmt: skip
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 1360, "height": 1020})
        page.goto(url + "/")
        # Agents post through a remote collector in bursts, so the charts have a shape.
        with mc.MemoryCollector(url, data_dir=str(data / "client"), durability="memory") as c:
            rng = random.Random(3)
            streams = [memories(random.Random(i), name) for i, name in enumerate(AGENTS)]
            for second in range(45):
                burst = int(400 + 300 * abs((second % 15) - 7) + rng.random() * 200)
                for i in range(burst):
                    c.collect(**next(streams[i % len(streams)]))
                time.sleep(1)
            c.flush(30)
        time.sleep(3)
        page.fill("#search-input", "safari login")
        page.locator("#search-form button").click()
        expect(page.locator("#list-title")).to_contain_text("search")
        time.sleep(1)
        page.select_option("#chart-window", "300")
        time.sleep(1)
        page.screenshot(path=str(OUT), full_page=False)
        page.locator("#tab-recurring").click()
        expect(page.locator("#groups tr").first).to_be_visible()
        time.sleep(0.5)
        page.screenshot(path=str(RECURRING), full_page=False)
        browser.close()
    server.should_exit = True
    print(f"wrote {OUT} and {RECURRING}")


if __name__ == "__main__":
    main()
