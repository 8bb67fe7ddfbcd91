"""What the server and its clients send each other: the HTTP API's bodies, as msgspec Structs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .groups import Group, GroupDetail
from .model import DeadLetter, Memory
from .query import Hit
from .report import Report
from .stats import Health, Stats
from .validate import CATEGORY_PATTERN, MAX_LABEL, MAX_TAG, make_memory

__all__ = [
    "CATEGORY_PATTERN",
    "Counts",
    "DeleteRequest",
    "DeleteResult",
    "ErrorBody",
    "IngestResult",
    "LookupRequest",
    "MemoryIn",
    "Rejection",
    "RemoveIds",
    "RetryResult",
    "StatsBody",
    "component_schemas",
    "memory_from_in",
]


# The rules of memcollect.model's validation, stated for clients (and schema-based testers).
# Content's limit is in UTF-8 bytes; the app states it as maxLength, exact for ASCII.
NO_NUL = "^[^\\x00]*$"
Category = Annotated[str, msgspec.Meta(pattern=CATEGORY_PATTERN, examples=["bug"])]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LABEL, pattern=NO_NUL)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TAG, pattern=NO_NUL)]
PriorityName = Literal["low", "medium", "high", "critical"]
MemoryId = Annotated[
    str,
    msgspec.Meta(
        pattern="^[0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{26}$",
        description="A ULID-shaped id; omit it to get a new one.",
    ),
]
CreatedAt = Annotated[
    float, msgspec.Meta(ge=946_684_800, le=4_102_444_800, description="Epoch seconds.")
]


class MemoryIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A memory to collect: collect()'s arguments, plus `id` and `created_at` for a replay."""

    category: Category
    content: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            pattern=NO_NUL,
            description="At most the server's max_content_bytes in UTF-8 (64 KiB by default).",
        ),
    ]
    metadata: (
        Annotated[
            dict[str, Any],
            msgspec.Meta(description="JSON, nested at most 32 levels, without NUL characters."),
        ]
        | None
    ) = None
    priority: PriorityName | None = None
    tags: list[Tag] | None = None
    project: Label | None = None
    agent: Label | None = None
    session: Label | None = None
    id: MemoryId | None = None
    created_at: CreatedAt | None = None
    content_hash: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    # "" (or none): the store's worker makes one from the content.
    fingerprint: Annotated[str, msgspec.Meta(max_length=MAX_TAG, pattern=NO_NUL)] | None = None


class DeadLetterIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A memory a collector's store refused for good, with why; it may be queued again, so
    it must be a valid memory."""

    memory: MemoryIn
    error: str
    failed_at: float


def dead_letter_from_in(letter: DeadLetterIn, max_content_bytes: int) -> DeadLetter:
    """A DeadLetter from a decoded body, its memory checked as a collected one is."""
    return DeadLetter(
        memory_from_in(letter.memory, max_content_bytes), letter.error, letter.failed_at
    )


def memory_from_in(record: MemoryIn, max_content_bytes: int) -> Memory:
    """A Memory from a decoded record, with the checks its schema cannot state (UTF-8 size,
    metadata); the same rules as memory_from_record, for records msgspec already typed."""
    memory = make_memory(
        record.category,
        record.content,
        record.metadata,
        record.priority,
        record.tags,
        record.project,
        record.agent,
        record.session,
        max_content_bytes,
    )
    if record.id is not None:
        memory.id = record.id.lower()
    if record.created_at is not None:
        memory.created_at = record.created_at
    if record.content_hash is not None:
        memory.content_hash = record.content_hash
    if record.fingerprint:
        memory.fingerprint = record.fingerprint
    return memory


class Rejection(msgspec.Struct):
    """One memory of a request that was not accepted, by its index in the request."""

    index: int
    error: str


class IngestResult(msgspec.Struct):
    """Ids of the accepted memories, in request order, and what was rejected."""

    ids: list[str]
    accepted: int
    rejected: list[Rejection]
    stored: bool
    error: str | None = None


class ErrorBody(msgspec.Struct):
    """An error: one sentence naming what was wrong and what to do."""

    error: str


class Counts(msgspec.Struct):
    """How many memories are stored, in all and per category."""

    total: int
    by_category: dict[str, int]


class StatsBody(msgspec.Struct):
    """The server's collector: its counters, its health, and the search modes its store
    answers (the first is the default)."""

    stats: Stats
    health: Health
    search_modes: list[str] = msgspec.field(default_factory=lambda: ["text"])


class RetryResult(msgspec.Struct):
    """How many dead letters were queued again."""

    queued: int


class RemoveIds(msgspec.Struct, forbid_unknown_fields=True):
    """Ids of dead letters to forget."""

    ids: list[str]


# Ids a lookup may name at once: one page of a client's delete or get_many.
LOOKUP_MAX_IDS = 1000


class LookupRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Ids of memories to read at once."""

    ids: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=128)]],
        msgspec.Meta(max_length=LOOKUP_MAX_IDS),
    ]


class DeleteRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Memories to delete: by ids, by filters, or the ids that pass the filters; a field
    left out is no filter."""

    ids: list[str] | msgspec.UnsetType = msgspec.UNSET
    category: Category | msgspec.UnsetType = msgspec.UNSET
    tags: Annotated[list[Tag], msgspec.Meta(min_length=1)] | msgspec.UnsetType = msgspec.UNSET
    project: Label | msgspec.UnsetType = msgspec.UNSET
    agent: Label | msgspec.UnsetType = msgspec.UNSET
    session: Label | msgspec.UnsetType = msgspec.UNSET
    since: float | msgspec.UnsetType = msgspec.UNSET
    until: float | msgspec.UnsetType = msgspec.UNSET

    def arguments(self) -> dict[str, Any]:
        """delete()'s keyword arguments: the fields sent."""
        return {
            field: value
            for field in self.__struct_fields__
            if (value := getattr(self, field)) is not msgspec.UNSET
        }


class DeleteResult(msgspec.Struct):
    """How many memories were deleted."""

    deleted: int


_TYPES: tuple[Any, ...] = (
    MemoryIn,
    Memory,
    Hit,
    IngestResult,
    ErrorBody,
    Counts,
    StatsBody,
    RetryResult,
    RemoveIds,
    LookupRequest,
    DeleteRequest,
    DeleteResult,
    DeadLetter,
    DeadLetterIn,
    Group,
    GroupDetail,
    Report,
)


def component_schemas(*more: Any) -> dict[str, Any]:
    """JSON schemas of every body (and of `more` types), keyed by name, for the OpenAPI
    document."""
    _, components = msgspec.json.schema_components(
        (*_TYPES, *more), ref_template="#/components/schemas/{name}"
    )
    # Ids or a filter: an empty body would ask to delete nothing or everything.
    components["DeleteRequest"]["minProperties"] = 1
    # Metadata's rules at every level, not only in words: no NUL in keys or strings, integers
    # in 64 bits (what collect() accepts; the stores keep nothing else).
    value = {"$ref": "#/components/schemas/MetadataValue"}
    mapping = {
        "type": "object",
        "propertyNames": {"pattern": NO_NUL},
        "additionalProperties": value,
    }
    components["MetadataValue"] = {
        "anyOf": [
            {"type": "null"},
            {"type": "boolean"},
            {"type": "integer", "minimum": -(1 << 63), "maximum": (1 << 63) - 1},
            {"type": "number", "not": {"type": "integer"}},
            {"type": "string", "pattern": NO_NUL},
            {"type": "array", "items": value},
            mapping,
        ]
    }
    metadata = components["MemoryIn"]["properties"]["metadata"]["anyOf"][0]
    metadata.update(mapping)
    return components
