"""One fixture per backend; the conformance suite runs on each. New backends add a param."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from memcollect.backends import open_backend
from memcollect.backends.base import Backend

from ..services import drop_schema, require_postgres, sqlite_server

BACKENDS = ["memory", "sqlite", "sqlite-nofts", "postgresql", "remote", "mem0"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """An opened, empty backend of each kind."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    if request.param == "remote":
        # A memcollect server over real HTTP, storing in SQLite.
        with sqlite_server(tmp_path, token="conformance-token") as server:
            host = server.url.removeprefix("http://")
            store = open_backend(f"http://:conformance-token@{host}?timeout=10&gzip=1")
            store.open()
            yield store
            store.close()
        return
    if request.param == "mem0":
        from importlib.util import find_spec

        if find_spec("mem0") is None:
            message = "mem0ai is not installed: make test installs it"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip("!!! SKIPPED, NOT TESTED: " + message)
    if request.param == "postgresql":
        url = f"{require_postgres()}?schema={schema}"
    else:
        url = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{tmp_path}/conformance.db",
            "sqlite-nofts": f"sqlite:///{tmp_path}/nofts.db?fts=0",
            "mem0": f"mem0:///{tmp_path}/mem0",
        }[request.param]
    store = open_backend(url)
    store.open()
    yield store
    store.close()
    if request.param == "postgresql":
        drop_schema(schema)
