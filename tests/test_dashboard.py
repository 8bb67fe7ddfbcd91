"""The dashboard in a real headless Chromium: counters move, search finds, nothing external."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from .services import ThreadedServer, require_chromium

pytestmark = pytest.mark.slow

TOKEN = "dashboard-token"


@contextmanager
def dashboard(backend: str, data_dir: Path) -> Iterator[tuple[ThreadedServer, Any]]:
    """A server on `backend` and a Chromium page logged in to it (not yet opened)."""
    chromium = require_chromium()
    from playwright.sync_api import sync_playwright

    with (
        ThreadedServer(
            backend=backend, data_dir=str(data_dir), batch_timeout=0.002, token=TOKEN
        ) as server,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=chromium)
        context = browser.new_context(
            http_credentials={"username": "me", "password": TOKEN},
            viewport={"width": 1280, "height": 900},
        )
        yield server, context.new_page()
        browser.close()


def post(server: ThreadedServer, items: list[dict[str, str]]) -> None:
    response = httpx.post(
        server.url + "/v1/memories", json=items, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 202


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
