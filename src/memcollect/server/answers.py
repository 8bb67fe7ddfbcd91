"""JSON answers and one-sentence errors, on Starlette alone (the MCP server's auth uses them
without FastAPI)."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from ..wire import ErrorBody

__all__ = ["error_response", "json_response"]

_encoder = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`body` as JSON, with the status and headers given."""
    return Response(_encoder.encode(body), status, headers, media_type="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error as the API answers every one: {"error": message}."""
    return json_response(ErrorBody(message), status, headers)
