"""A report of a period: what recurred most, what is new, what is rising, where it came from,
and whether the collector is well; as a structure, JSON, Markdown or one HTML file."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import msgspec

from .groups import Group, GroupQuery, fingerprint, grouped, utc_day
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


# A report's days are at most two years of them (the last): its charts show no more.
_MOST_DAYS = 731


def _days(start: float, end: float) -> list[float]:
    first, last = utc_day(start), utc_day(max(start, end - 1e-6))
    first = max(first, last - 86400 * (_MOST_DAYS - 1))
    return [first + 86400 * i for i in range(int((last - first) // 86400) + 1)]


def _tallies(inside: dict[str, int], before: dict[str, int]) -> list[Tally]:
    names = sorted(set(inside) | set(before), key=lambda n: (-inside.get(n, 0), n))
    return [Tally(n, inside.get(n, 0), before.get(n, 0)) for n in names]


class PeriodCounts:
    """What a store counted over a period and the one before it, for a summary: the groups
    each list shows (best first) with their counts, the totals, and the memories by facet."""

    def __init__(self) -> None:
        #: "top", "new", "rising": the keys of the groups each lists, best first.
        self.ranked: dict[str, list[str]] = {"top": [], "new": [], "rising": []}
        #: (in the period, in the period before) of each key ranked.
        self.counted: dict[str, tuple[int, int]] = {}
        self.total = self.total_before = self.groups = self.new_groups = 0
        #: Memories per (category, project, agent, day, in the period or not).
        self.facets: dict[tuple[str, str | None, str | None, float, bool], int] = {}
        # Memories per key in the period and the one before, for rank() (add() fills them).
        self._inside: dict[str, int] = {}
        self._before: dict[str, int] = {}

    def add(self, key: str, memory: Memory, since: float) -> None:
        """Count one memory of the group `key` (it falls in one of the two periods)."""
        at = memory.created_at
        into = self._inside if at >= since else self._before
        into[key] = into.get(key, 0) + 1
        facet = (memory.category, memory.project, memory.agent, utc_day(at), at >= since)
        self.facets[facet] = self.facets.get(facet, 0) + 1

    def rank(self, firsts: dict[str, float], since: float, limit: int) -> None:
        """Rank every group counted by add(), as the stores that count in SQL do."""
        inside, before = self._inside, self._before
        top = sorted(inside, key=lambda k: (-inside[k], k))
        new = sorted((k for k in top if firsts[k] >= since),
                     key=lambda k: (-inside[k], -firsts[k], k))  # fmt: skip
        # Rising: seen before this period and more often in it than in the one before (a
        # group first seen in the period is "new", not rising).
        rising = sorted((k for k in top if firsts[k] < since and inside[k] > before.get(k, 0)),
                        key=lambda k: (before.get(k, 0) - inside[k], k))  # fmt: skip
        self.ranked = {"top": top[:limit], "new": new[:limit], "rising": rising[:limit]}
        for keys in self.ranked.values():
            self.counted.update({k: (inside[k], before.get(k, 0)) for k in keys})
        self.total, self.total_before = sum(inside.values()), sum(before.values())
        self.groups, self.new_groups = len(top), len(new)


def summary_from_counts(
    counts: PeriodCounts,
    days_of: Callable[[list[str]], dict[str, dict[float, int]]],
    groups_for: Callable[[list[str], dict[str, tuple[int, int]]], list[Group]],
    query: GroupQuery,
) -> Summary:
    """A summary from a store's counts, with ways to get what it needs of the groups listed
    only: their memories per day, and their Groups (given their counts)."""
    since, until = query.since or 0.0, query.until or 0.0
    start = since - (until - since)
    ranked = counts.ranked
    chosen = list(dict.fromkeys([*ranked["top"], *ranked["new"], *ranked["rising"]]))
    made = {g.fingerprint: g for g in groups_for(chosen, counts.counted)}
    days = days_of(chosen)
    all_days = _days(start, until)

    def listed(keys: list[str]) -> list[ReportGroup]:
        return [
            ReportGroup(made[k], [(d, days.get(k, {}).get(d, 0)) for d in all_days])
            for k in keys
            if k in made
        ]

    daily = dict.fromkeys(all_days, 0)
    now: dict[str, dict[str, int]] = {"category": {}, "project": {}, "agent": {}}
    then: dict[str, dict[str, int]] = {"category": {}, "project": {}, "agent": {}}
    for (category, project, agent, day, in_period), n in counts.facets.items():
        if day in daily:
            daily[day] += n
        tally = now if in_period else then
        for field, name in (("category", category), ("project", project), ("agent", agent)):
            if name:
                tally[field][name] = tally[field].get(name, 0) + n
    return Summary(
        total=counts.total,
        total_before=counts.total_before,
        groups=counts.groups,
        new_groups=counts.new_groups,
        daily=list(daily.items()),
        top=listed(ranked["top"]),
        new=listed(ranked["new"]),
        rising=listed(ranked["rising"]),
        by_category=_tallies(now["category"], then["category"]),
        by_project=_tallies(now["project"], then["project"]),
        by_agent=_tallies(now["agent"], then["agent"]),
    )


def summary_of(memories: Iterable[Memory], query: GroupQuery) -> Summary:
    """A period's summary computed from the memories themselves, in one pass."""
    kept = [m for m in memories if query.admits(m)]
    everyone = {g.fingerprint: g for g, _ in grouped(kept, GroupQuery())}
    since, until = query.since or 0.0, query.until or 0.0
    start = since - (until - since)
    counts = PeriodCounts()
    days: dict[str, dict[float, int]] = {}
    for m in kept:
        if start <= m.created_at < until:
            key = fingerprint(m)
            counts.add(key, m, since)
            per_day = days.setdefault(key, {})
            per_day[utc_day(m.created_at)] = per_day.get(utc_day(m.created_at), 0) + 1
    counts.rank({k: g.first_seen for k, g in everyone.items()}, since, query.limit)

    def groups_for(keys: list[str], counted: dict[str, tuple[int, int]]) -> list[Group]:
        return [
            msgspec.structs.replace(everyone[k], in_period=counted[k][0],
                                    before_period=counted[k][1])
            for k in keys
        ]  # fmt: skip

    return summary_from_counts(counts, lambda keys: {k: days[k] for k in keys}, groups_for,
                               query)  # fmt: skip


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
