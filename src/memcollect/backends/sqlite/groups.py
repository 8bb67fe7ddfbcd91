"""Groups of memories sharing a fingerprint, kept by the SQLite store with its rows."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from ...groups import Group, GroupDetail, GroupQuery, fingerprint_of
from ...model import PRIORITIES
from .schema import _COLUMNS, _from_row

__all__ = ["add_groups", "fingerprint_backlog", "read_group", "read_groups", "refresh_groups"]

_DAY = "CAST(created_at / 86400 AS INTEGER)"

# The rows chosen by a WHERE clause on `memories`, counted into their groups and days.
_ADD_GROUPS = """
INSERT INTO groups (fingerprint, category, representative, priority, count, first_seen,
                    last_seen)
SELECT fingerprint, min(category), min(id), max(priority), count(*), min(created_at),
       max(created_at)
FROM memories WHERE fingerprint != '' AND {where} GROUP BY fingerprint
ON CONFLICT (fingerprint) DO UPDATE SET
    count = count + excluded.count,
    priority = max(priority, excluded.priority),
    representative = min(representative, excluded.representative),
    first_seen = min(first_seen, excluded.first_seen),
    last_seen = max(last_seen, excluded.last_seen)
"""
_ADD_DAYS = f"""
INSERT INTO group_days (day, fingerprint, count)
SELECT {_DAY}, fingerprint, count(*) FROM memories
WHERE fingerprint != '' AND {{where}} GROUP BY 1, 2
ON CONFLICT (day, fingerprint) DO UPDATE SET count = count + excluded.count
"""


def add_groups(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> None:
    """Count the rows matching `where` into their groups, in the caller's transaction."""
    conn.execute(_ADD_GROUPS.format(where=where), params)
    conn.execute(_ADD_DAYS.format(where=where), params)


def refresh_groups(conn: sqlite3.Connection, fingerprints: set[str]) -> None:
    """Make these groups true to the rows again (after a delete): counts, days, times, and a
    representative that is still stored; a group left with no memory goes."""
    for fingerprint in fingerprints:
        conn.execute("DELETE FROM groups WHERE fingerprint = ?", (fingerprint,))
        conn.execute("DELETE FROM group_days WHERE fingerprint = ?", (fingerprint,))
        add_groups(conn, "fingerprint = ?", (fingerprint,))


# Rows stored before groups existed (or by an older version) are fingerprinted this many at
# a time, in the writer's idle time and before a read of groups.
BACKLOG_CHUNK = 4096


def fingerprint_backlog(conn: sqlite3.Connection, limit: int = BACKLOG_CHUNK) -> int:
    """Fingerprint and group up to `limit` rows that have no fingerprint; how many."""
    rows = conn.execute(
        "SELECT seq, category, content FROM memories WHERE fingerprint = '' "
        "AND id NOT LIKE char(0) || '%' ORDER BY seq LIMIT ?",
        (limit,),
    ).fetchall()
    if not rows:
        return 0
    conn.executemany(
        "UPDATE memories SET fingerprint = ? WHERE seq = ?",
        [(fingerprint_of(category, content), seq) for seq, category, content in rows],
    )
    seqs = "[" + ",".join(str(r[0]) for r in rows) + "]"
    add_groups(conn, "seq IN (SELECT value FROM json_each(?))", (seqs,))
    return len(rows)


_GROUP_COLUMNS = "g.fingerprint, g.category, g.priority, g.count, g.first_seen, g.last_seen"
_MEMBER_COLUMNS = ", ".join(f"m.{c}" for c in _COLUMNS.split(", "))


def _group(row: Sequence[Any], in_period: int = 0, before: int = 0) -> Group:
    fingerprint, category, priority, count, first, last = row[:6]
    representative = _from_row(row[6:])
    return Group(fingerprint, category, representative, PRIORITIES[priority], count, first,
                 last, in_period or count, before)  # fmt: skip


