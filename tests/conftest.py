"""Shared fixtures: every collector a test makes is closed, in a data dir of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import memcollect as mc
from memcollect.testing import FaultyBackend

from .services import drop_schema, require_postgres, sqlite_server, wait_for

__all__ = ["ROOT", "run_cli", "wait_for"]

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`memcollect ...` as a real process, with no MEMCOLLECT_* of the developer's but `env`,
    bounded so that a hang fails the test."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEMCOLLECT_")} | env
    return subprocess.run(
        [sys.executable, "-m", "memcollect", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class CountingReads(FaultyBackend):
    """Counts the store's reads by id."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, int]] = []

    def get(self, memory_id: str) -> mc.Memory | None:
        self.reads.append(("get", 1))
        return super().get(memory_id)

    def get_many(self, ids: Sequence[str]) -> list[mc.Memory]:
        self.reads.append(("get_many", len(ids)))
        return self.inner.get_many(ids)


@pytest.fixture(scope="session")
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export of the embedding model per test run, never the developer's cache: the
    workers of a parallel run share it (its entries are made once, under a lock)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return tmp_path_factory.mktemp("model-cache")
    # A worker's base directory is the run's own, one per worker: its parent is the run's.
    shared = tmp_path_factory.getbasetemp().parent / "model-cache"
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _model_cache: Path) -> None:
    """No MEMCOLLECT_* from the developer's shell, no config file from the repo."""
    for key in list(os.environ):
        if key.startswith("MEMCOLLECT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MEMCOLLECT_CACHE_DIR", str(_model_cache))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def make_collector(tmp_path: Path) -> Iterator[Callable[..., mc.MemoryCollector]]:
    """Build collectors (defaults: memory durability, SQLite in tmp_path); all closed after."""
    made: list[mc.MemoryCollector] = []

    def make(target: Any = None, **fields: Any) -> mc.MemoryCollector:
        fields.setdefault("data_dir", str(tmp_path / "data"))
        fields.setdefault("durability", "memory")
        fields.setdefault("batch_timeout", 0.005)
        fields.setdefault("retry_base", 0.001)
        fields.setdefault("retry_max", 0.01)
        collector = mc.MemoryCollector(target, **fields)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close(timeout=5)


@pytest.fixture(params=["memory", "sqlite", "postgresql", "remote"])
def store_url(  # every kind of store: in memory, SQLite, PostgreSQL, a server
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
    elif request.param == "remote":
        # A memcollect server over real HTTP, storing in SQLite: its groups, asked remotely.
        with sqlite_server(tmp_path) as server:
            yield server.url
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/groups.db"
    else:
        schema = f"groups_{uuid.uuid4().hex[:10]}"
        yield f"{require_postgres()}?schema={schema}"
        drop_schema(schema)
