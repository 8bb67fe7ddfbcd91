"""A PostgreSQL store's upkeep where autovacuum does not do it: the planner's statistics and
the full-text index's pending entries."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .pgwatch import one_line

__all__ = ["Upkeep"]

log = logging.getLogger("memcollect")

# How often the worker looks at what changed since it last looked.
CHECK_EVERY_S = 60.0
# Analyzed once this many rows changed, plus a tenth of the table (autovacuum's own default
# rule, with a higher floor: a small table is planned well enough without).
CHANGED_FLOOR = 1000


class Upkeep:
    """In the worker's quiet moments, at most once a minute: the full-text index's pending
    entries merged once rows were added, and `memories` analyzed once a tenth of it changed.

    Both are autovacuum's work, which a server may not do (autovacuum off) or not yet (a
    first load). Without statistics the planner guesses a common word matches a few thousand
    rows where it matches tens of thousands, and reads every one; a GIN index's pending list
    (up to 4 MB of new entries, kept unsorted) is read through by every search, ~3 ms each
    at a million memories (bench/search_million.py)."""

    def __init__(
        self,
        connect: Callable[[], AbstractContextManager[Any]],
        where: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._where = where
        self._clock = clock
        self._next_check = clock()
        self._inserted_seen = 0
        self.error: str | None = None

    def step(self) -> list[str]:
        """Do what is due; what that was ("merged", "analyzed"). A failure is logged once
        and tried at the next check."""
        now = self._clock()
        if now < self._next_check:
            return []
        self._next_check = now + CHECK_EVERY_S
        done = []
        try:
            with self._connect() as conn:
                row = conn.execute(
                    "SELECT n_mod_since_analyze, n_live_tup, n_tup_ins FROM pg_stat_user_tables "
                    "WHERE relid = 'memories'::regclass"
                ).fetchone()
                if row is None:
                    return []
                changed, live, inserted = row
                if inserted != self._inserted_seen:
                    conn.execute("SELECT gin_clean_pending_list('memories_search'::regclass)")
                    self._inserted_seen = inserted
                    done.append("merged")
                if changed > CHANGED_FLOOR + live // 10:
                    conn.execute("ANALYZE memories")
                    done.append("analyzed")
        except Exception as exc:  # noqa: BLE001 - the upkeep waits for the next check
            message = one_line(str(exc))
            if self.error != message:
                log.warning("%s: upkeep of the memories table failed: %s", self._where, message)
            self.error = message
            return done
        self.error = None
        return done
