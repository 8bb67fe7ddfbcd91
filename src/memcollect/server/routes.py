"""The HTTP API's routes, over the collector of the app that serves them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from ..collector import MemoryCollector
from ..errors import QueueFullError, ValidationError
from ..model import Memory
from ..validate import memory_from_record
from ..wire import (
    Counts,
    DeadLetterIn,
    DeleteRequest,
    DeleteResult,
    IngestResult,
    LookupRequest,
    MemoryIn,
    Rejection,
    RemoveIds,
    RetryResult,
    StatsBody,
    dead_letter_from_in,
    memory_from_in,
)
from .history import History
from .http import (
    BodyTooLarge,
    CategoryParam,
    Collapse,
    GroupOrder,
    LabelParam,
    ListLimit,
    MinScore,
    Mode,
    Since,
    Sync,
    Tags,
    Until,
    body,
    error_response,
    json_response,
    read_body,
    responses,
    schema,
)
from .metrics import metrics_text

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_MAX_BODY_BYTES", "ServerState", "router"]

log = logging.getLogger("memcollect.server")

DEFAULT_MAX_BODY_BYTES = 8 << 20
DEFAULT_MAX_BATCH = 5_000
_decoder = msgspec.json.Decoder()
_records_decoder = msgspec.json.Decoder(list[MemoryIn] | MemoryIn)
_dead_letters_decoder = msgspec.json.Decoder(list[DeadLetterIn])
_remove_decoder = msgspec.json.Decoder(RemoveIds)
_delete_decoder = msgspec.json.Decoder(DeleteRequest)
_lookup_decoder = msgspec.json.Decoder(LookupRequest)


class ServerState:
    """What the routes of one app share: its collector, its limits, its history."""

    def __init__(
        self,
        collector: Callable[[], MemoryCollector],
        registry: CollectorRegistry,
        max_body_bytes: int,
        max_batch: int,
        history: History,
    ) -> None:
        self.collector = collector
        self.registry = registry
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        self.history = history


async def _state(request: Request) -> ServerState:
    # async: a plain function would cost every request a trip through the thread pool.
    state: ServerState = request.app.state.memcollect
    return state


Server = Annotated[ServerState, Depends(_state)]

router = APIRouter()


def _decode_memories(
    body: bytes, max_batch: int, max_bytes: int
) -> tuple[int, list[Memory], list[Rejection]] | Response:
    """The memories of an ingest body and the items rejected (with why), or the error
    answer for a body that holds none; and how many items it held."""
    items: list[Any]
    try:
        # The common case: well-formed records, typed and checked by msgspec in C.
        records = _records_decoder.decode(body)
        items = records if isinstance(records, list) else [records]
        typed = True
    except msgspec.ValidationError:
        # Something is off: go item by item, to name each bad one and keep the rest.
        items = _decoder.decode(body)
        items = items if isinstance(items, list) else [items]
        typed = False
    except msgspec.DecodeError as exc:
        return error_response(400, f"the body is not valid JSON ({exc}): send a memory or a list")
    if len(items) > max_batch:
        return error_response(
            422,
            f"{len(items)} memories in one request is over the limit of {max_batch}: "
            "send smaller batches",
        )
    if not items:
        return error_response(422, "the request holds no memories: send a memory or a list")
    build = memory_from_in if typed else memory_from_record
    memories: list[Memory] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(items):
        try:
            memories.append(build(item, max_bytes))
        except ValidationError as exc:
            rejected.append(Rejection(index, str(exc)))
    return len(items), memories, rejected


@router.post(
    "/v1/memories",
    status_code=202,
    summary="Collect one memory or a list of them",
    response_model=None,
    responses=responses(
        _202=schema("IngestResult", "Accepted: the ids, in request order."),
        _400=schema("ErrorBody", "The body is not JSON."),
        _413=schema("ErrorBody", "The body is over the server's limit."),
        _422={
            "description": "Some memories were invalid (the others were accepted), "
            "or a parameter was.",
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/IngestResult"},
                            {"$ref": "#/components/schemas/ErrorBody"},
                        ]
                    }
                }
            },
        },
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/MemoryIn"},
                            {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/MemoryIn"},
                                "minItems": 1,
                                "maxItems": DEFAULT_MAX_BATCH,
                            },
                        ]
                    }
                }
            },
        }
    },
)
async def post_memories(
    server: Server,
    request: Request,
    sync: Sync = False,
) -> Response:
    collector = server.collector()
    try:
        body = await read_body(request, server.max_body_bytes)
    except BodyTooLarge:
        return error_response(
            413,
            f"the body is over the limit of {server.max_body_bytes} bytes: send smaller batches",
        )
    decoded = _decode_memories(body, server.max_batch, collector.config.max_content_bytes)
    if isinstance(decoded, Response):
        return decoded
    items, memories, rejected = decoded
    stored = False
    if sync and memories:
        # The client keeps its copy until we answer: store now, skip the queue and spool.
        try:
            await run_in_threadpool(collector.store_now, memories)
        except Exception as exc:  # noqa: BLE001 - classified for the client's retry logic
            if collector.backend.classify(exc) == "permanent":
                return error_response(422, f"the store refused the batch: {exc}")
            log.warning("sync write failed: %s", exc)
            return error_response(503, f"the store is unavailable: {exc}", {"Retry-After": "1"})
        ids, stored = [m.id for m in memories], True
    else:
        try:
            ids = collector.collect_checked(memories)
        except QueueFullError as exc:
            return error_response(503, str(exc), {"Retry-After": "1"})
    if rejected:
        error = (
            f"{len(rejected)} of {items} memories were rejected "
            f"(first: item {rejected[0].index}: {rejected[0].error}); "
            f"the other {len(memories)} were accepted"
        )
        return json_response(IngestResult(ids, len(ids), rejected, stored, error), 422)
    return json_response(IngestResult(ids, len(ids), [], stored), 202)


@router.get(
    "/v1/memories/{memory_id}",
    summary="One memory by id (also while it is still queued)",
    response_model=None,
    responses=responses(
        _200=schema("Memory", "The memory."),
        _404=schema("ErrorBody", "No memory has this id."),
    ),
)
def get_memory(server: Server, memory_id: str) -> Response:
    memory = server.collector().get(memory_id)
    if memory is None:
        return error_response(404, f"no memory with id {memory_id!r}")
    return json_response(memory)


@router.post(
    "/v1/lookup",
    summary="Memories by id, many at once (also those still queued)",
    response_model=None,
    responses=responses(
        _200=schema("Memory", "In the order asked; unknown ids left out.", array=True)
    ),
    openapi_extra={"requestBody": body("LookupRequest", "At most 1000 ids.")},
)
async def lookup(server: Server, request: Request) -> Response:
    asked = _lookup_decoder.decode(await read_body(request, server.max_body_bytes))
    collector = server.collector()
    found = await run_in_threadpool(collector.get_many, asked.ids)
    return json_response(found)


@router.get(
    "/v1/memories",
    summary="The newest stored memories",
    response_model=None,
    responses=responses(_200=schema("Memory", "Newest first.", array=True)),
)
def recent(server: Server, category: CategoryParam = None, limit: ListLimit = 20) -> Response:
    return json_response(server.collector().recent(limit, category))


class SearchArgs:
    """The query and filters of a search request."""

    def __init__(
        self,
        *,
        q: str = "",
        category: CategoryParam = None,
        tags: Tags = None,
        project: LabelParam = None,
        agent: LabelParam = None,
        session: LabelParam = None,
        since: Since = None,
        until: Until = None,
        limit: ListLimit = 10,
        mode: Mode = None,
        min_score: MinScore = None,
        collapse: Collapse = False,
    ) -> None:
        self.query = q
        self.options: dict[str, Any] = {
            "category": category, "tags": tags, "project": project, "agent": agent,
            "session": session, "since": since, "until": until, "limit": limit, "mode": mode,
            "min_score": min_score, "collapse": collapse,
        }  # fmt: skip


Search = Annotated[SearchArgs, Depends()]


@router.get(
    "/v1/search",
    summary="Search by words, meaning or both, with filters; best first",
    response_model=None,
    responses=responses(_200=schema("Memory", "Best match first.", array=True)),
)
def search(server: Server, args: Search) -> Response:
    return json_response(server.collector().search(args.query, **args.options))


@router.get(
    "/v1/search/scored",
    summary="The same search, each hit with its score (0 to 1) and how it was found",
    response_model=None,
    responses=responses(_200=schema("Hit", "Best match first.", array=True)),
)
def search_scored(server: Server, args: Search) -> Response:
    return json_response(server.collector().search_scored(args.query, **args.options))


@router.get(
    "/v1/export",
    summary="Every stored memory in id (time) order, a page at a time",
    response_model=None,
    responses=responses(
        _200=schema("Memory", "Up to `limit`; ask again with after=<last id>.", array=True)
    ),
)
def export(server: Server, after: str | None = None, limit: ListLimit = 1000) -> Response:
    return json_response(server.collector().backend.scan(after, limit))


@router.get(
    "/v1/groups",
    summary="Stored memories grouped by fingerprint: what keeps happening",
    response_model=None,
    responses=responses(_200=schema("Group", "By the order asked.", array=True)),
)
def groups(
    server: Server,
    *,
    category: CategoryParam = None,
    project: LabelParam = None,
    agent: LabelParam = None,
    since: Since = None,
    until: Until = None,
    order: GroupOrder = "count",
    limit: ListLimit = 20,
) -> Response:
    return json_response(
        server.collector().groups(
            category=category,
            project=project,
            agent=agent,
            since=since,
            until=until,
            order=order,
            limit=limit,
        )
    )


@router.get(
    "/v1/groups/{fingerprint}",
    summary="One group: its newest members, a page at a time, and its memories per day",
    response_model=None,
    responses=responses(
        _200=schema("GroupDetail", "The group."),
        _404=schema("ErrorBody", "No stored memory has this fingerprint."),
    ),
)
def group(
    server: Server, fingerprint: str, limit: ListLimit = 20, before: str | None = None
) -> Response:
    found = server.collector().group(fingerprint, limit=limit, before=before)
    if found is None:
        return error_response(404, f"no stored memory has the fingerprint {fingerprint!r}")
    return json_response(found)


@router.get(
    "/v1/counts",
    summary="How many memories are stored, in all and per category",
    response_model=None,
    responses=responses(_200=schema("Counts", "Counts.")),
)
def counts(server: Server) -> Response:
    by_category = server.collector().count_by_category()
    return json_response(Counts(sum(by_category.values()), by_category))


@router.get(
    "/v1/stats",
    summary="The collector's counters and health",
    response_model=None,
    responses=responses(_200=schema("StatsBody", "Stats and health.")),
)
def stats(server: Server) -> Response:
    collector = server.collector()
    modes = ["hybrid", "text", "semantic"] if collector.backend.supports_semantic else ["text"]
    return json_response(StatsBody(collector.stats(), collector.health(), modes))


@router.get(
    "/v1/dead-letters",
    summary="Memories the store refused for good, oldest first",
    response_model=None,
    responses=responses(_200=schema("DeadLetter", "Dead letters.", array=True)),
)
def dead_letters(server: Server, limit: ListLimit = 100) -> Response:
    return json_response(server.collector().dead_letters(limit))


@router.post(
    "/v1/dead-letters",
    summary="Keep dead letters (a remote collector's refused records)",
    status_code=204,
    response_model=None,
    responses=responses(_204={"description": "Kept."}),
    openapi_extra={"requestBody": body("DeadLetterIn", "Dead letters.", array=True)},
)
async def add_dead_letters(server: Server, request: Request) -> Response:
    collector = server.collector()
    received = _dead_letters_decoder.decode(await read_body(request, server.max_body_bytes))
    max_bytes = collector.config.max_content_bytes
    letters = []
    for index, letter in enumerate(received):
        try:
            # A dead letter may be queued again as a memory: it must be a valid one.
            letters.append(dead_letter_from_in(letter, max_bytes))
        except ValidationError as exc:
            raise ValidationError(f"dead letter {index}: {exc}") from None
    await run_in_threadpool(collector.backend.add_dead_letters, letters)
    return Response(status_code=204)


@router.post(
    "/v1/dead-letters/remove",
    summary="Forget dead letters by id",
    status_code=204,
    response_model=None,
    responses=responses(_204={"description": "Forgotten."}),
    openapi_extra={"requestBody": body("RemoveIds", "Ids.")},
)
async def remove_dead_letters(server: Server, request: Request) -> Response:
    remove = _remove_decoder.decode(await read_body(request, server.max_body_bytes))
    await run_in_threadpool(server.collector().backend.remove_dead_letters, remove.ids)
    return Response(status_code=204)


@router.post(
    "/v1/delete",
    summary="Delete memories for good, by ids, by filters, or both",
    response_model=None,
    responses=responses(_200=schema("DeleteResult", "How many were deleted.")),
    openapi_extra={"requestBody": body("DeleteRequest", "Ids and/or filters.")},
)
async def delete_memories(server: Server, request: Request) -> Response:
    asked = _delete_decoder.decode(await read_body(request, server.max_body_bytes))
    deleted = await run_in_threadpool(lambda: server.collector().delete(**asked.arguments()))
    return json_response(DeleteResult(deleted))


@router.post(
    "/v1/dead-letters/retry",
    summary="Queue every dead letter again",
    response_model=None,
    responses=responses(_200=schema("RetryResult", "How many were queued.")),
)
def retry_dead_letters(server: Server) -> Response:
    return json_response(RetryResult(server.collector().retry_dead_letters()))


@router.get(
    "/healthz",
    summary="Liveness: the process answers (no token needed)",
    response_model=None,
    responses={
        200: {
            "description": "Alive.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"status": {"const": "alive"}},
                        "required": ["status"],
                    }
                }
            },
        }
    },
)
async def healthz(server: Server) -> Response:
    return json_response({"status": "alive"})


@router.get(
    "/readyz",
    summary="Readiness: the collector is storing what it accepts",
    response_model=None,
    responses=responses(
        _200=schema("Health", "Ready (ok or degraded)."),
        _503=schema("Health", "Not ready (failing), with the reasons."),
    ),
)
def readyz(server: Server) -> Response:
    health = server.collector().health()
    return json_response(health, 503 if health.status == "failing" else 200)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_model=None,
    responses=responses(
        _200={"description": "Text exposition format.", "content": {"text/plain": {}}}
    ),
)
def metrics(server: Server) -> Response:
    body, content_type = metrics_text(server.registry)
    return Response(body, media_type=content_type)
