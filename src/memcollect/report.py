"""A report of a period: what recurred most, what is new, what is rising, where it came from,
and whether the collector is well; as a structure, JSON, Markdown or one HTML file."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import msgspec

from .groups import Group, GroupQuery, fingerprint, grouped
from .model import DeadLetter, Memory
from .stats import Health, Stats

if TYPE_CHECKING:
    from .collector import MemoryCollector

__all__ = ["Report", "ReportGroup", "Summary", "Tally", "build_report", "summary_of"]

#: The most dead letters a report counts one by one; beyond, it says "at least".
DEAD_LETTERS_COUNTED = 1000


class ReportGroup(msgspec.Struct, frozen=True):
    """A group in a report, with its memories per day over the period before and this one."""

    group: Group
    #: (day, count) for every day of both periods, the day as UTC midnight in epoch seconds.
    daily: list[tuple[float, int]]


class Tally(msgspec.Struct, frozen=True):
    """How many memories one category, project or agent had, in the period and the one before."""

    name: str
    count: int
    before: int


class Summary(msgspec.Struct, frozen=True):
    """What the store holds for a period: totals, groups, and where the memories came from."""

    total: int
    total_before: int
    #: How many groups had memories in the period, and how many of them were first seen in it.
    groups: int
    new_groups: int
    #: (day, count) of every memory, for every day of both periods.
    daily: list[tuple[float, int]]
    top: list[ReportGroup]
    new: list[ReportGroup]
    rising: list[ReportGroup]
    by_category: list[Tally]
    by_project: list[Tally]
    by_agent: list[Tally]


class Report(msgspec.Struct, frozen=True):
    """A period in review: the store's summary, its dead letters and the collector's health."""

    since: float
    until: float
    generated_at: float
    backend: str
    summary: Summary
    #: How many dead letters the store keeps (at most DEAD_LETTERS_COUNTED are counted).
    dead_letters: int
    #: The newest few, to show what failed.
    dead_letter_samples: list[DeadLetter]
    health: Health
    stats: Stats

    def to_json(self) -> str:
        """The report as one JSON document."""
        return msgspec.json.encode(self).decode()

    def to_markdown(self) -> str:
        """The report as Markdown."""
        from .report_render import markdown

        return markdown(self)

    def to_html(self) -> str:
        """The report as one self-contained HTML page with its charts."""
        from .report_render import html_page

        return html_page(self)


def _day(seconds: float) -> float:
    return float(int(seconds // 86400) * 86400)


# A report's days are at most two years of them (the last): its charts show no more.
_MOST_DAYS = 731


def _days(start: float, end: float) -> list[float]:
    first, last = _day(start), _day(max(start, end - 1e-6))
    first = max(first, last - 86400 * (_MOST_DAYS - 1))
    return [first + 86400 * i for i in range(int((last - first) // 86400) + 1)]


def _tallies(inside: dict[str, int], before: dict[str, int]) -> list[Tally]:
    names = sorted(set(inside) | set(before), key=lambda n: (-inside.get(n, 0), n))
    return [Tally(n, inside.get(n, 0), before.get(n, 0)) for n in names]


#: A row of a period for a summary: (fingerprint, created_at, category, project, agent).
PeriodRow = tuple[str, float, str, str | None, str | None]


def summary_from_rows(
    rows: Iterable[PeriodRow],
    first_seen: dict[str, float],
    query: GroupQuery,
    groups_for: Callable[[list[str], dict[str, tuple[int, int]]], list[Group]],
) -> Summary:
    """A summary from the rows of the period and the one before it, the first time each
    group was seen, and a way to get the Group of each fingerprint chosen (with its counts
    in the period and the one before)."""
    since, until = query.since or 0.0, query.until or 0.0
    start = since - (until - since)
    inside: dict[str, int] = {}
    before: dict[str, int] = {}
    days: dict[str, dict[float, int]] = {}
    now: dict[str, dict[str, int]] = {"category": {}, "project": {}, "agent": {}}
    then: dict[str, dict[str, int]] = {"category": {}, "project": {}, "agent": {}}
    for key, at, category, project, agent in rows:
        if not start <= at < until:
            continue
        counts, tally = (inside, now) if at >= since else (before, then)
        counts[key] = counts.get(key, 0) + 1
        per_day = days.setdefault(key, {})
        per_day[_day(at)] = per_day.get(_day(at), 0) + 1
        for field, name in (("category", category), ("project", project), ("agent", agent)):
            if name:
                tally[field][name] = tally[field].get(name, 0) + 1
    top = sorted(inside, key=lambda k: (-inside[k], k))
    new = sorted((k for k in top if first_seen[k] >= since),
                 key=lambda k: (-inside[k], -first_seen[k], k))  # fmt: skip
    # Rising: seen before this period and more often in it than in the one before (a group
    # first seen in the period is "new", not rising).
    rising = sorted((k for k in top if first_seen[k] < since and inside[k] > before.get(k, 0)),
                    key=lambda k: (before.get(k, 0) - inside[k], k))  # fmt: skip
    limit = query.limit
    chosen = list(dict.fromkeys([*top[:limit], *new[:limit], *rising[:limit]]))
    made = {g.fingerprint: g for g in
            groups_for(chosen, {k: (inside[k], before.get(k, 0)) for k in chosen})}  # fmt: skip
    all_days = _days(start, until)

    def listed(keys: list[str]) -> list[ReportGroup]:
        return [
            ReportGroup(made[k], [(d, days[k].get(d, 0)) for d in all_days])
            for k in keys[:limit]
            if k in made
        ]

    daily = dict.fromkeys(all_days, 0)
    for per_day in days.values():
        for d, n in per_day.items():
            if d in daily:
                daily[d] += n
    return Summary(
        total=sum(inside.values()),
        total_before=sum(before.values()),
        groups=len(top),
        new_groups=len(new),
        daily=list(daily.items()),
        top=listed(top),
        new=listed(new),
        rising=listed(rising),
        by_category=_tallies(now["category"], then["category"]),
        by_project=_tallies(now["project"], then["project"]),
        by_agent=_tallies(now["agent"], then["agent"]),
    )


def summary_of(memories: Iterable[Memory], query: GroupQuery, limit: int) -> Summary:
    """A period's summary computed from the memories themselves, in one pass."""
    kept = [
        m for m in memories
        if (query.category is None or m.category == query.category)
        and (query.project is None or m.project == query.project)
        and (query.agent is None or m.agent == query.agent)
    ]  # fmt: skip
    everyone = {g.fingerprint: g for g, _ in grouped(kept, GroupQuery(limit=limit))}
    rows = [(fingerprint(m), m.created_at, m.category, m.project, m.agent) for m in kept]

    def groups_for(keys: list[str], counts: dict[str, tuple[int, int]]) -> list[Group]:
        return [
            msgspec.structs.replace(everyone[k], in_period=counts[k][0],
                                    before_period=counts[k][1])
            for k in keys
        ]  # fmt: skip

    firsts = {k: g.first_seen for k, g in everyone.items()}
    return summary_from_rows(rows, firsts, msgspec.structs.replace(query, limit=limit), groups_for)


def build_report(
    collector: MemoryCollector,
    *,
    since: object = "7d",
    until: object = None,
    category: str | None = None,
    project: str | None = None,
    agent: str | None = None,
    limit: int = 10,
) -> Report:
    """The report MemoryCollector.report() returns."""
    from .errors import ValidationError
    from .groups import group_query

    if since is None:
        raise ValidationError('a report needs a period: pass since= (an age such as "7d")')
    query = group_query(category=category, project=project, agent=agent, since=since,
                        until=until, limit=limit)  # fmt: skip
    since = query.since if query.since is not None else 0.0
    # An until before since is an empty period, as in groups() and search(): nothing in it.
    end = max(since, query.until if query.until is not None else time.time())
    query = msgspec.structs.replace(query, since=since, until=end)
    backend = collector.backend
    letters = backend.dead_letters(DEAD_LETTERS_COUNTED)
    return Report(
        since=since,
        until=end,
        generated_at=time.time(),
        backend=backend.url,
        summary=backend.summary(query),
        dead_letters=len(letters),
        dead_letter_samples=letters[-5:][::-1],
        health=collector.health(),
        stats=collector.stats(),
    )
