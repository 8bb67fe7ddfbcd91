"""`memcollect serve` as a real process: remote collectors, auth, and SIGTERM."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import memcollect as mc

from .conftest import run_cli
from .services import free_port, wait_for_http

pytestmark = pytest.mark.slow

TOKEN = "process-token"


class ServerProcess:
    """`python -m memcollect serve` on a free port, with its own data dir and environment."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = f"sqlite:///{tmp_path}/served.db"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MEMCOLLECT_")}
        environ.update(env)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memcollect",
                "serve",
                "--port",
                str(self.port),
                "--backend",
                self.store,
                "--data-dir",
                str(tmp_path / "server-data"),
                "--log-level",
                "warning",
            ],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for_http(f"{self.url}/healthz")

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit code and everything the server printed."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, out


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        server = ServerProcess(tmp_path, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.communicate()  # reaps it and closes its pipe


def test_sigterm_stores_what_was_accepted_then_exits_0(
    serve: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # RAM only and batches that never close by themselves: only the shutdown flush stores.
    server = serve(
        MEMCOLLECT_DURABILITY="memory",
        MEMCOLLECT_BATCH_SIZE="100000",
        MEMCOLLECT_BATCH_TIMEOUT="60",
    )
    ids: list[str] = []
    with httpx.Client(base_url=server.url) as client:
        for chunk in range(5):
            items = [{"category": "note", "content": f"term {chunk}-{i}"} for i in range(200)]
            response = client.post("/v1/memories", json=items)
            assert response.status_code == 202
            ids += response.json()["ids"]
        assert client.get("/v1/counts").json()["total"] == 0  # nothing stored yet
    code, output = server.stop()
    assert code == 0, output
    assert "Traceback" not in output
    with mc.MemoryCollector(server.store, data_dir=str(tmp_path / "reader")) as reader:
        assert reader.count() == 1000
        assert all(reader.get(i) is not None for i in ids[::97])


def test_a_remote_collector_stores_through_the_server(
    serve: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = serve(MEMCOLLECT_TOKEN=TOKEN)
    remote = f"http://:{TOKEN}@127.0.0.1:{server.port}"
    with mc.MemoryCollector(remote, data_dir=str(tmp_path / "client"), batch_size=500) as c:
        ids = [
            c.collect("bug", f"remote bug {i} in checkout", tags=["remote"]) for i in range(3000)
        ]
        assert c.flush(30)
        assert c.count() == 3000
        assert c.stats().stored == 3000
        assert (
            c.get(ids[1234]) is not None
            and c.get(ids[1234]).content == "remote bug 1234 in checkout"
        )  # type: ignore[union-attr]
        hits = c.search("checkout", tags=["remote"], limit=5)
        assert len(hits) == 5 and all("checkout" in h.content for h in hits)
        assert c.health().status == "ok"
        # Deleting through the server: by id, then by filters over more than one page.
        assert c.delete(ids[0]) == 1 and c.get(ids[0]) is None
        c.collect("note", "kept")
        assert c.delete(tags=["remote"]) == 2999
        assert c.count() == 1 and c.search("checkout") == []
    code, output = server.stop()
    assert code == 0, output


def test_a_wrong_token_is_retried_not_dropped(
    serve: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = serve(MEMCOLLECT_TOKEN=TOKEN)
    data_dir = str(tmp_path / "client")
    wrong = f"http://:not-the-token@127.0.0.1:{server.port}"
    c = mc.MemoryCollector(wrong, data_dir=data_dir, max_retries=2, retry_max=0.05)
    ids = [c.collect("error", f"kept {i}") for i in range(50)]
    assert not c.flush(1.0)
    health = c.health()
    assert health.status == "failing"
    assert "MEMCOLLECT_TOKEN" in " ".join(health.reasons)
    assert c.stats().dead_lettered == 0
    c.close(timeout=0.5)  # the spool keeps them
    right = f"http://:{TOKEN}@127.0.0.1:{server.port}"
    with mc.MemoryCollector(right, data_dir=data_dir) as again:
        assert again.flush(30)
        assert again.count() == 50
        assert all(again.get(i) is not None for i in ids)


def test_cli_commands_against_a_server(serve: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = serve()
    env = {"MEMCOLLECT_BACKEND": server.url, "MEMCOLLECT_DATA_DIR": str(tmp_path / "cli")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, cwd=tmp_path, **env)

    added = run("add", "bug", "Checkout button dead on Firefox", "--tag", "ui")
    assert added.returncode == 0, added.stderr
    memory_id = added.stdout.strip()
    found = run("search", "firefox checkout", "--json")
    assert found.returncode == 0, found.stderr
    assert [json.loads(line)["id"] for line in found.stdout.splitlines()] == [memory_id]
    stats = run("stats", "--json")
    body = json.loads(stats.stdout)
    assert body["total"] == 1 and body["server"]["stats"]["stored"] == 1
    missing = run("get", "01nosuchid0000000000000000")
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("Error: no memory with id")
    assert "Traceback" not in missing.stderr


def test_the_server_refuses_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMCOLLECT_")}
    env["MEMCOLLECT_BATCH_SIZE"] = "lots"
    result = subprocess.run(
        [sys.executable, "-m", "memcollect", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "MEMCOLLECT_BATCH_SIZE" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _serve_fails(tmp_path: Path, *args: str) -> str:
    """`memcollect serve` with these arguments: it must exit 1 with one line; that line."""
    result = run_cli("serve", *args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_store_the_server_cannot_open_is_one_line_not_a_startup_traceback(
    tmp_path: Path,
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database, " * 64)
    said = _serve_fails(tmp_path, "--port", str(free_port()), "--backend", f"sqlite:///{junk}")
    assert said.startswith(f"Error: the SQLite store {junk} cannot be opened: it is not a SQLite")


def test_a_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        said = _serve_fails(tmp_path, "--port", str(port))
    assert said == (
        f"Error: cannot listen on 127.0.0.1:{port} (Address already in use): stop what serves "
        "there, or choose another --port"
    )


class _NotMemcollect(http.server.BaseHTTPRequestHandler):
    """Some other web server: 200 and a page for every request."""

    def log_message(self, *args: object) -> None:
        pass

    def _page(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _page


def test_a_url_that_is_not_a_memcollect_server_keeps_the_memories(tmp_path: Path) -> None:
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotMemcollect)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{other.server_address[1]}"
        c = mc.MemoryCollector(url, data_dir=str(tmp_path), max_retries=2, retry_max=0.05)
        c.collect("error", "must not vanish")
        assert not c.flush(1.0)  # a 200 that is not a memcollect answer stores nothing
        stats = c.stats()
        assert stats.stored == 0 and stats.dead_lettered == 0
        assert c.health().status == "failing"
        with pytest.raises(mc.BackendError, match="did not answer as a memcollect server"):
            c.search("vanish")
        c.close(timeout=0.5)  # the spool keeps it for the right URL
    finally:
        other.shutdown()
        other.server_close()


def test_a_client_that_leaves_mid_body_costs_no_traceback(
    serve: Callable[..., ServerProcess],
) -> None:
    import socket

    server = serve(MEMCOLLECT_TOKEN="")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/memories HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n" + b'[{"category": "note", "content": "'
        )
        # The server has started reading the body when it answers nothing yet; then leave.
        sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            sock.recv(1)
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    code, out = server.stop()
    assert code == 0
    assert "Traceback" not in out and "ClientDisconnect" not in out, out
