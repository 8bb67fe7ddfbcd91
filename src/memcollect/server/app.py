"""The HTTP API: a MemoryCollector behind FastAPI, with auth, limits, metrics and a dashboard."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from typing import Annotated, Any, Literal

import msgspec
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from ..collector import MemoryCollector
from ..errors import BackendError, MemcollectError, QueueFullError, ValidationError
from ..model import Memory
from ..validate import memory_from_record
from ..wire import (
    CATEGORY_PATTERN,
    NO_NUL,
    Counts,
    DeadLetterIn,
    DeleteRequest,
    DeleteResult,
    ErrorBody,
    IngestResult,
    LookupRequest,
    MemoryIn,
    Rejection,
    RemoveIds,
    RetryResult,
    StatsBody,
    component_schemas,
    dead_letter_from_in,
    memory_from_in,
)
from .metrics import metrics_registry, metrics_text

__all__ = ["DEFAULT_PORT", "create_app", "serve"]

log = logging.getLogger("memcollect.server")

DEFAULT_PORT = 8765
DEFAULT_MAX_BODY_BYTES = 8 << 20
DEFAULT_MAX_BATCH = 5_000
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_records_decoder = msgspec.json.Decoder(list[MemoryIn] | MemoryIn)
_dead_letters_decoder = msgspec.json.Decoder(list[DeadLetterIn])
_remove_decoder = msgspec.json.Decoder(RemoveIds)
_delete_decoder = msgspec.json.Decoder(DeleteRequest)
_lookup_decoder = msgspec.json.Decoder(LookupRequest)


ListLimit = Annotated[int, Query(ge=1, le=1000, description="How many to return.")]
Sync = Annotated[
    bool,
    Query(
        description="Store before answering (write-through): 202 then means stored, a store "
        "error is 503 (retry) or 422 (refused). Otherwise 202 means queued in the server's spool."
    ),
]


Tags = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=128, pattern=NO_NUL)]] | None,
    Query(description="Memories with all of these tags.", min_length=1),
]
CategoryParam = Annotated[
    str | None, Query(pattern=CATEGORY_PATTERN, description="Only this category.")
]
LabelParam = Annotated[str | None, Query(min_length=1, max_length=256, pattern=NO_NUL)]
Mode = Annotated[
    Literal["text", "semantic", "hybrid"] | None,
    Query(
        description="By words (text), by meaning (semantic, needs ?semantic=1), or both; "
        "by default hybrid where the store has embeddings, else text."
    ),
]
Since = Annotated[float | None, Query(description="Created at or after (epoch seconds).")]
Until = Annotated[float | None, Query(description="Created before (epoch seconds).")]


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    """The client disconnected before its whole body arrived."""


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status, headers, media_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(ErrorBody(message), status, headers)


def _schema(name: str, description: str, array: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"$ref": f"#/components/schemas/{name}"}
    schema = {"type": "array", "items": ref} if array else ref
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(name: str, description: str, array: bool = False) -> dict[str, Any]:
    return {"required": True} | _schema(name, description, array)


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _schema("ErrorBody", "A token is required (Authorization: Bearer <token>)."),
    422: _schema("ErrorBody", "A parameter was invalid; the message names it."),
    503: _schema("ErrorBody", "The store is unavailable; try again later."),
}


def _responses(**by_status: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return _ERRORS | {int(k.lstrip("_")): v for k, v in by_status.items()}


class _Auth:
    """Every request but /healthz needs the token: as a Bearer token, or as the password of
    HTTP Basic, which lets a browser open the dashboard (it asks for it and sends it on)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _authorized(self, header: bytes) -> bool:
        scheme, _, credential = header.partition(b" ")
        scheme = scheme.lower()
        if scheme == b"basic":
            try:
                _, _, credential = base64.b64decode(credential, validate=True).partition(b":")
            except (binascii.Error, ValueError):
                return False
        elif scheme != b"bearer":
            return False
        return hmac.compare_digest(credential.strip(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        if self._authorized(header):
            await self.app(scope, receive, send)
            return
        challenge = 'Basic realm="memcollect"' if scope["path"] == "/" else "Bearer"
        response = _error(
            401,
            "this server needs a token: send 'Authorization: Bearer <token>' with the value of "
            "its MEMCOLLECT_TOKEN",
            {"WWW-Authenticate": challenge},
        )
        await response(scope, receive, send)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed, refusing more than `limit` bytes either way."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
    except ClientDisconnect:
        raise _ClientGone from None
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("identity", ""):
        return body
    if encoding != "gzip":
        raise ValidationError(f"Content-Encoding {encoding!r} is not supported: use gzip or none")
    return _gunzip(body, limit)


def _gunzip(body: bytes, limit: int) -> bytes:
    """Every member of a gzip body (a body may hold several, one after another), refusing
    more than `limit` bytes inflated."""
    parts: list[bytes] = []
    size = 0
    rest = body
    while rest:
        inflater = zlib.decompressobj(wbits=31)
        try:
            # max_length bounds what a small compressed body may inflate to.
            data = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise ValidationError(f"the gzip body is corrupt ({exc}): send valid gzip") from None
        size += len(data)
        if size > limit or inflater.unconsumed_tail:
            raise _BodyTooLarge
        if not inflater.eof:
            raise ValidationError("the gzip body is cut short: send the whole of it")
        parts.append(data)
        rest = inflater.unused_data
    return b"".join(parts)


def create_app(  # noqa: PLR0915 - the routes are closures over the app's collector
    collector: MemoryCollector | None = None,
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    **collector_fields: Any,
) -> FastAPI:
    """An ASGI app serving a collector; it builds (and closes) one from `collector_fields`
    unless given one. `token` defaults to $MEMCOLLECT_TOKEN; empty means no auth."""
    if token is None:
        token = os.environ.get("MEMCOLLECT_TOKEN", "")
    owned = collector is None
    state: dict[str, MemoryCollector] = {}
    if collector is not None:
        state["collector"] = collector

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if owned:
            previous = state.get("collector")
            if previous is None or previous.closed:
                state["collector"] = await run_in_threadpool(
                    lambda: MemoryCollector(**collector_fields)
                )
        try:
            yield
        finally:
            if owned:
                # Requests have finished by now: what they handed in is stored, or left in
                # the spool for the next start if the store stays down past the timeout.
                await run_in_threadpool(state["collector"].close)

    def current() -> MemoryCollector:
        found = state.get("collector")
        if found is None or (owned and found.closed):
            # Only reachable when the app is driven without its lifespan.
            state["collector"] = found = MemoryCollector(**collector_fields)
        return found

    app = FastAPI(
        title="memcollect",
        summary="Collect memories for AI agents; recall them by search.",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,  # Swagger UI would load from a CDN; /openapi.json is served.
        redoc_url=None,
    )
    if token:
        app.add_middleware(_Auth, token=token)
    _install_error_handlers(app)
    _install_openapi(
        app,
        bool(token),
        lambda: current().config.max_content_bytes,
        lambda: current().backend.supports_semantic,
    )

    registry = metrics_registry(current)

    @app.post(
        "/v1/memories",
        status_code=202,
        summary="Collect one memory or a list of them",
        response_model=None,
        responses=_responses(
            _202=_schema("IngestResult", "Accepted: the ids, in request order."),
            _400=_schema("ErrorBody", "The body is not JSON."),
            _413=_schema("ErrorBody", "The body is over the server's limit."),
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
                                    "maxItems": max_batch,
                                },
                            ]
                        }
                    }
                },
            }
        },
    )
    async def post_memories(
        request: Request,
        sync: Sync = False,
    ) -> Response:
        collector = current()
        try:
            body = await _read_body(request, max_body_bytes)
        except _BodyTooLarge:
            return _error(
                413,
                f"the body is over the limit of {max_body_bytes} bytes: send smaller batches",
            )
        max_bytes = collector.config.max_content_bytes
        memories: list[Memory] = []
        rejected: list[Rejection] = []
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
            return _error(400, f"the body is not valid JSON ({exc}): send a memory or a list")
        if len(items) > max_batch:
            return _error(
                422,
                f"{len(items)} memories in one request is over the limit of {max_batch}: "
                "send smaller batches",
            )
        if not items:
            return _error(422, "the request holds no memories: send a memory or a list")
        build = memory_from_in if typed else memory_from_record
        for index, item in enumerate(items):
            try:
                memories.append(build(item, max_bytes))
            except ValidationError as exc:
                rejected.append(Rejection(index, str(exc)))
        stored = False
        if sync and memories:
            # The client keeps its copy until we answer: store now, skip the queue and spool.
            try:
                await run_in_threadpool(collector.store_now, memories)
            except Exception as exc:  # noqa: BLE001 - classified for the client's retry logic
                if collector.backend.classify(exc) == "permanent":
                    return _error(422, f"the store refused the batch: {exc}")
                log.warning("sync write failed: %s", exc)
                return _error(503, f"the store is unavailable: {exc}", {"Retry-After": "1"})
            ids, stored = [m.id for m in memories], True
        else:
            try:
                ids = collector.collect_checked(memories)
            except QueueFullError as exc:
                return _error(503, str(exc), {"Retry-After": "1"})
        if rejected:
            error = (
                f"{len(rejected)} of {len(items)} memories were rejected "
                f"(first: item {rejected[0].index}: {rejected[0].error}); "
                f"the other {len(memories)} were accepted"
            )
            return _json(IngestResult(ids, len(ids), rejected, stored, error), 422)
        return _json(IngestResult(ids, len(ids), [], stored), 202)

    @app.get(
        "/v1/memories/{memory_id}",
        summary="One memory by id (also while it is still queued)",
        response_model=None,
        responses=_responses(
            _200=_schema("Memory", "The memory."),
            _404=_schema("ErrorBody", "No memory has this id."),
        ),
    )
    def get_memory(memory_id: str) -> Response:
        memory = current().get(memory_id)
        if memory is None:
            return _error(404, f"no memory with id {memory_id!r}")
        return _json(memory)

    @app.post(
        "/v1/lookup",
        summary="Memories by id, many at once (also those still queued)",
        response_model=None,
        responses=_responses(
            _200=_schema("Memory", "In the order asked; unknown ids left out.", array=True)
        ),
        openapi_extra={"requestBody": _body("LookupRequest", "At most 1000 ids.")},
    )
    async def lookup(request: Request) -> Response:
        asked = _lookup_decoder.decode(await _read_body(request, max_body_bytes))
        collector = current()
        found = await run_in_threadpool(collector.get_many, asked.ids)
        return _json(found)

    @app.get(
        "/v1/memories",
        summary="The newest stored memories",
        response_model=None,
        responses=_responses(_200=_schema("Memory", "Newest first.", array=True)),
    )
    def recent(category: CategoryParam = None, limit: ListLimit = 20) -> Response:
        return _json(current().recent(limit, category))

    @app.get(
        "/v1/search",
        summary="Full-text search with filters, best first",
        response_model=None,
        responses=_responses(_200=_schema("Memory", "Best match first.", array=True)),
    )
    def search(
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
    ) -> Response:
        hits = current().search(
            q,
            mode=mode,
            category=category,
            tags=tags,
            project=project,
            agent=agent,
            session=session,
            since=since,
            until=until,
            limit=limit,
        )
        return _json(hits)

    @app.get(
        "/v1/export",
        summary="Every stored memory in id (time) order, a page at a time",
        response_model=None,
        responses=_responses(
            _200=_schema("Memory", "Up to `limit`; ask again with after=<last id>.", array=True)
        ),
    )
    def export(after: str | None = None, limit: ListLimit = 1000) -> Response:
        return _json(current().backend.scan(after, limit))

    @app.get(
        "/v1/counts",
        summary="How many memories are stored, in all and per category",
        response_model=None,
        responses=_responses(_200=_schema("Counts", "Counts.")),
    )
    def counts() -> Response:
        by_category = current().count_by_category()
        return _json(Counts(sum(by_category.values()), by_category))

    @app.get(
        "/v1/stats",
        summary="The collector's counters and health",
        response_model=None,
        responses=_responses(_200=_schema("StatsBody", "Stats and health.")),
    )
    def stats() -> Response:
        collector = current()
        return _json(StatsBody(collector.stats(), collector.health()))

    @app.get(
        "/v1/dead-letters",
        summary="Memories the store refused for good, oldest first",
        response_model=None,
        responses=_responses(_200=_schema("DeadLetter", "Dead letters.", array=True)),
    )
    def dead_letters(limit: ListLimit = 100) -> Response:
        return _json(current().dead_letters(limit))

    @app.post(
        "/v1/dead-letters",
        summary="Keep dead letters (a remote collector's refused records)",
        status_code=204,
        response_model=None,
        responses=_responses(_204={"description": "Kept."}),
        openapi_extra={"requestBody": _body("DeadLetterIn", "Dead letters.", array=True)},
    )
    async def add_dead_letters(request: Request) -> Response:
        collector = current()
        received = _dead_letters_decoder.decode(await _read_body(request, max_body_bytes))
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

    @app.post(
        "/v1/dead-letters/remove",
        summary="Forget dead letters by id",
        status_code=204,
        response_model=None,
        responses=_responses(_204={"description": "Forgotten."}),
        openapi_extra={"requestBody": _body("RemoveIds", "Ids.")},
    )
    async def remove_dead_letters(request: Request) -> Response:
        remove = _remove_decoder.decode(await _read_body(request, max_body_bytes))
        await run_in_threadpool(current().backend.remove_dead_letters, remove.ids)
        return Response(status_code=204)

    @app.post(
        "/v1/delete",
        summary="Delete memories for good, by ids, by filters, or both",
        response_model=None,
        responses=_responses(_200=_schema("DeleteResult", "How many were deleted.")),
        openapi_extra={"requestBody": _body("DeleteRequest", "Ids and/or filters.")},
    )
    async def delete_memories(request: Request) -> Response:
        asked = _delete_decoder.decode(await _read_body(request, max_body_bytes))
        deleted = await run_in_threadpool(lambda: current().delete(**asked.arguments()))
        return _json(DeleteResult(deleted))

    @app.post(
        "/v1/dead-letters/retry",
        summary="Queue every dead letter again",
        response_model=None,
        responses=_responses(_200=_schema("RetryResult", "How many were queued.")),
    )
    def retry_dead_letters() -> Response:
        return _json(RetryResult(current().retry_dead_letters()))

    @app.get(
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
    async def healthz() -> Response:
        return _json({"status": "alive"})

    @app.get(
        "/readyz",
        summary="Readiness: the collector is storing what it accepts",
        response_model=None,
        responses=_responses(
            _200=_schema("Health", "Ready (ok or degraded)."),
            _503=_schema("Health", "Not ready (failing), with the reasons."),
        ),
    )
    def readyz() -> Response:
        health = current().health()
        return _json(health, 503 if health.status == "failing" else 200)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_model=None,
        responses=_responses(
            _200={"description": "Text exposition format.", "content": {"text/plain": {}}}
        ),
    )
    def metrics() -> Response:
        body, content_type = metrics_text(registry)
        return Response(body, media_type=content_type)

    dashboard_html = resources.files(__package__).joinpath("dashboard.html").read_bytes()

    @app.get(
        "/",
        summary="The live dashboard",
        response_model=None,
        responses=_responses(_200={"description": "HTML.", "content": {"text/html": {}}}),
    )
    async def dashboard() -> Response:
        return Response(
            dashboard_html,
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

    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "query")
        return _error(422, f"parameter {where!r}: {first.get('msg', 'invalid')}")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route of a path; list every route's methods.
            allowed: set[str] = set()
            for route in app.routes:
                match, _ = route.matches(request.scope)
                if match != Match.NONE:
                    allowed |= getattr(route, "methods", None) or set()
            headers["Allow"] = ", ".join(sorted(allowed))
        message = {404: "no such endpoint: see /openapi.json", 405: "method not allowed here"}
        return _error(exc.status_code, message.get(exc.status_code, str(exc.detail)), headers)

    async def invalid(_: Request, exc: Exception) -> Response:
        return _error(422, str(exc))

    async def too_large(_: Request, exc: Exception) -> Response:
        return _error(413, "the body is over the server's limit: send less at once")

    async def backend_down(_: Request, exc: Exception) -> Response:
        return _error(
            503, f"the store is unavailable ({exc}): try again later", {"Retry-After": "1"}
        )

    async def too_deep(_: Request, exc: Exception) -> Response:
        return _error(
            422, "the body is nested too deeply: metadata holds at most 32 levels of JSON"
        )

    async def client_gone(request: Request, exc: Exception) -> Response:
        # Nobody is left to read an answer: a line at debug level, never a traceback.
        log.debug("%s %s: the client left before sending its whole body",
                  request.method, request.url.path)  # fmt: skip
        return Response(status_code=400)

    async def internal(_: Request, exc: Exception) -> Response:
        # The trace goes to the log, never to the client.
        log.error("request failed", exc_info=exc)
        return _error(500, "internal error: the server log has the details")

    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
        RequestValidationError: validation,
        StarletteHTTPException: http_error,
        ValidationError: invalid,
        msgspec.ValidationError: invalid,
        msgspec.DecodeError: invalid,
        _BodyTooLarge: too_large,
        _ClientGone: client_gone,
        RecursionError: too_deep,
        BackendError: backend_down,
        MemcollectError: invalid,
        Exception: internal,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)


