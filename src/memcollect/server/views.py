"""What people look at: the dashboard page, the server's own history of its counters, a
memory's group, and reports."""

from __future__ import annotations

import time
from functools import cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response

from ..groups import fingerprint
from .answers import error_response, json_response
from .history import HISTORY_KEEP_S, HistoryBody
from .http import (
    CategoryParam,
    LabelParam,
    ReportFormat,
    ReportLimit,
    Since,
    Until,
    responses,
    schema,
)
from .routes import Server

__all__ = ["views"]

views = APIRouter()


@cache
def _dashboard_html() -> bytes:
    return resources.files(__package__).joinpath("dashboard.html").read_bytes()


@views.get(
    "/v1/history",
    summary="The server's counters sampled over the last hours, oldest first, and now",
    response_model=None,
    responses=responses(_200=schema("HistoryBody", "Samples: [t, accepted, stored, ...].")),
)
def history(
    server: Server,
    seconds: Annotated[
        float, Query(gt=0, le=HISTORY_KEEP_S, description="How far back, in seconds.")
    ] = 3600.0,
) -> Response:
    now = time.time()
    body = server.history.body(seconds, now)
    # The newest point is now, so a chart ends at the present whenever it was sampled.
    live = server.history.sample_of(server.collector().stats(), now)
    return json_response(HistoryBody(body.interval, [*body.samples, live]))


@views.get(
    "/v1/memories/{memory_id}/group",
    summary="The group of one memory: its count, first and last seen, newest members, days",
    response_model=None,
    responses=responses(
        _200=schema("GroupDetail", "The memory's group."),
        _404=schema("ErrorBody", "No stored memory has this id."),
    ),
)
def memory_group(server: Server, memory_id: str, limit: ReportLimit = 10) -> Response:
    collector = server.collector()
    memory = collector.get(memory_id)
    found = collector.group(fingerprint(memory), limit=limit) if memory is not None else None
    if found is None:  # not stored, or not yet
        return error_response(404, f"no stored memory with id {memory_id!r}")
    return json_response(found)


_REPORT_BODIES = schema("Report", "The report: JSON, or with ?format=md or html, a page.")
_REPORT_BODIES["content"] |= {
    "text/markdown": {"schema": {"type": "string"}},
    "text/html": {"schema": {"type": "string"}},
}


@views.get(
    "/v1/report",
    summary="A period in review: top recurring, new, rising, breakdowns, dead letters, health",
    response_model=None,
    responses=responses(_200=_REPORT_BODIES),
)
def report(
    server: Server,
    *,
    since: Since = "7d",
    until: Until = None,
    category: CategoryParam = None,
    project: LabelParam = None,
    agent: LabelParam = None,
    limit: ReportLimit = 10,
    format: ReportFormat = "json",
) -> Response:
    found = server.collector().report(
        since=since, until=until, category=category, project=project, agent=agent, limit=limit
    )
    if format == "md":
        return Response(found.to_markdown(), media_type="text/markdown; charset=utf-8")
    if format == "html":
        # The page has no script and loads nothing: say so, so that a browser holds it to it.
        policy = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
        return HTMLResponse(found.to_html(), headers={"Content-Security-Policy": policy})
    return json_response(found)


@views.get(
    "/",
    summary="The live dashboard",
    response_model=None,
    responses=responses(_200={"description": "HTML.", "content": {"text/html": {}}}),
)
async def dashboard(server: Server) -> Response:
    return Response(
        _dashboard_html(),
        media_type="text/html; charset=utf-8",
        headers={
            # Nothing outside this server may be fetched or framed.
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )
