"""Groups kept in the SQLite file: stored rows folded into them off the write path.

Writing a memory costs nothing here. In the worker's quiet moments, and before any read of
groups, the rows stored since the last fold (by any process) are folded, a chunk a
transaction: each row's fingerprint goes into its `group_key` column, and its group's row
(count, first and last seen, highest priority, the first stored member) is updated. Two
partial indexes, which hold only folded rows and so cost the write path nothing, answer the
reads: by group key (a group's members, its days) and by time (what fell in a period).
Deletes recount the groups they touch in the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from ...groups import Group, GroupDetail, GroupQuery, fingerprint_of, groups_of
from ...model import PRIORITIES, Memory
from ...report import PeriodCounts, Summary, summary_from_counts
from .schema import _COLUMNS, _from_row
from .vectors import SemanticSearch

__all__ = ["FOLD_CHUNK", "KeptGroups"]

#: Rows folded in one transaction: a few tens of milliseconds of the write lock.
FOLD_CHUNK = 4096

_UPTO = "SELECT CAST(value AS INTEGER) FROM memcollect_meta WHERE key = 'groups_upto'"
_SET_UPTO = "INSERT OR REPLACE INTO memcollect_meta VALUES ('groups_upto', ?)"
_GROUP_COLUMNS = "fingerprint, category, representative, priority, count, first_seen, last_seen"
_UPSERT = (
    f"INSERT INTO groups ({_GROUP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (fingerprint) DO UPDATE SET count = count + excluded.count, "
    "first_seen = min(first_seen, excluded.first_seen), "
    "last_seen = max(last_seen, excluded.last_seen), "
    "priority = max(priority, excluded.priority), "
    "representative = min(representative, excluded.representative)"
)
# A group's row from its folded members (after a delete took some away).
_RECOUNT = (
    "SELECT count(*), min(created_at), max(created_at), min(seq), max(priority) "
    "FROM memories WHERE group_key = ? AND group_key != '' AND seq <= ?"
)


class KeptGroups(SemanticSearch):
    """groups(), group() and report summaries from groups kept in the file."""

    def _embed_step(self) -> bool:
        """One step of the embedding that waits (the store's own); True while more waits."""
        return False

    def __init__(self, url: str) -> None:
        super().__init__(url)
        # Whether this process stored rows that may not be folded yet.
        self._fold_behind = True

    # --- folding -------------------------------------------------------------------------

    def _fold(self, conn: sqlite3.Connection, limit: int) -> int:
        """Fold up to `limit` rows stored after the watermark; how many."""
        upto = conn.execute(_UPTO).fetchone()
        start = int(upto[0]) if upto is not None else 0
        rows = conn.execute(
            "SELECT seq, category, content, priority, created_at, content_hash, fingerprint "
            "FROM memories WHERE seq > ? ORDER BY seq LIMIT ?",
            (start, limit),
        ).fetchall()
        if not rows:
            return 0
        keys: list[tuple[str, int]] = []
        groups: dict[str, list[Any]] = {}
        known: dict[tuple[str, str], str] = {}
        for seq, category, content, priority, created_at, content_hash, own in rows:
            key = own
            if not key:
                # Events repeat: the same content in a chunk is fingerprinted once.
                cached = known.get((category, content_hash)) if content_hash else None
                key = cached or fingerprint_of(category, content)
                if content_hash:
                    known[(category, content_hash)] = key
            keys.append((key, seq))
            found = groups.get(key)
            if found is None:
                groups[key] = [key, category, seq, priority, 1, created_at, created_at]
            else:
                found[3] = max(found[3], priority)
                found[4] += 1
                found[5] = min(found[5], created_at)
                found[6] = max(found[6], created_at)
        # In key order: the index and the groups' B-tree are then written page after page,
        # not a page a row at random.
        keys.sort()
        conn.executemany("UPDATE memories SET group_key = ? WHERE seq = ?", keys)
        conn.executemany(_UPSERT, [groups[k] for k in sorted(groups)])
        conn.execute(_SET_UPTO, (rows[-1][0],))
        return len(rows)

    def _fold_chunk(self) -> int:
        done: list[int] = []
        self._write(lambda conn: done.append(self._fold(conn, FOLD_CHUNK)))
        return done[0]

    def fold_groups(self) -> None:
        """Fold every row stored so far, by any process, into the groups."""
        # A read first: when nothing waits, a read of groups takes no write lock.
        top, upto = self._read(f"SELECT (SELECT coalesce(max(seq), 0) FROM memories), ({_UPTO})")[0]
        if upto is not None and int(upto) >= top:
            self._fold_behind = False
            return
        while self._fold_chunk() == FOLD_CHUNK:
            pass
        self._fold_behind = False

    def idle_work(self) -> bool:
        """Embed what waits for its vector, and fold a chunk of new rows into the groups;
        True while more of either is waiting."""
        more = self._embed_step()
        if self._fold_behind:
            self._fold_behind = self._fold_chunk() == FOLD_CHUNK
        return more or self._fold_behind

    def _stored_rows(self) -> None:
        """A batch was stored: its rows wait for the next fold."""
        self._fold_behind = True

    def _groups_before_delete(self, conn: sqlite3.Connection, seqs: list[tuple[int]]) -> set[str]:
        """The folded groups the rows about to be deleted belong to."""
        keys: set[str] = set()
        for (seq,) in seqs:
            row = conn.execute("SELECT group_key FROM memories WHERE seq = ?", (seq,)).fetchone()
            if row is not None and row[0]:
                keys.add(row[0])
        return keys

    def _groups_after_delete(self, conn: sqlite3.Connection, keys: Iterable[str]) -> None:
        """Recount the groups that lost members; a group with none left is gone."""
        upto_row = conn.execute(_UPTO).fetchone()
        upto = int(upto_row[0]) if upto_row is not None else 0
        for key in keys:
            count, first, last, representative, priority = conn.execute(
                _RECOUNT, (key, upto)
            ).fetchone()
            if not count:
                conn.execute("DELETE FROM groups WHERE fingerprint = ?", (key,))
            else:
                conn.execute(
                    "UPDATE groups SET count = ?, first_seen = ?, last_seen = ?, "
                    "representative = ?, priority = ? WHERE fingerprint = ?",
                    (count, first, last, representative, priority, key),
                )

    # --- reads ---------------------------------------------------------------------------

    def groups(self, query: GroupQuery) -> list[Group]:
        """Groups by the query's order, from the kept groups (memories of a project or an
        agent are grouped from their rows)."""
        if query.project is not None or query.agent is not None:
            return groups_of(self._members_of(query), query)
        self.fold_groups()
        if query.since is None and query.until is None:
            if query.order == "last_seen":
                return self._last_seen(query)
            order = "count DESC" if query.order == "count" else "first_seen DESC"
            where, params = ("WHERE category = ?", [query.category]) if query.category else ("", [])
            rows = self._read(
                f"SELECT {_GROUP_COLUMNS} FROM groups {where} ORDER BY {order}, fingerprint "
                "LIMIT ?",
                [*params, query.limit],
            )
            return self._with_representatives(rows, {})
        return self._groups_in_period(query)

    def _last_seen(self, query: GroupQuery) -> list[Group]:
        """The groups seen most recently: the newest folded rows, read back in time until
        `limit` groups are found (no index on last_seen to keep up at every fold)."""
        where = "group_key != ''" + (" AND category = ?" if query.category else "")
        params: list[Any] = [query.category] if query.category else []
        newest: dict[str, float] = {}
        cursor: tuple[float, int] = (float("inf"), 0)
        while True:
            page = self._read(
                f"SELECT group_key, created_at, seq FROM memories WHERE {where} AND "
                "(created_at, seq) < (?, ?) ORDER BY created_at DESC, seq DESC LIMIT 1000",
                [*params, *cursor],
            )
            for key, at, _ in page:
                newest.setdefault(key, at)
            if len(page) < 1000:
                break
            # Done once past the time of the limit-th group found: no group seen later is left.
            if len(newest) >= query.limit and page[-1][1] < list(newest.values())[query.limit - 1]:
                break
            cursor = (page[-1][1], page[-1][2])
        chosen = sorted(newest, key=lambda k: (-newest[k], k))[: query.limit]
        rows = self._group_rows(chosen)
        return self._with_representatives([rows[k] for k in chosen if k in rows], {})

    def _period_counts(self, query: GroupQuery, start: float, end: float) -> dict[str, int]:
        where, params = self._period_where(query, start, end)
        rows = self._read(
            f"SELECT group_key, count(*) FROM memories WHERE {where} GROUP BY group_key", params
        )
        return dict(rows)

    def _period_where(self, query: GroupQuery, start: float, end: float) -> tuple[str, list[Any]]:
        where = "group_key != '' AND created_at >= ? AND created_at < ?"
        params: list[Any] = [start, end]
        if query.category is not None:
            where += " AND category = ?"
            params.append(query.category)
        return where, params

    def _groups_in_period(self, query: GroupQuery) -> list[Group]:
        since = query.since if query.since is not None else float("-inf")
        until = query.until if query.until is not None else float("inf")
        inside = self._period_counts(query, since, until)
        # Only "rising" compares with the period before.
        before_period = query.before() if query.order == "rising" else None
        before = self._period_counts(query, *before_period) if before_period else {}
        if query.order == "rising":
            ranked = sorted(inside, key=lambda k: (before.get(k, 0) - inside[k], k))
        elif query.order in ("count",):
            ranked = sorted(inside, key=lambda k: (-inside[k], k))
        else:
            rows = self._group_rows(list(inside))
            field = 6 if query.order == "last_seen" else 5
            ranked = sorted(
                (k for k in inside
                 if query.order != "new" or query.since is None or rows[k][5] >= query.since),
                key=lambda k: (-rows[k][field], k),
            )  # fmt: skip
        chosen = ranked[: query.limit]
        rows = self._group_rows(chosen)
        counts = {k: (inside[k], before.get(k, 0)) for k in chosen}
        return self._with_representatives([rows[k] for k in chosen if k in rows], counts)

    def _group_rows(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):
            page = keys[start : start + 500]
            marks = ",".join("?" * len(page))
            for row in self._read(
                f"SELECT {_GROUP_COLUMNS} FROM groups WHERE fingerprint IN ({marks})", page
            ):
                found[row[0]] = row
        return found

    def _with_representatives(
        self, rows: Sequence[Any], counts: dict[str, tuple[int, int]]
    ) -> list[Group]:
        seqs = [row[2] for row in rows]
        memories: dict[int, Memory] = {}
        for start in range(0, len(seqs), 500):
            page = seqs[start : start + 500]
            marks = ",".join("?" * len(page))
            for row in self._read(
                f"SELECT seq, {_COLUMNS} FROM memories WHERE seq IN ({marks})", page
            ):
                memories[row[0]] = _from_row(row[1:])
        out = []
        for key, category, seq, priority, count, first, last in rows:
            inside, before = counts.get(key, (count, 0))  # no period: all of it
            out.append(
                Group(
                    key,
                    category,
                    memories[seq],
                    PRIORITIES[priority],
                    count,
                    first,
                    last,
                    inside,
                    before,
                )
            )
        return out

    def group(
        self, fingerprint: str, limit: int = 20, before: str | None = None
    ) -> GroupDetail | None:
        """One kept group, a page of its newest members and its memories per day."""
        self.fold_groups()
        rows = self._group_rows([fingerprint])
        if fingerprint not in rows:
            return None
        (group,) = self._with_representatives([rows[fingerprint]], {})
        params: list[Any] = [fingerprint]
        after = ""
        if before is not None:
            after = " AND (created_at, id) < (SELECT created_at, id FROM memories WHERE id = ?)"
            params.append(before)
        members = self._read(
            f"SELECT {_COLUMNS} FROM memories WHERE group_key = ? AND group_key != ''{after} "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        days = self._read(
            "SELECT CAST(created_at / 86400 AS INTEGER) * 86400.0, count(*) FROM memories "
            "WHERE group_key = ? AND group_key != '' GROUP BY 1 ORDER BY 1",
            (fingerprint,),
        )
        return GroupDetail(group, [_from_row(r) for r in members], [(d, n) for d, n in days])

    def summary(self, query: GroupQuery) -> Summary:
        """A report's summary, counted in SQL over the folded rows of the two periods."""
        if query.project is not None or query.agent is not None:
            return super().summary(query)
        self.fold_groups()
        since, until = query.since or 0.0, query.until or 0.0
        start = since - (until - since)
        where, params = self._period_where(query, start, until)
        counts = PeriodCounts()
        firsts: dict[str, float] = {}
        for key, inside, before, first in self._read(
            "SELECT p.key, p.inside, p.before, g.first_seen FROM (SELECT group_key AS key, "
            "sum(created_at >= ?) AS inside, sum(created_at < ?) AS before FROM memories "
            f"WHERE {where} GROUP BY group_key) AS p JOIN groups g ON g.fingerprint = p.key",
            [since, since, *params],
        ):
            if inside:
                counts.inside[key] = inside
            if before:
                counts.before[key] = before
            firsts[key] = first
        for category, project, agent, day, in_period, n in self._read(
            "SELECT category, project, agent, CAST(created_at / 86400 AS INTEGER) * 86400.0, "
            f"created_at >= ?, count(*) FROM memories WHERE {where} GROUP BY 1, 2, 3, 4, 5",
            [since, *params],
        ):
            counts.facets[(category, project, agent, day, bool(in_period))] = n

        def days_of(keys: list[str]) -> dict[str, dict[float, int]]:
            days: dict[str, dict[float, int]] = {}
            for page in range(0, len(keys), 500):
                chosen = keys[page : page + 500]
                for key, day, n in self._read(
                    "SELECT group_key, CAST(created_at / 86400 AS INTEGER) * 86400.0, count(*) "
                    f"FROM memories WHERE group_key IN ({','.join('?' * len(chosen))}) AND "
                    "group_key != '' AND created_at >= ? AND created_at < ? GROUP BY 1, 2",
                    [*chosen, start, until],
                ):
                    days.setdefault(key, {})[day] = n
            return days

        def groups_for(keys: list[str], counted: dict[str, tuple[int, int]]) -> list[Group]:
            rows = self._group_rows(keys)
            return self._with_representatives([rows[k] for k in keys if k in rows], counted)

        return summary_from_counts(counts, lambda _: firsts, days_of, groups_for, query)

    def _members_of(self, query: GroupQuery) -> Iterable[Memory]:
        """The memories a query's filters admit, read a page at a time."""
        where, params = "seq > ?", []
        for field in ("category", "project", "agent"):
            value = getattr(query, field)
            if value is not None:
                where += f" AND {field} = ?"
                params.append(value)
        after = 0
        while True:
            page = self._read(
                f"SELECT seq, {_COLUMNS} FROM memories WHERE {where} ORDER BY seq LIMIT 1000",
                [after, *params],
            )
            if not page:
                return
            for row in page:
                yield _from_row(row[1:])
            after = page[-1][0]
