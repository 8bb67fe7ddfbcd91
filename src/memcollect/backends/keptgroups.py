"""Groups kept by a SQL store beside its rows, off the write path; what SQLite and PostgreSQL
share of it.

Each store folds its newly stored rows into two tables, a chunk a transaction, in the
writer's quiet moments and before any read of groups (how it finds the new rows is its own:
a watermark on SQLite's seq, a queue a trigger fills on PostgreSQL):

- `group_members`, one narrow row a memory: its group key, time, category, project, agent
  and priority, by time (what fell in a period) and by group (a group's members, its days);
- `groups`, one row a group: category, the first stored member, highest priority, count,
  first and last seen.

Deletes recount the groups they touch, in the same transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from ..groups import Group, GroupDetail, GroupQuery, fingerprint_of
from ..model import PRIORITIES, Memory
from ..report import PeriodCounts, Summary, summary_from_counts

__all__ = ["Dialect", "IdleFolds", "KeptGroupReads", "fold_rows", "recount"]

log = logging.getLogger("memcollect")

GROUP_COLUMNS = "fingerprint, category, representative, priority, count, first_seen, last_seen"
MEMBER_COLUMNS = "created_at, member, group_key, category, project, agent, priority"

# Ids a query names at once (SQLite before 3.32 takes at most 999 parameters).
_PAGE = 500


class Dialect(NamedTuple):
    """How one SQL store spells what the shared reads need."""

    #: The parameter mark.
    mark: str
    #: A row's day (UTC midnight, epoch seconds) from its created_at.
    day: str
    #: The column of `memories` a member refers to.
    key: str
    #: "x IN (...)" for a list of values: the SQL for `n` of them.
    within: Callable[[int], str]
    #: Whether `within` takes the list as one parameter (an array) rather than one each.
    array: bool


def fold_rows(
    rows: Sequence[tuple[Any, ...]],
) -> tuple[list[tuple[Any, ...]], list[list[Any]]]:
    """Member rows and group upserts for stored rows (member, category, content, priority,
    created_at, content_hash, own fingerprint, project, agent), in key order: the indexes
    and the groups' B-tree are then written page after page, not a page a row at random."""
    members: list[tuple[Any, ...]] = []
    groups: dict[str, list[Any]] = {}
    known: dict[tuple[str, str], str] = {}
    for member, category, content, priority, at, content_hash, own, project, agent in rows:
        key = own
        if not key:
            # Events repeat: the same content in a chunk is fingerprinted once.
            cached = known.get((category, content_hash)) if content_hash else None
            key = cached or fingerprint_of(category, content)
            if content_hash:
                known[(category, content_hash)] = key
        members.append((at, member, key, category, project, agent, priority))
        found = groups.get(key)
        if found is None:
            groups[key] = [key, category, member, priority, 1, at, at]
        else:
            found[2] = min(found[2], member)
            found[3] = max(found[3], priority)
            found[4] += 1
            found[5] = min(found[5], at)
            found[6] = max(found[6], at)
    members.sort(key=lambda m: (m[2], m[0]))
    return members, [groups[k] for k in sorted(groups)]


class IdleFolds:
    """Folding in the worker's quiet moments: a failure (the store unreachable, locked) is
    logged once, waits with a growing pause, and shows in health until a fold succeeds."""

    def __init__(self, chunk: int, where: str) -> None:
        self.chunk = chunk
        self.where = where
        self.error: str | None = None
        self._failures = 0
        self._retry_at = 0.0

    def written(self) -> None:
        """A write just succeeded: the store is reachable, so a fold failed for being unable
        to reach it is tried again at once (and only a fold that fails again says so)."""
        self.error, self._retry_at = None, 0.0

    def step(self, fold: Callable[[], int], limit: int | None = None) -> bool:
        """Fold one chunk (of `limit` rows, or the whole chunk) unless pausing after a
        failure; True while more waits."""
        if time.monotonic() < self._retry_at:
            return False
        try:
            done = fold()
        except Exception as exc:  # noqa: BLE001 - retried later; reads fold (and say) too
            self._failures += 1
            self._retry_at = time.monotonic() + min(60.0, 0.5 * 2 ** min(self._failures, 7))
            if self.error != str(exc):
                log.warning("%s: folding memories into groups failed, retrying: %s",
                            self.where, exc)  # fmt: skip
            self.error = str(exc)
            return False
        self._failures, self.error = 0, None
        return done == (self.chunk if limit is None else limit)


