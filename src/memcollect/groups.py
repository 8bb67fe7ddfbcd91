"""Fingerprints of memories, and the groups of memories that share one: what keeps happening.

A fingerprint is a digest of a memory's category and its content *normalized*: the parts that
change from one occurrence of the same event to the next are replaced by placeholders, so
"Timeout after 3000 ms calling https://pay.example/v2/charge for order 8812" and "Timeout
after 5012 ms calling https://pay.example/v2/charge for order 9120" are one group.

The content is lowercased; quoted text, then URLs, are replaced first; then each word is
looked at alone (punctuation around it is kept), the first kind it is wins, and the
whitespace is collapsed:

| what | becomes | e.g. |
|---|---|---|
| quoted text | `<str>` | `'user_id'`, `"Becoming Nicole"` |
| URLs | `<url>` | `https://pay.example/v2/charge?id=9` |
| e-mail addresses | `<email>` | `ann@example.com` |
| UUIDs | `<uuid>` | `1b4e28ba-2fa1-11d2-883f-0016d3cca427` |
| dates and times | `<time>` | `2026-12-01`, `12:30:01.5`, `2026-12-01T12:30:01Z` |
| IPv4 addresses | `<ip>` | `10.0.0.12:8080` |
| file paths | `<path>` | `/var/log/app.log`, `C:\\app\\x.py`, `src/app.py` |
| hex numbers and digests | `<hex>` | `0x7f3a`, `deadbeef12` |
| numbers | `<num>` | `42`, `-3.14`, `1,000` |
| numbers with a unit | `<num>` and the unit | `3000ms` → `<num>ms` (`3000 ms` → `<num> ms`) |
| other words holding digits (ids, versions, hosts) | `<id>` | `user_8812`, `a1b2c3`, `v2`, `db-1` |

A caller that knows better passes its own: `collect(..., fingerprint="payments-timeout")`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

import msgspec

try:  # the C module itself: OpenSSL's hashlib costs ~5 ms of import time
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - other Pythons
    from hashlib import blake2b

from .model import PRIORITY_RANK, Memory

__all__ = [
    "GROUP_ORDERS",
    "Group",
    "GroupDetail",
    "GroupQuery",
    "fingerprint",
    "fingerprint_of",
    "group_of",
    "group_query",
    "grouped",
    "groups_of",
    "normalize",
    "utc_day",
]

# Each word is looked at alone, and only when it holds a digit or a sign of an address:
# most words of most memories are plain: letters alone pass one str method (no digit is a
# letter), any other word one regex search.
_NEEDS_A_LOOK = re.compile(r"[\d/\\@]")
_QUOTED = re.compile(r"'[^'\n]{1,200}'|\"[^\"\n]{1,200}\"|`[^`\n]{1,200}`")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+")
# Punctuation around a word stays: "(v2)," is "(<id>),".
_EDGES = re.compile(r"^([(\[{<'\"]*)(.*?)([)\]}>'\".,;:!?]*)$", re.DOTALL)
_KINDS: list[tuple[str, re.Pattern[str]]] = [
    (k, re.compile(p))
    for k, p in [
        ("<email>", r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
        ("<uuid>", r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
        (
            "<time>",
            r"\d{4}-\d{2}-\d{2}(?:t\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:z|[+-]\d{2}:?\d{2})?)?"
            r"|\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?",
        ),
        ("<ip>", r"\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?"),
        ("<path>", r"(?:[a-z]:\\|~?/|\.{1,2}/)\S*|[\w.-]+(?:[/\\][\w.-]+)+"),
        ("<hex>", r"0x[0-9a-f]+|(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}"),
        ("<num>", r"[-+]?\d+(?:[.,]\d+)*"),
    ]
]
_UNIT = re.compile(r"[-+]?\d+(?:\.\d+)?(ns|us|µs|ms|s|sec|m|min|h|d|b|kb|mb|gb|tb|kib|mib|gib|%|x)")


def _word(word: str) -> str:
    edges = _EDGES.match(word)
    lead, core, tail = edges.groups() if edges else ("", word, "")
    for placeholder, pattern in _KINDS:
        if pattern.fullmatch(core):
            return f"{lead}{placeholder}{tail}"
    unit = _UNIT.fullmatch(core)
    if unit:
        return f"{lead}<num>{unit.group(1)}{tail}"
    if any(c.isdigit() for c in core):
        return f"{lead}<id>{tail}"  # a word holding digits: an id, a version, a host
    return word


def normalize(content: str) -> str:
    """The content with what varies between occurrences of one event replaced by
    placeholders (see the module's table), lowercased, its whitespace collapsed."""
    text = content.lower()
    if "'" in text or '"' in text or "`" in text:
        text = _QUOTED.sub("<str>", text)
    if "://" in text:
        text = _URL.sub("<url>", text)
    look = _NEEDS_A_LOOK.search
    return " ".join([w if w.isalpha() or not look(w) else _word(w) for w in text.split()])


def fingerprint_of(category: str, content: str) -> str:
    """The fingerprint of a memory: 16 hex digits of its category and normalized content."""
    text = f"{category}\x1f{normalize(content)}".encode()
    return blake2b(text, digest_size=8).hexdigest()


def fingerprint(memory: Memory) -> str:
    """A memory's fingerprint: the caller's own, or made from its category and content."""
    if memory.fingerprint:
        return memory.fingerprint
    # Events repeat: the same content is fingerprinted once (its content hash keys it).
    key = (memory.category, memory.content_hash)
    found = _CACHE.get(key) if memory.content_hash else None
    if found is None:
        found = fingerprint_of(memory.category, memory.content)
        if memory.content_hash:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.clear()
            _CACHE[key] = found
    return found


_CACHE: dict[tuple[str, str], str] = {}
_CACHE_SIZE = 8192

#: How groups() orders: most memories, newest occurrence, newest first occurrence, or the
#: most growth over the period before.
GROUP_ORDERS = ("count", "last_seen", "new", "rising")


class Group(msgspec.Struct, frozen=True):
    """Memories that share a fingerprint: how many, since when, until when."""

    fingerprint: str
    category: str
    #: One of the group's memories (the first stored), to show what the group is.
    representative: Memory
    #: The highest priority any of its memories had.
    priority: str
    count: int
    first_seen: float
    last_seen: float
    #: In a period asked for (since/until): how many of its memories fall in it; else count.
    in_period: int = 0
    #: For order="rising": how many fell in the period just before (else 0).
    before_period: int = 0


class GroupDetail(msgspec.Struct, frozen=True):
    """One group with a page of its memories (newest first) and its memories per day."""

    group: Group
    members: list[Memory]
    #: (day, count) for each day with memories: the day as UTC midnight in epoch seconds.
    daily: list[tuple[float, int]]


class GroupQuery(msgspec.Struct, frozen=True):
    """What groups() asks for, checked: filters on the members, a period, an order."""

    category: str | None = None
    project: str | None = None
    agent: str | None = None
    since: float | None = None
    until: float | None = None
    order: str = "count"
    limit: int = 20

    def admits(self, memory: Memory) -> bool:
        """Whether a memory passes the filters on category, project and agent."""
        return (
            (self.category is None or memory.category == self.category)
            and (self.project is None or memory.project == self.project)
            and (self.agent is None or memory.agent == self.agent)
        )

    def before(self) -> tuple[float, float] | None:
        """For order="rising": the period of the same length just before this one."""
        if self.since is None:
            return None
        end = self.until if self.until is not None else time.time()
        return self.since - (end - self.since), self.since


# order="rising" without a period compares the last week with the week before.
RISING_DEFAULT_S = 7 * 86400


def group_query(
    *,
    category: str | None = None,
    project: str | None = None,
    agent: str | None = None,
    since: object = None,
    until: object = None,
    order: str = "count",
    limit: int = 20,
) -> GroupQuery:
    """A GroupQuery from groups()'s arguments; a bad one is a one-sentence ValidationError."""
    from .errors import ValidationError
    from .query import check_limit, search_query

    check_limit(limit)
    if order not in GROUP_ORDERS:
        raise ValidationError(f"order must be one of {', '.join(GROUP_ORDERS)}, not {order!r}")
    base = search_query(
        category=category, tags=None, project=project, agent=agent, session=None,
        since=since, until=until, limit=limit,
    )  # fmt: skip
    start = base.since
    if order == "rising" and start is None:
        start = (base.until if base.until is not None else time.time()) - RISING_DEFAULT_S
    return GroupQuery(base.category, base.project, base.agent, start, base.until, str(order),
                      base.limit)  # fmt: skip


def utc_day(seconds: float) -> float:
    """The UTC midnight (epoch seconds) of the day a time falls in."""
    return float(int(seconds // 86400) * 86400)


def groups_of(memories: Iterable[Memory], query: GroupQuery) -> list[Group]:
    """groups() computed from the memories themselves (stores that keep no groups)."""
    return [g for g, _ in grouped(memories, query)][: query.limit]


def grouped(memories: Iterable[Memory], query: GroupQuery) -> list[tuple[Group, list[Memory]]]:
    """The groups of the memories that pass the query's filters, each with its members (in
    id order), by the query's order."""
    members: dict[str, list[Memory]] = {}
    for m in memories:
        if query.admits(m):
            members.setdefault(fingerprint(m), []).append(m)
    before = query.before() if query.order == "rising" else None  # only rising compares
    out: list[tuple[Group, list[Memory]]] = []
    for fp, group in members.items():
        group.sort(key=lambda m: m.id)
        first = min(m.created_at for m in group)
        last = max(m.created_at for m in group)
        inside = [m for m in group if _within(m.created_at, query.since, query.until)]
        earlier = [m for m in group if before and _within(m.created_at, *before)]
        if (query.since is not None or query.until is not None) and not inside:
            continue
        if query.order == "new" and query.since is not None and first < query.since:
            continue
        out.append(
            (
                Group(
                    fp,
                    group[0].category,
                    group[0],
                    max(group, key=_rank).priority,
                    len(group),
                    first,
                    last,
                    len(inside),
                    len(earlier),
                ),
                group,
            )
        )
    out.sort(key=lambda pair: _order_key(pair[0], query.order))
    return out


def _rank(memory: Memory) -> int:
    return PRIORITY_RANK[memory.priority]


def _within(at: float, since: float | None, until: float | None) -> bool:
    return (since is None or at >= since) and (until is None or at < until)


def _order_key(group: Group, order: str) -> tuple[float, str]:
    if order == "last_seen":
        return (-group.last_seen, group.fingerprint)
    if order == "new":
        return (-group.first_seen, group.fingerprint)
    if order == "rising":
        return (-(group.in_period - group.before_period), group.fingerprint)
    return (-(group.in_period or group.count), group.fingerprint)


def group_of(
    memories: Iterable[Memory], key: str, limit: int = 20, before: str | None = None
) -> GroupDetail | None:
    """One group computed from the memories: newest members first (after the member with
    the id `before`), and its daily counts."""
    # Only this group's memories are grouped: the others need no Group of their own.
    found = grouped((m for m in memories if fingerprint(m) == key), GroupQuery())
    if not found:
        return None
    group, members = found[0]
    days: dict[float, int] = {}
    for m in members:
        day = utc_day(m.created_at)
        days[day] = days.get(day, 0) + 1
    # Newest first by time (ids break ties), as the stores that keep groups page them.
    newest = sorted(members, key=lambda m: (m.created_at, m.id), reverse=True)
    if before is not None:
        cut = next((i for i, m in enumerate(newest) if m.id == before), None)
        newest = newest[cut + 1 :] if cut is not None else [m for m in newest if m.id < before]
    return GroupDetail(group, newest[:limit], sorted(days.items()))
