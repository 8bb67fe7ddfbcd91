"""Memory, categories, priorities, ids and the validation that runs at the call site."""

from __future__ import annotations

import enum
import itertools
import os
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from .errors import ValidationError

__all__ = [
    "BUILTIN_CATEGORIES",
    "PRIORITIES",
    "Category",
    "DeadLetter",
    "Memory",
    "Priority",
    "id_time",
    "new_id",
]


class Category(enum.StrEnum):
    """The built-in categories; any lowercase slug is a valid category too."""

    BUG = "bug"
    ERROR = "error"
    FEEDBACK = "feedback"
    PERFORMANCE = "performance"
    ARCHITECTURE = "architecture"
    INTEGRATION = "integration"
    QA = "qa"
    OPERATION = "operation"
    DECISION = "decision"
    PATTERN = "pattern"
    PROJECT = "project"
    TEAM = "team"
    NOTE = "note"


class Priority(enum.StrEnum):
    """How urgently a memory should be stored: higher goes first when there is a backlog."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


BUILTIN_CATEGORIES: frozenset[str] = frozenset(c.value for c in Category)
PRIORITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
PRIORITY_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
DEFAULT_PRIORITY: dict[str, str] = {"error": "critical", "bug": "high"}


class Memory(msgspec.Struct, gc=False):
    """One collected memory, as stored and as returned by recall."""

    id: str
    category: str
    content: str
    metadata: dict[str, Any]
    priority: str
    tags: tuple[str, ...]
    project: str | None
    agent: str | None
    session: str | None
    created_at: float
    # Filled in by the worker, off the caller's hot path.
    content_hash: str = ""
    #: The caller's own key for grouping it with other occurrences of the same event (see
    #: memcollect.groups); "" when groups make one from the category and content.
    fingerprint: str = ""

    @property
    def created(self) -> datetime:
        """`created_at` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.created_at, UTC)

    def to_dict(self) -> dict[str, Any]:
        """The memory as plain JSON-ready builtins."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


class DeadLetter(msgspec.Struct, frozen=True):
    """A memory the store refused for good, with why."""

    memory: Memory
    error: str
    failed_at: float


# --- ids -------------------------------------------------------------------------------------
# A ULID-shaped id (26 characters of lowercase Crockford base32): 10 characters of millisecond
# timestamp, 8 characters of per-process randomness, and 8 hex characters of a counter that
# starts at a random value. Hex digits are a sort-preserving subset of Crockford's alphabet, so
# ids sort by time, and the counter makes them unique within a process without a lock
# (itertools.count is atomic under the GIL). Building one costs a few hundred nanoseconds,
# where base64.b32encode (pure Python before 3.13) or uuid4 cost microseconds.

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_DECODE = {c: i for i, c in enumerate(_CROCKFORD)}


def _b32(n: int, width: int) -> str:
    chars = []
    for _ in range(width):
        chars.append(_CROCKFORD[n & 31])
        n >>= 5
    return "".join(reversed(chars))


class _IdState:
    __slots__ = ("cache", "counter", "process")

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.process = _b32(int.from_bytes(os.urandom(5), "big"), 8)
        self.counter = itertools.count(0x1_0000_0000 + int.from_bytes(os.urandom(4), "big"))
        self.cache: tuple[int, str] = (-1, "")


_ids = _IdState()
# A forked child must not repeat its parent's ids: new randomness, new counter.
os.register_at_fork(after_in_child=_ids.reseed)


def _id_at(now: float) -> str:
    ms = int(now * 1000)
    cached = _ids.cache
    if cached[0] != ms:
        cached = _ids.cache = (ms, _b32(ms, 10) + _ids.process)
    return cached[1] + hex(next(_ids.counter))[-8:]


def new_id() -> str:
    """A new time-ordered, unique memory id."""
    return _id_at(time.time())


def id_time(memory_id: str) -> float:
    """The creation time (epoch seconds) encoded in an id."""
    try:
        ms = 0
        for ch in memory_id[:10].lower():
            ms = ms * 32 + _DECODE[ch]
    except (KeyError, TypeError, AttributeError):
        raise ValidationError(f"id {memory_id!r} is not a memcollect id") from None
    return ms / 1000.0
