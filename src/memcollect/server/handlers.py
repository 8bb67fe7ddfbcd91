"""Errors as one clear JSON sentence each, and the OpenAPI document's finishing touches."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..errors import BackendError, MemcollectError, ValidationError
from ..wire import component_schemas
from .history import HistoryBody
from .http import BodyTooLarge, ClientGone, error_response

__all__ = ["install_error_handlers", "install_openapi"]

log = logging.getLogger("memcollect.server")


async def _validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "query")
    return error_response(422, f"parameter {where!r}: {first.get('msg', 'invalid')}")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names only the first route of a path; list every route's methods.
        allowed: set[str] = set()
        for route in request.app.routes:
            match, _ = route.matches(request.scope)
            if match != Match.NONE:
                allowed |= getattr(route, "methods", None) or set()
        headers["Allow"] = ", ".join(sorted(allowed))
    message = {404: "no such endpoint: see /openapi.json", 405: "method not allowed here"}
    text = message.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, text, headers)


async def _invalid(_: Request, exc: Exception) -> Response:
    return error_response(422, str(exc))


async def _too_large(_: Request, exc: Exception) -> Response:
    return error_response(413, "the body is over the server's limit: send less at once")


async def _backend_down(_: Request, exc: Exception) -> Response:
    return error_response(
        503, f"the store is unavailable ({exc}): try again later", {"Retry-After": "1"}
    )


async def _too_deep(_: Request, exc: Exception) -> Response:
    return error_response(
        422, "the body is nested too deeply: metadata holds at most 32 levels of JSON"
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody is left to read an answer: a line at debug level, never a traceback.
    log.debug("%s %s: the client left before sending its whole body",
              request.method, request.url.path)  # fmt: skip
    return Response(status_code=400)


async def _internal(_: Request, exc: Exception) -> Response:
    # The trace goes to the log, never to the client.
    log.error("request failed", exc_info=exc)
    return error_response(500, "internal error: the server log has the details")


_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    RequestValidationError: _validation,
    StarletteHTTPException: _http_error,
    ValidationError: _invalid,
    msgspec.ValidationError: _invalid,
    msgspec.DecodeError: _invalid,
    BodyTooLarge: _too_large,
    ClientGone: _client_gone,
    RecursionError: _too_deep,
    BackendError: _backend_down,
    MemcollectError: _invalid,
    Exception: _internal,
}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as one JSON sentence with the right status; log, never leak, bugs."""
    for kind, handler in _HANDLERS.items():
        app.add_exception_handler(kind, handler)


def install_openapi(
    app: FastAPI,
    auth: bool,
    max_content_bytes: Callable[[], int],
    semantic: Callable[[], bool],
    max_batch: int,
) -> None:
    """Finish the app's OpenAPI document: wire schemas, this server's limits, its auth."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        components = spec.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.update(component_schemas(HistoryBody))
        schemas["MemoryIn"]["properties"]["content"]["maxLength"] = max_content_bytes()
        ingest = spec["paths"]["/v1/memories"]["post"]["requestBody"]["content"]
        ingest["application/json"]["schema"]["oneOf"][1]["maxItems"] = max_batch
        # The search modes this store answers: semantic ones need its embeddings.
        modes = ["text", "semantic", "hybrid"] if semantic() else ["text"]
        for path in ("/v1/search", "/v1/search/scored"):
            for parameter in spec["paths"][path]["get"]["parameters"]:
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
