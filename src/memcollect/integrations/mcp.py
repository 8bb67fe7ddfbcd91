"""An MCP server: agents in MCP clients remember, recall and forget through a collector.

Needs the mcp extra (`pip install 'memcollect[mcp]'`). `memcollect mcp` serves it over stdio
(what desktop clients and editors launch) or, with `--http`, over streamable HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field

try:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
except ImportError as exc:  # pragma: no cover - exercised by users without the extra
    raise ImportError("the MCP server needs the mcp extra: pip install 'memcollect[mcp]'") from exc

from .. import __version__
from ..collector import MemoryCollector
from ..errors import MemcollectError
from ..model import Memory
from ..query import Hit

__all__ = ["build_server", "serve_mcp"]

log = logging.getLogger("memcollect.mcp")

T = TypeVar("T")

INSTRUCTIONS = (
    "Long-term memory for this agent and others. Call `remember` for what is worth knowing "
    "later: bugs, errors, user feedback, decisions, what worked and what did not. Before "
    "starting on a task, call `recall` with a question in plain words to see what is already "
    "known; scores go from 0 to 1, and hits under 0.3 are rarely relevant. `forget` deletes "
    "for good, by ids or filters, never everything."
)

Category = Annotated[
    str,
    Field(
        description="A lowercase slug: bug, error, feedback, performance, architecture, "
        "integration, qa, operation, decision, pattern, project, team, note, or your own",
        pattern=r"^[a-z][a-z0-9_-]{0,63}$",
    ),
]
Priority = Literal["low", "medium", "high", "critical"]
Mode = Literal["text", "semantic", "hybrid"]
Label = Annotated[str | None, Field(description="Only memories with this value")]
Tags = Annotated[list[str] | None, Field(description="Only memories with all of these tags")]
Seconds = Annotated[float | None, Field(description="Epoch seconds")]
Limit = Annotated[int, Field(ge=1, le=1000, description="How many to return at most")]


def _memory(memory: Memory) -> dict[str, Any]:
    return memory.to_dict()


def _hit(hit: Hit) -> dict[str, Any]:
    return {**hit.memory.to_dict(), "score": round(hit.score, 4), "found_by": hit.found_by}


# Before a read, what this server was told is stored first (read-your-writes for agents that
# remember, then recall), waiting this long at most for a slow store.
SETTLE_S = 2.0


def _answer(call: Callable[[], T]) -> T:
    """Run a collector call; memcollect's errors become the tool error the protocol defines,
    with memcollect's one-sentence message, so that nothing crashes the server."""
    try:
        return call()
    except MemcollectError as exc:
        raise ToolError(str(exc)) from None


def build_server(collector: MemoryCollector) -> MCPServer[Any]:
    """An MCP server whose tools and resources read and write `collector`."""
    server: MCPServer[Any] = MCPServer(
        "memcollect", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING"
    )
    _add_writes(server, collector)
    _add_reads(server, collector)
    _add_resources(server, collector)
    return server


def _add_writes(server: MCPServer[Any], collector: MemoryCollector) -> None:
    @server.tool(description="Remember something for later; returns its id at once.")
    def remember(
        *,
        category: Category,
        content: Annotated[str, Field(description="What to remember, in plain words")],
        tags: Annotated[list[str] | None, Field(description="Labels to filter by")] = None,
        project: str | None = None,
        agent: Annotated[str | None, Field(description="Who is remembering")] = None,
        session: Annotated[str | None, Field(description="The conversation or run")] = None,
        metadata: dict[str, Any] | None = None,
        priority: Priority | None = None,
    ) -> str:
        return _answer(
            lambda: collector.collect(
                category,
                content,
                metadata,
                priority=priority,
                tags=tags,
                project=project,
                agent=agent,
                session=session,
            )
        )

    @server.tool(
        description="Delete memories for good, by ids and/or filters (never everything); "
        "returns how many were deleted."
    )
    def forget(
        *,
        ids: list[str] | None = None,
        category: str | None = None,
        tags: Tags = None,
        project: Label = None,
        agent: Label = None,
        session: Label = None,
        since: Seconds = None,
        until: Seconds = None,
    ) -> int:
        return _answer(
            lambda: collector.delete(
                ids,
                category=category,
                tags=tags,
                project=project,
                agent=agent,
                session=session,
                since=since,
                until=until,
            )
        )


