"""SearchQuery, and the checks of the arguments that build one."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

import msgspec

from .errors import ValidationError
from .model import Memory
from .validate import check_category, check_labels, check_tags

__all__ = [
    "FOUND_BY",
    "SEARCH_MODES",
    "Hit",
    "SearchQuery",
    "check_ids",
    "check_limit",
    "check_min_score",
    "search_query",
]

SEARCH_MODES = ("text", "semantic", "hybrid")


class SearchQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A full-text query with filters; an empty `text` lists by recency."""

    text: str = ""
    category: str | None = None
    tags: tuple[str, ...] = ()
    project: str | None = None
    agent: str | None = None
    session: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 10
    #: "text" (full-text), "semantic" (by meaning) or "hybrid" (both, fused by rank);
    #: "default" only to a memcollect server, whose store decides.
    mode: str = "text"

    def matches(self, memory: Memory) -> bool:
        """Whether a memory passes the filters (not the text)."""
        return (
            (self.category is None or memory.category == self.category)
            and (self.project is None or memory.project == self.project)
            and (self.agent is None or memory.agent == self.agent)
            and (self.session is None or memory.session == self.session)
            and (self.since is None or memory.created_at >= self.since)
            and (self.until is None or memory.created_at < self.until)
            and all(tag in memory.tags for tag in self.tags)
        )


#: How a hit was found: by its words, its meaning, both, as a neighbour in the session of
#: a hit, or (a query with no words) by the filters alone.
FOUND_BY = ("text", "meaning", "both", "session", "filters")


class Hit(msgspec.Struct, frozen=True):
    """A search result: the memory, how strongly it answers the query, and how it was found.

    `score` is from 0 to 1 on every store: by words, the share of the query's words the
    memory holds (longer words weigh more); by meaning, the cosine similarity of the two
    embeddings; in hybrid search, the stronger of the two. Hits stay in rank order, which
    weighs more than the score (BM25, the fusion of both lists).
    """

    memory: Memory
    score: float
    found_by: str
    #: With collapse=True: the hit's group, and how many of the matches looked at share it
    #: (the hit stands for all of them); otherwise "" and 1.
    fingerprint: str = ""
    matches: int = 1


def check_min_score(min_score: object) -> float | None:
    """A threshold is a number from 0 to 1 (None: keep every hit)."""
    if min_score is None:
        return None
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)):
        raise ValidationError(f"min_score must be a number from 0 to 1, not {min_score!r}")
    if not 0.0 <= min_score <= 1.0:
        raise ValidationError(f"min_score must be from 0 to 1, not {min_score!r}")
    return float(min_score)


def search_query(
    *,
    category: str | None,
    tags: Sequence[str] | None,
    project: str | None,
    agent: str | None,
    session: str | None,
    since: object,
    until: object,
    limit: int,
    text: str = "",
    mode: str = "text",
) -> SearchQuery:
    """A search query from public arguments, each checked (the error names it)."""
    project, agent, session = check_labels(project, agent, session)
    return SearchQuery(
        mode=mode,
        text=text,
        category=check_category(category) if category is not None else None,
        tags=check_tags(tags),
        project=project,
        agent=agent,
        session=session,
        since=_timestamp(since, "since"),
        until=_timestamp(until, "until"),
        limit=limit,
    )


def check_ids(ids: object) -> list[str] | None:
    """Ids as a list (one id may be passed alone), each a str."""
    if ids is None:
        return None
    if isinstance(ids, str):
        return [ids]
    if isinstance(ids, bytes) or not isinstance(ids, Iterable):
        raise ValidationError(f"ids must be an id or a list of ids, not {type(ids).__name__}")
    listed = list(ids)
    for index, memory_id in enumerate(listed):
        if not isinstance(memory_id, str):
            raise ValidationError(f"ids[{index}] must be a str, not {type(memory_id).__name__}")
    return listed


def check_limit(limit: object) -> None:
    """A limit is a whole number from 1 to 10,000."""
    if type(limit) is not int or not 1 <= limit <= 10_000:
        raise ValidationError(f"limit must be a whole number from 1 to 10000, not {limit!r}")


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def point_in_time(text: str, field: str, now: float | None = None) -> float:
    """Epoch seconds for an age (30m, 2h, 7d: that long before now), an ISO date or time
    (local time without an offset), or epoch seconds in a string."""
    value = text.strip()
    unit = _AGE_UNITS.get(value[-1:].lower())
    try:
        if unit is not None and value[:-1]:
            age = float(value[:-1])
            if math.isfinite(age):
                return (time.time() if now is None else now) - age * unit
        number = float(value)
        if math.isfinite(number):
            return number
    except ValueError:
        pass
    from datetime import datetime  # only for ISO times

    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValidationError(
            f"{field} {text!r} is not a time: give an age (30m, 2h, 7d), an ISO date or "
            "time (2026-11-25T14:00:00), or epoch seconds"
        ) from None


def _timestamp(value: object, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return point_in_time(value, field)
    if isinstance(value, bool):
        raise ValidationError(
            f"{field} must be a time (7d, an ISO date, epoch seconds), not a bool"
        )
    if isinstance(value, (int, float)):
        if math.isnan(value):  # every comparison with NaN is false: nothing would match
            raise ValidationError(f"{field} is NaN: give a datetime or epoch seconds")
        return float(value)
    timestamp = getattr(value, "timestamp", None)
    if callable(timestamp):
        return float(timestamp())
    raise ValidationError(
        f"{field} must be an age (7d), an ISO date, a datetime or epoch seconds, not {value!r}"
    )
