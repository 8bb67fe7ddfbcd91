"""What every route shares: JSON answers, errors, bodies read within limits, and the
parameters' and responses' OpenAPI descriptions."""

from __future__ import annotations

import zlib
from typing import Annotated, Any, Literal

from fastapi import Query, Request
from pydantic import Field
from starlette.requests import ClientDisconnect

from ..errors import ValidationError
from ..validate import MAX_LABEL, MAX_TAG
from ..wire import CATEGORY_PATTERN, NO_NUL
from .answers import error_response, json_response

__all__ = ["BodyTooLarge", "ClientGone", "error_response", "json_response", "read_body"]

ListLimit = Annotated[int, Query(ge=1, le=1000, description="How many to return.")]
Sync = Annotated[
    bool,
    Query(
        description="Store before answering (write-through): 202 then means stored, a store "
        "error is 503 (retry) or 422 (refused). Otherwise 202 means queued in the server's spool."
    ),
]


Tags = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=MAX_TAG, pattern=NO_NUL)]] | None,
    Query(description="Memories with all of these tags.", min_length=1),
]
CategoryParam = Annotated[
    str | None, Query(pattern=CATEGORY_PATTERN, description="Only this category.")
]
LabelParam = Annotated[str | None, Query(min_length=1, max_length=MAX_LABEL, pattern=NO_NUL)]
Mode = Annotated[
    Literal["text", "semantic", "hybrid"] | None,
    Query(
        description="By words (text), by meaning (semantic, needs ?semantic=1), or both; "
        "by default hybrid where the store has embeddings, else text."
    ),
]
Collapse = Annotated[
    bool,
    Query(description="One hit per group (memories sharing a fingerprint), the best of each."),
]
MinScore = Annotated[
    float | None,
    Query(ge=0.0, le=1.0, description="Drop hits scoring below this (0 to 1)."),
]
# The forms collect()'s readers take everywhere: an age, a UTC date or time, epoch seconds.
# (Days up to 29 only, so that every string the pattern admits is a real date.)
_TIME = (
    r"^(\d{1,12}(\.\d{1,6})?[smhdw]?"
    r"|\d{4}-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-9])(T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?)?)$"
)
_TIME_FORMS = "an age (30m, 2h, 7d), a date or time (2026-11-25T14:00) or epoch seconds"
Since = Annotated[
    str | None, Query(pattern=_TIME, description=f"Created at or after this: {_TIME_FORMS}.")
]
Until = Annotated[
    str | None, Query(pattern=_TIME, description=f"Created before this: {_TIME_FORMS}.")
]
GroupOrder = Annotated[
    Literal["count", "last_seen", "new", "rising"],
    Query(
        description="Most memories, newest occurrence, newest first occurrence (new in the "
        "period), or most growth against the period before."
    ),
]

ReportLimit = Annotated[int, Query(ge=1, le=100, description="How many groups per list.")]
ReportFormat = Annotated[
    Literal["json", "md", "html"],
    Query(description="JSON, Markdown, or one self-contained HTML page with its charts."),
]


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    """The client disconnected before its whole body arrived."""


def schema(name: str, description: str, array: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"$ref": f"#/components/schemas/{name}"}
    schema = {"type": "array", "items": ref} if array else ref
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def body(name: str, description: str, array: bool = False) -> dict[str, Any]:
    return {"required": True} | schema(name, description, array)


ERRORS: dict[int | str, dict[str, Any]] = {
    401: schema("ErrorBody", "A token is required (Authorization: Bearer <token>)."),
    422: schema("ErrorBody", "A parameter was invalid; the message names it."),
    503: schema("ErrorBody", "The store is unavailable; try again later."),
}


def responses(**by_status: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return ERRORS | {int(k.lstrip("_")): v for k, v in by_status.items()}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed, refusing more than `limit` bytes either way."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone from None
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("identity", ""):
        return body
    if encoding != "gzip":
        raise ValidationError(f"Content-Encoding {encoding!r} is not supported: use gzip or none")
    return gunzip(body, limit)


def gunzip(body: bytes, limit: int) -> bytes:
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
            raise BodyTooLarge
        if not inflater.eof:
            raise ValidationError("the gzip body is cut short: send the whole of it")
        parts.append(data)
        rest = inflater.unused_data
    return b"".join(parts)
