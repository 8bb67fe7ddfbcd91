"""Servers some tests need: found, or skipped loudly (and failed under CI=true)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> bool:
    """Poll until `condition` holds or `seconds` pass (a bound on a wait, not a measurement)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


POSTGRES_URL = os.environ.get(
    "MEMCOLLECT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def require_postgres() -> str:
    """The test server's URL, or skip (fail in CI) when it does not answer."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        message = (
            f"PostgreSQL at {POSTGRES_URL} is unreachable ({type(exc).__name__}: {exc}); "
            "start it (see .ci/run) or set MEMCOLLECT_TEST_POSTGRES_URL"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip("!!! SKIPPED, NOT TESTED: " + message)
    return POSTGRES_URL


def drop_schema(schema: str) -> None:
    """Remove a test's schema and everything in it."""
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class TcpProxy:
    """A loopback TCP proxy to a server: stop() is an outage (refused, and open connections
    cut), start() on the same port is the recovery. For tests only; bounded to this machine."""

    def __init__(self, target_host: str, target_port: int) -> None:
        import socket
        import threading

        self.target = (target_host, target_port)
        self.port = 0
        self._socket_mod = socket
        self._threading = threading
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        # Bumped by stop(): a connection accepted by an earlier listener must not survive it.
        self._generation = 0
        # Set by stall(): connections stay open, and nothing is forwarded either way (a
        # network partition, or a middlebox that hangs).
        self.stalled = threading.Event()

    def start(self) -> None:
        """Listen (on the same port as before, after a stop)."""
        socket = self._socket_mod
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._threading.Thread(
            target=self._accept, args=(listener, self._generation), daemon=True
        ).start()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            self._generation += 1
            conns, self._conns = self._conns, []
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(self._socket_mod.SHUT_RDWR)
            conn.close()

    def stall(self) -> None:
        """Keep every connection open, and forward nothing: the server never answers."""
        self.stalled.set()

    def unstall(self) -> None:
        """Forward again (what was sent meanwhile is lost, as in a partition)."""
        self.stalled.clear()

    def _accept(self, listener: object, generation: int) -> None:
        socket = self._socket_mod
        while True:
            try:
                client, _ = listener.accept()  # type: ignore[attr-defined]
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if generation != self._generation:  # stopped meanwhile: this one too
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                self._threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: object, sink: object) -> None:
        try:
            while data := source.recv(65536):  # type: ignore[attr-defined]
                if not self.stalled.is_set():
                    sink.sendall(data)  # type: ignore[attr-defined]
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()  # type: ignore[attr-defined]


class ThreadedServer:
    """A memcollect server (real uvicorn, real sockets) on a free loopback port, in a thread."""

    def __init__(self, **create_args: object) -> None:
        import threading

        import uvicorn

        from memcollect.server import create_app

        self.app = create_app(**create_args)  # type: ignore[arg-type]
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 20)
        if not self.server.started:
            raise RuntimeError("the test server did not start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def sqlite_server(tmp_path: Path, token: str = "") -> ThreadedServer:
    """A memcollect server over real HTTP, storing in a SQLite file of the test's own."""
    return ThreadedServer(
        backend=f"sqlite:///{tmp_path}/served.db",
        data_dir=str(tmp_path / "server"),
        batch_timeout=0.002,
        token=token,
    )


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, timeout: float = 30.0) -> None:
    """Return once `url` answers at all; raise if it does not in time."""
    import httpx

    def answers() -> bool:
        try:
            httpx.get(url, timeout=1)
        except httpx.TransportError:
            return False
        return True

    if not wait_for(answers, timeout):
        httpx.get(url, timeout=1)  # raises what the last try met


CHROMIUM = os.environ.get("MEMCOLLECT_TEST_CHROMIUM", "/usr/bin/chromium")


def require_chromium() -> str:
    """The path of a headless-capable Chromium and Playwright, or skip (fail in CI)."""
    problem = None
    if not os.path.exists(CHROMIUM):
        problem = f"Chromium is not at {CHROMIUM} (apt-get install chromium; see .ci/run)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is missing: make test installs it"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip("!!! SKIPPED, NOT TESTED: " + problem)
    return CHROMIUM
