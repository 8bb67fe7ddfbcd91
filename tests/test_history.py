"""The server's own history of its counters, and the access log that polling stays out of."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import httpx
import msgspec
import pytest

import memcollect as mc
from memcollect.server.history import History, Sampler

from .services import wait_for

pytest.importorskip("fastapi")


@pytest.fixture
def stats(make_collector) -> mc.Stats:  # type: ignore[no-untyped-def]
    collector: mc.MemoryCollector = make_collector("memory://")
    found: mc.Stats = collector.stats()
    return found


def test_history_keeps_the_last_hours_and_answers_a_window(stats: mc.Stats) -> None:
    history = History(interval=10.0, keep=100.0)
    for i in range(30):
        history.record(msgspec.structs.replace(stats, stored=i, queue_depth=i % 3), 1000.0 + 10 * i)
    body = history.body(3600, now=1290.0)
    # Only `keep` seconds are kept (11 samples of 10 s), oldest first.
    assert [s.stored for s in body.samples] == list(range(19, 30))
    assert body.interval == 10.0
    assert [s.stored for s in history.body(25, now=1290.0).samples] == [27, 28, 29]
    assert body.samples[-1].waiting == 29 % 3


def test_the_sampler_samples_at_start_and_survives_a_failing_read(stats: mc.Stats) -> None:
    history = History(interval=3600.0)  # the thread will not sample again during the test
    now = [500.0]
    calls = [0]

    def read() -> mc.Stats:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("the store went away")
        return stats

    sampler = Sampler(history, read, clock=lambda: now[0])
    sampler.start()
    try:
        assert [s.t for s in history.body(60, 500.0).samples] == [500.0]
        now[0] = 505.0
        sampler.sample()  # fails: no sample, no exception
        sampler.sample()
        assert [s.t for s in history.body(60, 505.0).samples] == [500.0, 505.0]
    finally:
        sampler.stop()


def test_polling_stays_out_of_the_access_log(tmp_path: Path) -> None:
    import uvicorn

    from memcollect.server import create_app
    from memcollect.server.running import server_config

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    app = create_app(token="secret", backend=f"sqlite:///{tmp_path}/a.db",
                     data_dir=str(tmp_path / "d"))  # fmt: skip
    server = uvicorn.Server(server_config(app, "127.0.0.1", 0, "info"))
    keep = Keep()
    access = logging.getLogger("uvicorn.access")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30)
        access.addHandler(keep)  # uvicorn configured its loggers on start: ours comes after
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        auth = {"Authorization": "Bearer secret"}
        for _ in range(3):
            for path in ("/v1/stats", "/v1/history?seconds=60", "/v1/counts"):
                assert httpx.get(url + path, headers=auth).status_code == 200
        posted = httpx.post(url + "/v1/memories", json={"category": "bug", "content": "x"},
                            headers=auth)  # fmt: skip
        assert posted.status_code == 202
        assert httpx.get(url + "/v1/stats").status_code == 401  # a failure is worth a line
        wait_for(lambda: len(lines) >= 2, 10)
    finally:
        server.should_exit = True
        thread.join(30)
        access.removeHandler(keep)
    assert any('"POST /v1/memories' in line for line in lines), lines
    assert any('"GET /v1/stats' in line and "401" in line for line in lines), lines
    polled = [line for line in lines if " 200" in line and "GET /v1/" in line]
    assert polled == [], polled
