"""`memcollect mcp` as a real process, driven by the official MCP SDK's own client over stdio
and over streamable HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from memcollect.backends.sqlite import SQLiteBackend

from .conftest import run_cli, wait_for
from .services import free_port

pytest.importorskip("mcp", reason="!!! SKIPPED, NOT TESTED: the mcp extra is not installed")

from mcp import Client, StdioServerParameters

pytestmark = pytest.mark.timeout(120)


def environment(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MEMCOLLECT_")} | extra


def stdio(data: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "memcollect", "mcp", "--data-dir", str(data)],
        env=environment(),
    )


def run(session: Callable[[Client], Awaitable[None]], server: Any) -> None:
    async def main() -> None:
        async with Client(server) as client:
            await session(client)

    asyncio.run(main())


def result(answer: Any) -> Any:
    """A tool's structured answer (a value that is no object comes as {"result": value})."""
    assert not answer.is_error, answer.content
    content = answer.structured_content
    return content["result"] if set(content) == {"result"} else content


def test_the_tools_remember_recall_get_forget_and_say_what_they_do(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def session(client: Client) -> None:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == {"remember", "recall", "get", "recent", "forget", "stats"}
        assert all(tool.description for tool in tools.values())
        remember = tools["remember"].input_schema
        assert set(remember["required"]) == {"category", "content"}
        assert "pattern" in remember["properties"]["category"]
        login = result(await client.call_tool("remember", {
            "category": "bug", "content": "Login fails on Safari after a password reset",
            "tags": ["auth"], "agent": "qa", "metadata": {"build": 142},
        }))  # fmt: skip
        crash_args = {"category": "bug", "content": "Safari crashes at start"}
        crash = result(await client.call_tool("remember", crash_args))
        hits = result(await client.call_tool("recall", {"query": "safari login reset?"}))
        assert [h["id"] for h in hits] == [login, crash]
        assert hits[0]["score"] == 1.0 and hits[0]["found_by"] == "text"
        assert 0 < hits[1]["score"] < 1
        strong = result(await client.call_tool("recall", {"query": "safari login reset?",
                                                          "min_score": 0.5}))  # fmt: skip
        assert [h["id"] for h in strong] == [login]
        assert result(await client.call_tool("get", {"ids": [crash, login]}))[1]["metadata"] == {
            "build": 142
        }
        assert [m["id"] for m in result(await client.call_tool("recent", {"limit": 1}))] == [crash]
        stats = result(await client.call_tool("stats", {}))
        assert stats["stored"] == 2 and stats["health"] in ("ok", "degraded")
        assert result(await client.call_tool("forget", {"ids": [crash]})) == 1
        seen["login"] = login

    run(session, stdio(tmp_path / "d"))
    # The client went away: the server closed its collector, and what it was told is stored.
    store = SQLiteBackend(f"sqlite:///{tmp_path}/d/memories.db")
    assert [m.id for m in store.recent(10)] == [seen["login"]]
    store.close()


def test_a_bad_call_is_a_tool_error_with_memcollects_sentence_and_the_server_goes_on(
    tmp_path: Path,
) -> None:
    async def session(client: Client) -> None:
        empty = await client.call_tool("remember", {"category": "bug", "content": ""})
        assert empty.is_error
        assert "content is empty: pass the text of the memory" in empty.content[0].text
        everything = await client.call_tool("forget", {})
        assert everything.is_error and "never deletes everything" in everything.content[0].text
        wrong = await client.call_tool("recall", {"query": "x", "limit": 0})
        assert wrong.is_error
        # Still serving.
        assert result(await client.call_tool("remember", {"category": "note", "content": "ok"}))

    run(session, stdio(tmp_path / "d"))


def test_resources_give_a_memory_by_id_and_the_newest(tmp_path: Path) -> None:
    async def session(client: Client) -> None:
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["memcollect://memories/{memory_id}"]
        memory_id = result(await client.call_tool("remember", {"category": "decision",
                                                               "content": "Use WAL"}))  # fmt: skip
        one = await client.read_resource(f"memcollect://memories/{memory_id}")
        assert json.loads(one.contents[0].text)["content"] == "Use WAL"
        newest = await client.read_resource("memcollect://recent")
        assert [m["id"] for m in json.loads(newest.contents[0].text)] == [memory_id]

    run(session, stdio(tmp_path / "d"))


def test_over_http_a_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("mcp", "--http", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: cannot listen on 127.0.0.1:{port} (Address already in use): stop what serves "
        "there, or choose another --port"
    )


def test_over_http_a_token_is_required_and_sigterm_stores_and_exits_cleanly(
    tmp_path: Path,
) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    server = subprocess.Popen(
        [sys.executable, "-m", "memcollect", "mcp", "--http", "--port", str(port),
         "--data-dir", str(tmp_path / "d")],
        env=environment(MEMCOLLECT_TOKEN="mcp-secret"),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def answers() -> bool:
            try:
                return httpx2.post(url, json={}).status_code == 401
            except httpx2.TransportError:
                return False

        assert wait_for(answers, 60), "the MCP server did not start"
        ids: list[str] = []

        async def session(client: Client) -> None:
            note = {"category": "note", "content": "over http"}
            ids.append(result(await client.call_tool("remember", note)))
            hits = result(await client.call_tool("recall", {"query": "http"}))
            assert [h["id"] for h in hits] == ids

        async def over_http() -> None:
            headers = {"Authorization": "Bearer mcp-secret"}
            async with (
                httpx2.AsyncClient(headers=headers) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                await session(client)

        asyncio.run(over_http())
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
        assert server.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    store = SQLiteBackend(f"sqlite:///{tmp_path}/d/memories.db")
    assert [m.id for m in store.recent(10)] == ids
    store.close()


def test_serving_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    refused = run_cli("mcp", "--http", "--host", "0.0.0.0", cwd=tmp_path)
    assert refused.returncode != 0
    assert "needs MEMCOLLECT_TOKEN" in refused.stderr and "Traceback" not in refused.stderr
