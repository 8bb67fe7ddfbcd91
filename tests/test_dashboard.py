"""The dashboard in a real headless Chromium: counters move, search finds, nothing external."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from .services import ThreadedServer, require_chromium, wait_for

pytestmark = pytest.mark.slow

TOKEN = "dashboard-token"


@contextmanager
def dashboard(
    backend: str, data_dir: Path, width: int = 1280, **server_args: Any
) -> Iterator[tuple[ThreadedServer, Any]]:
    """A server on `backend` and a Chromium page logged in to it (not yet opened)."""
    chromium = require_chromium()
    from playwright.sync_api import sync_playwright

    with (
        ThreadedServer(
            backend=backend, data_dir=str(data_dir), batch_timeout=0.002, token=TOKEN,
            **server_args,
        ) as server,
        sync_playwright() as playwright,
    ):  # fmt: skip
        browser = playwright.chromium.launch(executable_path=chromium)
        context = browser.new_context(
            http_credentials={"username": "me", "password": TOKEN},
            viewport={"width": width, "height": 900},
            accept_downloads=True,
        )
        yield server, context.new_page()
        browser.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def post(server: ThreadedServer, items: list[dict[str, Any]], path: str = "/v1/memories") -> None:
    response = httpx.post(server.url + path, json=items, headers=AUTH)
    assert response.status_code in (200, 202, 204), response.text


def stored(server: ThreadedServer) -> int:
    stats: int = httpx.get(server.url + "/v1/stats", headers=AUTH).json()["stats"]["stored"]
    return stats


def test_dashboard_shows_live_counters_and_searches(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with dashboard(f"sqlite:///{tmp_path}/dash.db", tmp_path / "d") as (server, page):
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/")
        expect(page.locator("#health")).to_have_text("ok")
        expect(page.locator("#stat-accepted")).to_have_text("0")

        items = [{"category": "note", "content": f"routine note {i}"} for i in range(24)]
        items.append({"category": "bug", "content": "zebra crossing anomaly in the map view"})
        post(server, items)

        # Counters move on their own (polling), without a reload.
        expect(page.locator("#stat-accepted")).to_have_text("25", timeout=15_000)
        expect(page.locator("#stat-stored")).to_have_text("25", timeout=15_000)
        expect(page.locator("#stat-total")).to_have_text("25", timeout=15_000)
        expect(page.locator("#embed-box")).to_be_hidden()  # no semantic recall, nothing to wait
        expect(page.locator("#memories tr")).to_have_count(25, timeout=15_000)

        # The category chips filter the list.
        page.locator('#categories [data-category="bug"]').click()
        expect(page.locator("#memories tr")).to_have_count(1)
        page.locator('#categories [data-category="all"]').click()
        expect(page.locator("#memories tr")).to_have_count(25)

        # Search shows the posted memory.
        page.fill("#search-input", "zebra")
        page.locator("#search-form button").click()
        expect(page.locator("#memories tr")).to_have_count(1)
        expect(page.locator("#memories")).to_contain_text("zebra crossing anomaly")
        expect(page.locator("#list-title")).to_contain_text('search "zebra"')

        # Both charts were drawn with samples (canvas pixels are not blank).
        painted = page.evaluate(
            """() => [...document.querySelectorAll("canvas")].map((c) =>
                c.getContext("2d").getImageData(0, 0, c.width, c.height).data.some((v) => v))"""
        )
        assert painted == [True, True]

    assert errors == []
    assert requested and all(url.startswith(server.url) for url in requested), requested


def test_dashboard_shows_memories_waiting_for_their_embedding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import numpy as np

    from memcollect import semantic

    from .test_semantic import require_semantic

    require_chromium()
    require_semantic()
    from playwright.sync_api import expect

    release = threading.Event()

    class HeldBackEmbedder:
        """Embeds only once released: the memories wait for it in between."""

        kind = "model"

        def embed(self, texts: list[str]) -> np.ndarray:
            release.wait(60)
            vectors = np.ones((len(texts), semantic.DIMENSIONS), np.float32)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    monkeypatch.setattr(semantic, "get_embedder", lambda *a, **k: HeldBackEmbedder())
    with dashboard(f"sqlite:///{tmp_path}/dash.db?semantic=1", tmp_path / "d") as (server, page):
        page.goto(server.url + "/")
        expect(page.locator("#stat-accepted")).to_have_text("0")
        expect(page.locator("#embed-box")).to_be_hidden()
        post(
            server, [{"category": "note", "content": f"waits for the model {i}"} for i in range(7)]
        )
        expect(page.locator("#stat-stored")).to_have_text("7", timeout=15_000)
        expect(page.locator("#embed-box")).to_be_visible(timeout=15_000)
        expect(page.locator("#stat-embed")).to_have_text("7")
        release.set()
        expect(page.locator("#embed-box")).to_be_hidden(timeout=15_000)


def incident(server: ThreadedServer) -> None:
    """What a dashboard is opened for: one failure over and over, among other memories."""
    items: list[dict[str, Any]] = [
        {"category": "error", "content": f"Timeout after {100 + i} ms calling payments",
         "project": "shop", "agent": "checkout", "session": "s-1" if i < 3 else "s-2",
         "tags": ["payments"], "metadata": {"order": 9000 + i, "region": "eu"}}
        for i in range(40)
    ]  # fmt: skip
    items += [
        {"category": "bug", "content": f"Login fails on Safari {16 + i % 2}", "project": "web"}
        for i in range(15)
    ]
    items += [{"category": "feedback", "content": "Love the new search", "agent": "support"}]
    post(server, items)
    wait_for(lambda: stored(server) == 56, 30)


def test_a_reload_after_an_incident_shows_the_server_history(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with dashboard(f"sqlite:///{tmp_path}/h.db", tmp_path / "d", history_interval=0.05) as (
        server,
        page,
    ):
        incident(server)
        # The server sampled while no page was open: its series is there on first load.
        wait_for(lambda: len(httpx.get(server.url + "/v1/history", headers=AUTH).json()
                             ["samples"]) > 5, 30)  # fmt: skip
        page.goto(server.url + "/")
        note = page.locator("#chart-note")
        expect(note).to_contain_text("samples kept by the server")
        assert int(note.inner_text().split()[0]) > 5
        # The stored-per-second line rose with the incident: the chart is not flat at zero.
        history = httpx.get(server.url + "/v1/history", headers=AUTH).json()["samples"]
        assert max(s[2] for s in history) == 56 and min(s[2] for s in history) < 56
        painted = page.evaluate(
            """() => [...document.querySelectorAll("canvas")].map((c) =>
                c.getContext("2d").getImageData(0, 0, c.width, c.height).data.some((v) => v))"""
        )
        assert painted == [True, True]


def test_filters_counts_details_groups_dead_letters_and_export(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with dashboard(f"sqlite:///{tmp_path}/f.db", tmp_path / "d") as (server, page):
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        incident(server)
        page.goto(server.url + "/")
        rows = page.locator("#memories tr")
        expect(rows).to_have_count(50, timeout=15_000)
        # The true count: more than the page shows, and the store's total.
        expect(page.locator("#list-count")).to_have_text("50 newest of 56")

        # Filters: project, agent, session, tag, time range; each narrows the list.
        page.fill("#f-project", "web")
        page.locator("#f-project").dispatch_event("change")
        expect(rows).to_have_count(15)
        expect(page.locator("#list-count")).to_have_text("15 found")
        page.fill("#f-project", "")
        page.fill("#f-session", "s-1")
        page.locator("#f-session").dispatch_event("change")
        expect(rows).to_have_count(3)
        page.fill("#f-session", "")
        page.fill("#f-agent", "support")
        page.locator("#f-agent").dispatch_event("change")
        expect(rows).to_have_count(1)
        page.fill("#f-agent", "")
        page.fill("#f-tag", "payments")
        page.locator("#f-tag").dispatch_event("change")
        expect(page.locator("#list-count")).to_have_text("40 found")
        page.select_option("#f-range", "15m")
        expect(page.locator("#list-count")).to_have_text("40 found")
        page.fill("#f-tag", "")
        page.locator("#f-tag").dispatch_event("change")
        expect(page.locator("#list-count")).to_contain_text("more than 50 found")
        page.check("#f-collapse")  # one per group: three groups
        expect(rows).to_have_count(3)
        expect(page.locator("#memories")).to_contain_text("(40 like it)")
        page.uncheck("#f-collapse")
        page.select_option("#f-range", "")

        # Export: the shown list, as JSON lines.
        with page.expect_download() as download:
            page.locator("#export").click()
        lines = Path(download.value.path()).read_text().splitlines()
        assert len(lines) == 56 and all(json.loads(line)["id"] for line in lines)

        # A row opens the memory: every field, its metadata, and its group.
        page.locator("#memories tr", has_text="Timeout after 139 ms").click()
        detail = page.locator("#detail")
        expect(detail).to_be_visible()
        for text in ("checkout", "s-2", "payments", '"order": 9039', '"region": "eu"'):
            expect(detail).to_contain_text(text)
        expect(page.locator("#detail-group")).to_contain_text("its group: 40 memories")
        page.locator("#detail-group button").click()
        expect(page.locator("#detail-title")).to_contain_text("40x error")
        expect(page.locator("#group-members tr")).to_have_count(20)
        page.locator("#detail-close").click()
        expect(detail).to_be_hidden()

        # Recurring: each group with its count and trend, most first.
        page.locator("#tab-recurring").click()
        groups = page.locator("#groups tr")
        expect(groups).to_have_count(3)
        assert groups.first.locator("td").first.inner_text() == "40"
        expect(groups.first.locator("svg rect")).not_to_have_count(0)
        groups.nth(1).click()
        expect(page.locator("#detail-title")).to_contain_text("15x bug")
        page.locator("#detail-close").click()

        # Dead letters: listed, then retried into the store.
        letter = {"memory": {"category": "bug", "content": "refused once, fine now"},
                  "error": "the store refused it", "failed_at": time.time()}  # fmt: skip
        post(server, [letter], "/v1/dead-letters")
        page.locator("#tab-dead").click()
        expect(page.locator("#dead tr")).to_have_count(1)
        expect(page.locator("#dead")).to_contain_text("the store refused it")
        page.locator("#retry-dead").click()
        expect(page.locator("#dead-note")).to_contain_text("none: every memory was stored")
        wait_for(lambda: stored(server) == 57, 30)
    assert errors == []


def test_a_narrow_screen_reads_without_sideways_scrolling(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with dashboard(f"sqlite:///{tmp_path}/n.db", tmp_path / "d", width=390) as (server, page):
        incident(server)
        page.goto(server.url + "/")
        expect(page.locator("#memories tr")).to_have_count(50, timeout=15_000)
        page.screenshot(path=str(tmp_path / "narrow.png"), full_page=False)
        fits = "() => document.documentElement.scrollWidth <= window.innerWidth"
        assert page.evaluate(fits)
        # The content leads each row, on a line of its own.
        first = page.locator("#memories tr").first
        content = first.locator("td.content").bounding_box()
        assert content is not None and content["width"] > 300
        page.locator("#tab-recurring").click()
        expect(page.locator("#groups tr")).to_have_count(3)
        assert page.evaluate(fits)
        page.screenshot(path=str(tmp_path / "narrow-recurring.png"), full_page=False)