class KeptGroupReads:
    """groups(), group() and a report's summary, read from the kept tables."""

    def __init__(
        self,
        dialect: Dialect,
        read: Callable[[str, Sequence[Any]], list[Any]],
        columns: str,
        from_row: Callable[[Sequence[Any]], Memory],
    ) -> None:
        self.sql = dialect
        self._read = read
        self._columns = ", ".join(f"m.{c.strip()}" for c in columns.split(","))
        self._from_row = from_row

    def _pages(self, values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
        """`IN` clauses and their parameters, a page of values at a time."""
        for start in range(0, len(values), _PAGE):
            page = list(values[start : start + _PAGE])
            yield self.sql.within(len(page)), ([page] if self.sql.array else page)

    # --- groups() ------------------------------------------------------------------------

    def groups(self, query: GroupQuery) -> list[Group]:
        """Groups by the query's order, with the query's filters and period."""
        if query.project is not None or query.agent is not None:
            return self._filtered(query)
        if query.since is None and query.until is None:
            if query.order == "last_seen":
                return self._last_seen(query)
            order = "count DESC" if query.order == "count" else "first_seen DESC"
            where, params = self._filters(query)
            rows = self._read(
                f"SELECT {GROUP_COLUMNS} FROM groups "
                + (f"WHERE {' AND '.join(where)} " if where else "")
                + f"ORDER BY {order}, fingerprint LIMIT {self.sql.mark}",
                [*params, query.limit],
            )
            return self.with_representatives(rows, {})
        return self._in_period(query)

    def _filters(self, query: GroupQuery) -> tuple[list[str], list[Any]]:
        """The query's category, project and agent as SQL conditions and their values."""
        where, params = [], []
        for field in ("category", "project", "agent"):
            value = getattr(query, field)
            if value is not None:
                where.append(f"{field} = {self.sql.mark}")
                params.append(value)
        return where, params

    def _period(self, query: GroupQuery, start: float, end: float) -> tuple[str, list[Any]]:
        mark = self.sql.mark
        where, params = self._filters(query)
        where = [f"created_at >= {mark}", f"created_at < {mark}", *where]
        return " AND ".join(where), [start, end, *params]

    def _groups_of(self, keys: list[str], counts: dict[str, tuple[int, int]]) -> list[Group]:
        """The Groups of these keys, in their order (keys no longer kept left out)."""
        rows = self.group_rows(keys)
        return self.with_representatives([rows[k] for k in keys if k in rows], counts)

    def _in_period(self, query: GroupQuery) -> list[Group]:
        """Groups with members in the period, counted and ranked in SQL: only the groups
        asked for leave the database."""
        mark = self.sql.mark
        since = query.since if query.since is not None else float("-inf")
        until = query.until if query.until is not None else float("inf")
        # Only "rising" compares with the period before: its rows are counted too.
        earlier = query.before() if query.order == "rising" else None
        where, params = self._period(query, min(earlier[0], since) if earlier else since, until)
        counted = (
            f"SELECT group_key AS key, count(*) FILTER (WHERE created_at >= {mark}) AS inside, "
            f"count(*) FILTER (WHERE created_at < {mark}) AS before FROM group_members "
            f"WHERE {where} GROUP BY group_key"
        )
        new_since = query.order == "new" and query.since is not None
        columns = ", ".join(f"g.{c.strip()}" for c in GROUP_COLUMNS.split(","))
        limit = [query.limit]
        if query.order in ("count", "rising"):
            # Ranked on the counts alone, then joined: only `limit` groups are looked up.
            order = ("c.inside DESC, c.key" if query.order == "count"
                     else "c.before - c.inside, c.key")  # fmt: skip
            sql = (
                f"SELECT {columns}, c.inside, c.before FROM (SELECT * FROM ({counted}) AS c "
                f"WHERE c.inside > 0 ORDER BY {order} LIMIT {mark}) AS c "
                f"JOIN groups g ON g.fingerprint = c.key ORDER BY {order}"
            )
            args = [since, since, *params, *limit]
        else:
            order = ("g.last_seen DESC, c.key" if query.order == "last_seen"
                     else "g.first_seen DESC, c.key")  # fmt: skip
            first = f"AND g.first_seen >= {mark} " if new_since else ""
            sql = (
                f"SELECT {columns}, c.inside, c.before FROM ({counted}) AS c "
                f"JOIN groups g ON g.fingerprint = c.key WHERE c.inside > 0 {first}"
                f"ORDER BY {order} LIMIT {mark}"
            )
            args = [since, since, *params, *([query.since] if new_since else []), *limit]
        rows = self._read(sql, args)
        counts = {row[0]: (int(row[7]), int(row[8])) for row in rows}
        return self.with_representatives([row[:7] for row in rows], counts)

    def _last_seen(self, query: GroupQuery) -> list[Group]:
        """The groups seen most recently: the newest members, read back in time until
        `limit` groups are found (an index on last_seen would be rewritten at every fold)."""
        mark = self.sql.mark
        conditions, params = self._filters(query)
        where = "".join(f"{c} AND " for c in conditions)
        newest: dict[str, float] = {}
        cursor: list[Any] = [float("inf"), None]
        while True:
            after = (f"(created_at, member) < ({mark}, {mark})" if cursor[1] is not None
                     else f"created_at < {mark}")  # fmt: skip
            page = self._read(
                f"SELECT group_key, created_at, member FROM group_members WHERE {where}{after} "
                "ORDER BY created_at DESC, member DESC LIMIT 1000",
                [*params, *(cursor if cursor[1] is not None else cursor[:1])],
            )
            for key, at, _ in page:
                newest.setdefault(key, at)
            if len(page) < 1000:
                break
            # Done once past the time of the limit-th group found: none seen later is left.
            if len(newest) >= query.limit and page[-1][1] < list(newest.values())[query.limit - 1]:
                break
            cursor = [page[-1][1], page[-1][2]]
        return self._groups_of(sorted(newest, key=lambda k: (-newest[k], k))[: query.limit], {})

    def _filtered(self, query: GroupQuery) -> list[Group]:
        """Groups of the memories of a project or an agent: every figure counted over those
        members alone (the kept groups count every member), in SQL."""
        mark = self.sql.mark
        where, params = self._filters(query)
        period = query.since is not None or query.until is not None
        since = query.since if query.since is not None else float("-inf")
        until = query.until if query.until is not None else float("inf")
        earlier = query.before() if query.order == "rising" else None
        start, end = earlier if earlier else (since, since)
        inside = f"count(*) FILTER (WHERE created_at >= {mark} AND created_at < {mark})"
        before = f"count(*) FILTER (WHERE created_at >= {mark} AND created_at < {mark})"
        keep = ["inside > 0"] if period else []
        if query.order == "new" and query.since is not None:
            keep.append(f"first_seen >= {mark}")
        order = {
            "count": "inside DESC" if period else "count DESC",
            "last_seen": "last_seen DESC",
            "new": "first_seen DESC",
            "rising": "before - inside",
        }[query.order]
        rows = self._read(
            "SELECT * FROM (SELECT group_key AS fingerprint, max(category) AS category, "
            "min(member) AS representative, max(priority) AS priority, count(*) AS count, "
            "min(created_at) AS first_seen, max(created_at) AS last_seen, "
            f"{inside} AS inside, {before} AS before FROM group_members "
            f"WHERE {' AND '.join(where)} GROUP BY group_key) AS f "
            + (f"WHERE {' AND '.join(keep)} " if keep else "")
            + f"ORDER BY {order}, fingerprint LIMIT {mark}",
            [since, until, start, end, *params,
             *([query.since] if query.order == "new" and query.since is not None else []),
             query.limit],
        )  # fmt: skip
        counts = {r[0]: ((int(r[7]) if period else int(r[4])), int(r[8])) for r in rows}
        return self.with_representatives([r[:7] for r in rows], counts)

    def group_rows(self, keys: Sequence[str]) -> dict[str, Any]:
        """The kept rows of these groups, by fingerprint."""
        found: dict[str, Any] = {}
        for within, params in self._pages(keys):
            for row in self._read(
                f"SELECT {GROUP_COLUMNS} FROM groups WHERE fingerprint {within}", params
            ):
                found[row[0]] = row
        return found

    def with_representatives(
        self, rows: Sequence[Any], counts: dict[str, tuple[int, int]]
    ) -> list[Group]:
        """Groups from their kept rows, each with its first stored member; `counts` are
        (in the period, in the one before) where a period was asked for."""
        memories: dict[Any, Memory] = {}
        for within, params in self._pages([row[2] for row in rows]):
            for row in self._read(
                f"SELECT m.{self.sql.key}, {self._columns} FROM memories m "
                f"WHERE m.{self.sql.key} {within}",
                params,
            ):
                memories[row[0]] = self._from_row(row[1:])
        out = []
        for key, category, member, priority, count, first, last in rows:
            inside, before = counts.get(key, (count, 0))  # no period: all of it
            out.append(
                Group(
                    key,
                    category,
                    memories[member],
                    PRIORITIES[priority],
                    int(count),
                    first,
                    last,
                    inside,
                    before,
                )
            )
        return out

    # --- group() -------------------------------------------------------------------------

    def group(self, fingerprint: str, limit: int, before: str | None) -> GroupDetail | None:
        """One group, a page of its newest members (after the member with the id `before`)
        and its memories per day."""
        mark, key = self.sql.mark, self.sql.key
        rows = self.group_rows([fingerprint])
        if fingerprint not in rows:
            return None
        (group,) = self.with_representatives([rows[fingerprint]], {})
        params: list[Any] = [fingerprint]
        after = ""
        if before is not None:
            after = (f" AND (g.created_at, m.id) < (SELECT created_at, id FROM memories "
                     f"WHERE id = {mark})")  # fmt: skip
            params.append(before)
        members = self._read(
            f"SELECT {self._columns} FROM group_members g JOIN memories m ON m.{key} = g.member "
            f"WHERE g.group_key = {mark}{after} ORDER BY g.created_at DESC, m.id DESC "
            f"LIMIT {mark}",
            [*params, limit],
        )
        days = self._read(
            f"SELECT {self.sql.day}, count(*) FROM group_members WHERE group_key = {mark} "
            "GROUP BY 1 ORDER BY 1",
            [fingerprint],
        )
        return GroupDetail(
            group, [self._from_row(r) for r in members], [(float(d), int(n)) for d, n in days]
        )

    # --- summary -------------------------------------------------------------------------

    def summary(self, query: GroupQuery) -> Summary:
        """A report's summary, counted in SQL over the members of the two periods."""
        mark = self.sql.mark
        since, until = query.since or 0.0, query.until or 0.0
        start = since - (until - since)
        where, params = self._period(query, start, until)
        counts = PeriodCounts()
        # Counted and ranked in SQL: on varied text nearly every memory is a group of its
        # own, and only the groups listed (and the totals) need to leave the database.
        limit = query.limit
        per_group = (
            "SELECT p.key, p.inside, p.before, g.first_seen FROM (SELECT group_key AS key, "
            f"count(*) FILTER (WHERE created_at >= {mark}) AS inside, "
            f"count(*) FILTER (WHERE created_at < {mark}) AS before "
            f"FROM group_members WHERE {where} GROUP BY group_key) AS p "
            "JOIN groups g ON g.fingerprint = p.key"
        )
        lists = {
            "top": "inside > 0 ORDER BY inside DESC, key",
            "new": f"inside > 0 AND first_seen >= {mark} "
            "ORDER BY inside DESC, first_seen DESC, key",
            "rising": f"first_seen < {mark} AND inside > before ORDER BY before - inside, key",
        }
        selects = [
            f"SELECT * FROM (SELECT '{name}' AS list, key, inside, before FROM q WHERE {rule} "
            f"LIMIT {mark}) AS {name}"
            for name, rule in lists.items()
        ]
        totals = (
            "SELECT 'totals', NULL, count(*) FILTER (WHERE inside > 0), "
            f"count(*) FILTER (WHERE inside > 0 AND first_seen >= {mark}) FROM q "
            "UNION ALL SELECT 'sums', NULL, coalesce(sum(inside), 0), coalesce(sum(before), 0) "
            "FROM q"
        )
        for name, key, inside, before in self._read(
            # Used five times: both SQLite (3.35+) and PostgreSQL compute it once.
            f"WITH q AS ({per_group}) " + " UNION ALL ".join([*selects, totals]),
            [since, since, *params, limit, since, limit, since, limit, since],
        ):
            if name == "totals":
                counts.groups, counts.new_groups = int(inside), int(before)
            elif name == "sums":
                counts.total, counts.total_before = int(inside), int(before)
            else:
                counts.ranked[name].append(key)
                counts.counted[key] = (int(inside), int(before))
        for category, project, agent, day, in_period, n in self._read(
            f"SELECT category, project, agent, {self.sql.day}, created_at >= {mark}, count(*) "
            f"FROM group_members WHERE {where} GROUP BY 1, 2, 3, 4, 5",
            [since, *params],
        ):
            counts.facets[(category, project, agent, float(day), bool(in_period))] = int(n)

        def days_of(keys: list[str]) -> dict[str, dict[float, int]]:
            days: dict[str, dict[float, int]] = {}
            for within, chosen in self._pages(keys):
                for key, day, n in self._read(
                    f"SELECT group_key, {self.sql.day}, count(*) FROM group_members "
                    f"WHERE group_key {within} AND created_at >= {mark} AND created_at < {mark} "
                    "GROUP BY 1, 2",
                    [*chosen, start, until],
                ):
                    days.setdefault(key, {})[float(day)] = int(n)
            return days

        return summary_from_counts(counts, days_of, self._groups_of, query)


def recount(execute: Callable[[str, Sequence[Any]], Any], mark: str, keys: Iterable[str]) -> None:
    """Recount the groups that lost members (in the delete's transaction); a group with no
    member left is gone."""
    for key in sorted(keys):  # in key order, as folds take them: no deadlock between the two
        count, first, last, representative, priority = execute(
            "SELECT count(*), min(created_at), max(created_at), min(member), max(priority) "
            f"FROM group_members WHERE group_key = {mark}",
            [key],
        ).fetchone()
        if not count:
            execute(f"DELETE FROM groups WHERE fingerprint = {mark}", [key])
        else:
            execute(
                f"UPDATE groups SET count = {mark}, first_seen = {mark}, last_seen = {mark}, "
                f"representative = {mark}, priority = {mark} WHERE fingerprint = {mark}",
                [count, first, last, representative, priority, key],
            )
