"""A report of a period: what recurred most, what is new, what is rising, where it came from,
and whether the collector is well; as a structure, JSON, Markdown or one HTML file."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from .groups import Group, GroupQuery, grouped
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


def _days(start: float, end: float) -> list[float]:
    first, last = _day(start), _day(max(start, end - 1e-6))
    return [first + 86400 * i for i in range(int((last - first) // 86400) + 1)]


def _series(times: Iterable[float], start: float, end: float) -> list[tuple[float, int]]:
    counts = dict.fromkeys(_days(start, end), 0)
    for at in times:
        if start <= at < end:
            counts[_day(at)] += 1
    return list(counts.items())


def _tallies(inside: dict[str, int], before: dict[str, int]) -> list[Tally]:
    names = sorted(set(inside) | set(before), key=lambda n: (-inside.get(n, 0), n))
    return [Tally(n, inside.get(n, 0), before.get(n, 0)) for n in names]


def summary_of(memories: Iterable[Memory], query: GroupQuery, limit: int) -> Summary:
    """A period's summary computed from the memories themselves, in one pass."""
    since, until = query.since or 0.0, query.until or 0.0
    start = since - (until - since)
    kept: list[Memory] = []
    now: dict[str, dict[str, int]] = {"category": {}, "project": {}, "agent": {}}
    then: dict[str, dict[str, int]] = {"category": {}, "project": {}, "agent": {}}
    for m in memories:
        if (
            (query.category is not None and m.category != query.category)
            or (query.project is not None and m.project != query.project)
            or (query.agent is not None and m.agent != query.agent)
        ):
            continue
        kept.append(m)
        if start <= m.created_at < until:
            tally = now if m.created_at >= since else then
            for key, name in (("category", m.category), ("project", m.project),
                              ("agent", m.agent)):  # fmt: skip
                if name:
                    tally[key][name] = tally[key].get(name, 0) + 1
    pairs = grouped(kept, query)
    members = {g.fingerprint: ms for g, ms in pairs}

    def with_series(groups: list[Group]) -> list[ReportGroup]:
        return [
            ReportGroup(g, _series((m.created_at for m in members[g.fingerprint]), start, until))
            for g in groups[:limit]
        ]

    everyone = [g for g, _ in pairs]
    top = sorted(everyone, key=lambda g: (-g.in_period, g.fingerprint))
    new = sorted((g for g in everyone if g.first_seen >= since),
                 key=lambda g: (-g.in_period, -g.first_seen, g.fingerprint))  # fmt: skip
    # Rising: seen before this period and more often in it than in the one before (a group
    # first seen in the period is "new", not rising).
    rising = sorted((g for g in everyone
                     if g.first_seen < since and g.in_period > g.before_period),
                    key=lambda g: (g.before_period - g.in_period, g.fingerprint))  # fmt: skip
    in_period = [m.created_at for m in kept if since <= m.created_at < until]
    return Summary(
        total=len(in_period),
        total_before=sum(1 for m in kept if start <= m.created_at < since),
        groups=len(top),
        new_groups=len(new),
        daily=_series((m.created_at for m in kept), start, until),
        top=with_series(top),
        new=with_series(new),
        rising=with_series(rising),
        by_category=_tallies(now["category"], then["category"]),
        by_project=_tallies(now["project"], then["project"]),
        by_agent=_tallies(now["agent"], then["agent"]),
    )


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