def _add_reads(server: MCPServer[Any], collector: MemoryCollector) -> None:
    @server.tool(
        description="Recall memories for a question in plain words, best first, each with "
        "its score (0 to 1) and how it was found (text, meaning, both, session, filters)."
    )
    def recall(
        *,
        query: Annotated[str, Field(description="A question or keywords; empty: newest")] = "",
        category: str | None = None,
        tags: Tags = None,
        project: Label = None,
        agent: Label = None,
        session: Label = None,
        since: Seconds = None,
        until: Seconds = None,
        mode: Mode | None = None,
        limit: Limit = 10,
        min_score: Annotated[float | None, Field(ge=0, le=1)] = None,
    ) -> list[dict[str, Any]]:
        collector.flush(SETTLE_S)
        hits = _answer(
            lambda: collector.search_scored(
                query,
                category=category,
                tags=tags,
                project=project,
                agent=agent,
                session=session,
                since=since,
                until=until,
                mode=mode,
                limit=limit,
                min_score=min_score,
            )
        )
        return [_hit(hit) for hit in hits]

    @server.tool(description="Memories by id (also those still being stored).")
    def get(
        ids: Annotated[list[str], Field(min_length=1, max_length=1000)],
    ) -> list[dict[str, Any]]:
        return [_memory(m) for m in _answer(lambda: collector.get_many(ids))]

    @server.tool(description="The newest memories first.")
    def recent(limit: Limit = 20, category: str | None = None) -> list[dict[str, Any]]:
        collector.flush(SETTLE_S)
        return [_memory(m) for m in _answer(lambda: collector.recent(limit, category))]

    @server.tool(description="What the memory store holds and how it is doing.")
    def stats() -> dict[str, Any]:
        collector.flush(SETTLE_S)
        snapshot = collector.stats()
        health = collector.health()
        return {
            "stored": collector.count(),
            "by_category": collector.count_by_category(),
            "health": health.status,
            "reasons": health.reasons,
            "accepted": snapshot.accepted,
            "queued": snapshot.queue_depth,
            "dead_lettered": snapshot.dead_lettered,
            "dropped": snapshot.dropped,
        }


def _add_resources(server: MCPServer[Any], collector: MemoryCollector) -> None:
    import json

    @server.resource(
        "memcollect://memories/{memory_id}",
        name="memory",
        description="One memory by id, as JSON.",
        mime_type="application/json",
    )
    def memory(memory_id: str) -> str:
        found = _answer(lambda: collector.get(memory_id))
        if found is None:
            raise ResourceNotFoundError(f"no memory with id {memory_id!r}")
        return json.dumps(_memory(found), ensure_ascii=False)

    @server.resource(
        "memcollect://recent",
        name="recent",
        description="The 20 newest memories, as JSON.",
        mime_type="application/json",
    )
    def newest() -> str:
        collector.flush(SETTLE_S)
        return json.dumps([_memory(m) for m in collector.recent(20)], ensure_ascii=False)


def serve_mcp(
    collector: MemoryCollector,
    *,
    http: bool = False,
    host: str = "127.0.0.1",
    port: int = 8766,
    token: str = "",
) -> None:
    """Serve `collector` over MCP until the client goes (stdio) or SIGTERM/SIGINT (HTTP)."""
    server = build_server(collector)
    logging.getLogger("mcp").setLevel(logging.WARNING)  # its INFO lines are per call
    if not http:
        server.run("stdio")
        return
    from ..server.auth import TokenAuth
    from ..server.running import run_until_stopped

    app: Any = server.streamable_http_app(host=host)
    if token:
        app = TokenAuth(app, token)
    run_until_stopped(app, host, port, "warning")