def _install_openapi(
    app: FastAPI, auth: bool, max_content_bytes: Callable[[], int], semantic: Callable[[], bool]
) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        components = spec.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.update(component_schemas())
        schemas["MemoryIn"]["properties"]["content"]["maxLength"] = max_content_bytes()
        # The search modes this store answers: semantic ones need its embeddings.
        modes = ["text", "semantic", "hybrid"] if semantic() else ["text"]
        for parameter in spec["paths"]["/v1/search"]["get"]["parameters"]:
            if parameter["name"] == "mode":
                parameter["schema"] = {"enum": modes, "default": "text"}
        if auth:
            components["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            }
            spec["security"] = [{"bearer": []}, {"basic": []}]
            spec["paths"]["/healthz"]["get"]["security"] = []
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _version() -> str:
    from .. import __version__

    return __version__


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    log_level: str = "info",
    **create_args: Any,
) -> None:
    """Run the server until SIGTERM or SIGINT, then flush and return."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGTERM after its graceful shutdown, so the process would end
            # "killed by SIGTERM"; a shutdown that stored everything is a success: exit 0.
            with super().capture_signals():
                try:
                    yield
                finally:
                    captured = getattr(self, "_captured_signals", None)
                    if isinstance(captured, list):
                        captured.clear()

    config = uvicorn.Config(
        create_app(**create_args),
        host=host,
        port=port,
        log_level=log_level,
        # Sockets the server keeps open for clients' keep-alive batches.
        timeout_keep_alive=30,
        server_header=False,
    )
    GracefulServer(config).run()