def _day(seconds: float) -> int:
    return int(seconds // 86400)


def read_groups(conn: sqlite3.Connection, query: GroupQuery) -> list[Group]:
    """groups(): from the groups table, or its days for a period (counted in whole UTC
    days); filters on the members (project, agent) count the rows themselves."""
    if query.member_filters():
        return _groups_from_rows(conn, query)
    where: list[str] = ["1"]
    params: list[Any] = []
    if query.category is not None:
        where.append("g.category = ?")
        params.append(query.category)
    if query.order == "new" and query.since is not None:
        where.append("g.first_seen >= ?")
        params.append(query.since)
    period = query.since is not None or query.until is not None
    if not period:
        order = {"count": "g.count DESC", "last_seen": "g.last_seen DESC",
                 "new": "g.first_seen DESC"}[query.order]  # fmt: skip
        rows = conn.execute(
            f"SELECT {_GROUP_COLUMNS}, {_MEMBER_COLUMNS} FROM groups g "
            f"JOIN memories m ON m.id = g.representative WHERE {' AND '.join(where)} "
            f"ORDER BY {order}, g.fingerprint LIMIT ?",
            [*params, query.limit],
        ).fetchall()
        return [_group(r) for r in rows]
    start = _day(query.since) if query.since is not None else 0
    end = _day(query.until if query.until is not None else time.time())
    counts = (
        "coalesce((SELECT sum(d.count) FROM group_days d WHERE d.fingerprint = g.fingerprint "
        "AND d.day BETWEEN ? AND ?), 0)"
    )
    span = end - start + 1
    rising = query.order == "rising"
    order = {
        "count": "inside DESC",
        "last_seen": "last_seen DESC",
        "new": "first_seen DESC",
        "rising": "inside - earlier DESC",
    }[query.order]
    rows = conn.execute(
        f"SELECT * FROM (SELECT {counts} AS inside, "
        f"{counts if rising else '0'} AS earlier, {_GROUP_COLUMNS}, {_MEMBER_COLUMNS} "
        f"FROM groups g JOIN memories m ON m.id = g.representative "
        f"WHERE {' AND '.join(where)}) WHERE inside > 0 "
        f"ORDER BY {order}, fingerprint LIMIT ?",
        [start, end, *([start - span, start - 1] if rising else []), *params, query.limit],
    ).fetchall()
    return [_group(r[2:], int(r[0]), int(r[1] or 0)) for r in rows]


def _groups_from_rows(conn: sqlite3.Connection, query: GroupQuery) -> list[Group]:
    """Groups counted from the rows that pass the member filters (a scan of those rows)."""
    from ...groups import groups_of

    where, params = ["fingerprint != ''"], []
    for column in ("category", "project", "agent"):
        value = getattr(query, column)
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM memories WHERE {' AND '.join(where)}", params
    ).fetchall()
    return groups_of((_from_row(r) for r in rows), query)


_SEQ_OF = "SELECT seq FROM memories WHERE id = ?"


def read_group(
    conn: sqlite3.Connection, fingerprint: str, limit: int, before: str | None
) -> GroupDetail | None:
    """One group, a page of its members (newest first, before the id `before`), and its
    memories per day."""
    row = conn.execute(
        f"SELECT {_GROUP_COLUMNS}, {_MEMBER_COLUMNS} FROM groups g "
        "JOIN memories m ON m.id = g.representative WHERE g.fingerprint = ?",
        (fingerprint,),
    ).fetchone()
    if row is None:
        return None
    # Paged by seq (the index's order), the page's last id naming where the next begins.
    below = conn.execute(_SEQ_OF, (before,)).fetchone() if before else None
    members = conn.execute(
        f"SELECT {_COLUMNS} FROM memories WHERE fingerprint = ? AND seq < ? "
        "ORDER BY seq DESC LIMIT ?",
        (fingerprint, below[0] if below else 1 << 62, limit),
    ).fetchall()
    daily = conn.execute(
        "SELECT day, count FROM group_days WHERE fingerprint = ? ORDER BY day", (fingerprint,)
    ).fetchall()
    return GroupDetail(
        _group(row), [_from_row(r) for r in members], [(day * 86400.0, n) for day, n in daily]
    )
