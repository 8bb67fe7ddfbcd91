"""Fingerprints and groups: what keeps happening, on every store alike."""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memcollect as mc
from memcollect.groups import fingerprint_of, normalize

from .services import ThreadedServer, drop_schema, require_postgres

Make = Callable[..., mc.MemoryCollector]


@pytest.mark.parametrize(
    ("content", "normalized"),
    [
        (
            "Timeout after 3000 ms calling https://pay.example/v2/charge for order 8812",
            "timeout after <num> ms calling <url> for order <num>",
        ),
        (
            "KeyError: 'user_id' in /srv/app/checkout.py line 42",
            "keyerror: <str> in <path> line <num>",
        ),
        (
            "User ann@example.com failed at 2026-12-01T12:30:01Z from 10.0.0.12:8080",
            "user <email> failed at <time> from <ip>",
        ),
        (
            "Request 1b4e28ba-2fa1-11d2-883f-0016d3cca427 took 1.5s, digest deadbeef12ab",
            "request <uuid> took <num>s, digest <hex>",
        ),
        ("user_8812 retried 3 times (v2 API)", "<id> retried <num> times (<id> api)"),
        ("see src/app.py and C:\\app\\x.py", "see <path> and <path>"),
        ("  Love   the new UI ", "love the new ui"),
    ],
)
def test_normalize_replaces_what_varies(content: str, normalized: str) -> None:
    assert normalize(content) == normalized


def test_occurrences_of_one_event_share_a_fingerprint_and_categories_do_not() -> None:
    first = fingerprint_of("error", "Timeout after 3000 ms calling https://a/x for order 8812")
    again = fingerprint_of("error", "Timeout after 5012 ms calling https://b/y for order 9120")
    assert first == again and len(first) == 16
    assert fingerprint_of("bug", "Timeout after 3000 ms") != fingerprint_of(
        "error", "Timeout after 3000 ms"
    )
    assert fingerprint_of("bug", "Login fails on Safari") != fingerprint_of(
        "bug", "Login works on Safari"
    )


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_has_a_fingerprint_and_normalizing_is_stable(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once
    assert len(fingerprint_of("note", text)) == 16


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=12),
            st.sampled_from(["3000ms", "v2", "/var/log/a.log", "a@b.io", "10.0.0.1:80", "0x7f"]),
            st.sampled_from([" ", "\t", "\n", "\x1f", "\u00a0", "\u2003", "\u3000"]),
        ),
        max_size=30,
    ).map("".join)
)
def test_normalizing_skips_only_words_that_need_no_look(text: str) -> None:
    from memcollect.groups import _QUOTED, _URL, _word

    # The definition: split on whitespace, look at each word holding a digit or an address
    # sign, join with single spaces.
    lowered = text.lower()
    lowered = _QUOTED.sub("<str>", lowered)
    lowered = _URL.sub("<url>", lowered) if "://" in lowered else lowered
    look = re.compile(r"[\d/\\@]").search
    words = [_word(w) if look(w) else w for w in lowered.split()]
    assert normalize(text) == " ".join(words)


def fill(c: mc.MemoryCollector) -> None:
    for i in range(12):
        c.collect("bug", f"Login fails on Safari {16 + i % 3}", project="web", agent="qa")
    for i in range(5):
        c.collect("error", f"Timeout after {i * 100 + 7} ms on order {i}", priority="critical")
    c.collect("feedback", "Love the new UI", project="app")
    c.collect("note", "release notes drafted", fingerprint="release-notes")
    c.collect("note", "release notes for 1.4 reviewed", fingerprint="release-notes")
    assert c.flush(30)


def test_groups_count_what_keeps_happening(make_collector: Make, store_url: str) -> None:
    c = make_collector(store_url)
    fill(c)
    groups = c.groups()
    assert [(g.category, g.count) for g in groups] == [
        ("bug", 12),
        ("error", 5),
        ("note", 2),
        ("feedback", 1),
    ]
    bug = groups[0]
    assert bug.priority == "high" and groups[1].priority == "critical"
    assert bug.representative.content == "Login fails on Safari 16"  # the first stored
    assert bug.first_seen <= bug.last_seen
    assert sum(g.count for g in groups) == c.count()
    assert groups[2].fingerprint == "release-notes"  # the caller's own
    assert [g.count for g in c.groups(category="error")] == [5]
    assert [g.count for g in c.groups(project="web")] == [12]
    assert [g.count for g in c.groups(agent="nobody")] == []
    assert len(c.groups(limit=2)) == 2
    assert c.groups(order="last_seen")[0].category == "note"
    assert c.groups(order="new")[0].category == "note"


def test_a_period_counts_what_fell_in_it(make_collector: Make, store_url: str) -> None:
    c = make_collector(store_url)
    now = time.time()
    old = [
        mc.Memory(mc.new_id(), "bug", "Checkout fails", {}, "high", (), None, None, None, t)
        for t in (now - 20 * 86400, now - 19 * 86400, now - 10 * 86400)
    ]
    c.collect_memories(old)
    for _ in range(3):
        c.collect("bug", "Search is slow")
    c.collect("bug", "Checkout fails")
    assert c.flush(30)
    week = c.groups(since="7d")
    assert {g.representative.content: (g.count, g.in_period) for g in week} == {
        "Search is slow": (3, 3),
        "Checkout fails": (4, 1),
    }
    # Rising: this week against the week before (which held one checkout failure).
    rising = c.groups(order="rising", since="7d")
    assert [(g.representative.content, g.in_period - g.before_period) for g in rising] == [
        ("Search is slow", 3),
        ("Checkout fails", 0),
    ]
    assert [g.representative.content for g in c.groups(order="new", since="7d")] == [
        "Search is slow"
    ]
    assert c.groups(until=now - 30 * 86400) == []


def test_a_group_shows_its_members_a_page_at_a_time_and_its_days(
    make_collector: Make, store_url: str
) -> None:
    c = make_collector(store_url)
    fill(c)
    bug = c.groups()[0]
    detail = c.group(bug.fingerprint, limit=5)
    assert detail is not None and detail.group.count == 12
    assert len(detail.members) == 5
    ids = [m.id for m in detail.members]
    assert ids == sorted(ids, reverse=True)  # newest first
    seen = list(ids)
    while True:
        page = c.group(bug.fingerprint, limit=5, before=seen[-1])
        assert page is not None
        if not page.members:
            break
        seen += [m.id for m in page.members]
    assert len(seen) == len(set(seen)) == 12
    assert sum(n for _, n in detail.daily) == 12
    assert all(day % 86400 == 0 for day, _ in detail.daily)
    assert c.group("0000000000000000") is None


def test_deletes_keep_groups_true(make_collector: Make, store_url: str) -> None:
    c = make_collector(store_url)
    fill(c)
    bug = c.groups()[0]
    first = bug.representative
    assert c.delete(first.id) == 1
    after = c.group(bug.fingerprint)
    assert after is not None and after.group.count == 11
    assert after.group.representative.id != first.id  # one still stored stands for it
    assert after.group.first_seen > bug.first_seen
    assert c.delete(category="error") == 5
    assert [g.category for g in c.groups()] == ["bug", "note", "feedback"]
    assert c.group(c.groups()[0].fingerprint) is not None
    assert sum(g.count for g in c.groups()) == c.count()


def test_bad_arguments_are_one_sentence(make_collector: Make) -> None:
    c = make_collector("memory://")
    with pytest.raises(mc.ValidationError, match="order must be one of count, last_seen"):
        c.groups(order="biggest")
    with pytest.raises(mc.ValidationError, match="since '7x' is not a time"):
        c.groups(since="7x")
    with pytest.raises(mc.ValidationError, match="fingerprint must be a str"):
        c.collect("bug", "x", fingerprint="")
    with pytest.raises(mc.ValidationError, match="limit must be"):
        c.groups(limit=0)


def test_since_takes_the_same_forms_in_search(make_collector: Make) -> None:
    c = make_collector("memory://")
    c.collect("bug", "Login fails")
    assert c.flush(10)
    assert len(c.search("login", since="2h")) == 1
    assert c.search("login", since="2026-01-01T00:00:00+00:00", until="2026-01-02") == []
    assert len(c.search("login", since=str(time.time() - 60))) == 1


def test_a_store_written_before_groups_were_kept_folds_its_rows(
    make_collector: Make, tmp_path: Path
) -> None:
    from memcollect.backends.sqlite import MIGRATIONS

    path = tmp_path / "v5.db"
    with sqlite3.connect(path) as conn:  # as version 5 wrote it: rows, no groups
        conn.execute("CREATE TABLE memcollect_meta (key TEXT PRIMARY KEY, value TEXT)")
        for number, ddl in MIGRATIONS:
            if number <= 5:
                conn.executescript(ddl)
        conn.execute("INSERT INTO memcollect_meta VALUES ('schema_version', '5')")
        rows = [(f"Login fails on Safari {16 + i % 3}", "bug", "") for i in range(12)]
        rows += [(f"Timeout after {i * 100 + 7} ms", "error", "") for i in range(5)]
        rows += [("release notes drafted", "note", "release-notes")] * 2
        conn.executemany(
            "INSERT INTO memories (id, category, content, priority, created_at, fingerprint) "
            "VALUES (?, ?, ?, 2, ?, ?)",
            [(mc.new_id(), cat, text, time.time(), own) for text, cat, own in rows],
        )
    again = make_collector(f"sqlite:///{path}", data_dir=str(tmp_path / "b"))
    groups = again.groups()
    assert [(g.category, g.count) for g in groups] == [("bug", 12), ("error", 5), ("note", 2)]
    assert groups[2].fingerprint == "release-notes"  # a caller's own, kept in the row
    assert sum(g.count for g in groups) == again.count() == 19
    with sqlite3.connect(path) as conn:
        kept = conn.execute("SELECT count(*), sum(count) FROM groups").fetchone()
    assert kept == (3, 19)


def test_groups_are_kept_off_the_write_path_and_folded_before_a_read(
    make_collector: Make, tmp_path: Path
) -> None:
    from memcollect.backends.sqlite import FOLD_CHUNK, SQLiteBackend

    path = tmp_path / "kept.db"
    c = make_collector(f"sqlite:///{path}")
    # More rows than one fold takes, written by another process's store directly: nothing
    # folds them in this collector's quiet moments, so the read must.
    other = mc.MemoryCollector(f"sqlite:///{path}", data_dir=str(tmp_path / "o"))
    n = FOLD_CHUNK + 100
    other.collect_batch(
        [{"category": "error", "content": f"Disk full on db-{i % 7}"} for i in range(n)]
    )
    assert other.flush(60)
    other.close()
    (group,) = c.groups()
    assert group.count == n and group.representative.content == "Disk full on db-0"
    detail = c.group(group.fingerprint, limit=3)
    assert detail is not None and len(detail.members) == 3 and sum(x for _, x in detail.daily) == n
    with sqlite3.connect(path) as conn:
        unfolded = conn.execute(
            "SELECT count(*) FROM memories WHERE seq NOT IN (SELECT member FROM group_members)"
        ).fetchone()
        upto = conn.execute("SELECT value FROM memcollect_meta WHERE key = 'groups_upto'")
        top = conn.execute("SELECT max(seq) FROM memories").fetchone()[0]
        assert unfolded == (0,) and int(upto.fetchone()[0]) == top
    # A period reads the folded rows by time; a delete recounts its group at once.
    assert [g.in_period for g in c.groups(since="1h")] == [n]
    # Each fold had a larger page cache for its transaction alone: the writer is back at 2 MB.
    backend = c._backend
    assert isinstance(backend, SQLiteBackend) and backend._writer is not None
    assert backend._writer.execute("PRAGMA cache_size").fetchone() == (-2000,)
    assert c.delete(category="error", timeout=30) == n
    assert c.groups() == [] and c.group(group.fingerprint) is None


def test_the_command_line_shows_groups_and_one_group(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from memcollect.cli import cli

    url = f"sqlite:///{tmp_path}/cli.db"
    c = mc.MemoryCollector(url, data_dir=str(tmp_path / "w"))
    fill(c)
    c.close()
    runner = CliRunner()
    shown = runner.invoke(cli, ["groups", "--backend", url, "--limit", "2"])
    assert shown.exit_code == 0, shown.output
    assert "12x" in shown.output and "Login fails on Safari 16" in shown.output
    assert "Love the new UI" not in shown.output  # past the limit
    lines = runner.invoke(cli, ["groups", "--backend", url, "--json", "--category", "error"])
    assert [json.loads(line)["count"] for line in lines.output.splitlines()] == [5]
    fingerprint = json.loads(lines.output.splitlines()[0])["fingerprint"]
    one = runner.invoke(cli, ["groups", fingerprint, "--backend", url, "--limit", "2"])
    assert one.exit_code == 0 and "per day (UTC)" in one.output
    assert one.output.count("Timeout after") == 3  # the group's, then its two newest
    missing = runner.invoke(cli, ["groups", "nope", "--backend", url])
    assert missing.exit_code == 1 and "no stored memory has the fingerprint" in missing.output
    bad = runner.invoke(cli, ["groups", "--backend", url, "--since", "7x"])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert "since" in bad.output and "is not a time" in bad.output


def test_the_server_answers_groups_and_a_missing_one_is_404(tmp_path: Path) -> None:
    import httpx

    with ThreadedServer(
        backend=f"sqlite:///{tmp_path}/s.db", data_dir=str(tmp_path / "s"), token=""
    ) as server:
        c = mc.MemoryCollector(server.url, data_dir=str(tmp_path / "c"))
        fill(c)
        c.close()
        groups = httpx.get(f"{server.url}/v1/groups", params={"since": "1d"}).json()
        assert [g["count"] for g in groups][:2] == [12, 5]
        fingerprint = groups[0]["fingerprint"]
        detail = httpx.get(f"{server.url}/v1/groups/{fingerprint}", params={"limit": 3}).json()
        assert detail["group"]["count"] == 12 and len(detail["members"]) == 3
        missing = httpx.get(f"{server.url}/v1/groups/nope")
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        bad = httpx.get(f"{server.url}/v1/groups", params={"order": "biggest"})
        assert bad.status_code == 422


def test_first_seen_is_the_earliest_even_when_imported_out_of_order(make_collector: Make) -> None:
    c = make_collector("memory://")
    now = time.time()
    later = mc.Memory(mc.new_id(), "bug", "Cart empties", {}, "high", (), None, None, None, now)
    earlier = mc.Memory(mc.new_id(), "bug", "Cart empties", {}, "high", (), None, None, None,
                        now - 30 * 86400)  # fmt: skip
    c.collect_memories([later, earlier])  # the older one gets the newer id
    assert c.flush(30)
    (group,) = c.groups()
    assert (group.first_seen, group.last_seen) == (earlier.created_at, later.created_at)
    assert c.groups(order="new", since="7d") == []  # it was first seen a month ago


def test_a_collapsed_search_keeps_one_hit_per_group(make_collector: Make, store_url: str) -> None:
    c = make_collector(store_url)
    fill(c)
    plain = c.search("Safari", limit=5)
    assert len(plain) == 5 and len({m.content[:22] for m in plain}) == 1  # a wall of one
    hits = c.search_scored("Safari OR timeout OR UI", limit=5, collapse=True, mode="text")
    by_group = {h.fingerprint: h.matches for h in hits}
    assert len(by_group) == len(hits)  # one hit per group
    safari = c.groups(category="bug")[0].fingerprint
    assert by_group[safari] == 12  # it stands for every matching memory of its group
    assert len(c.search("Safari", collapse=True)) == 1
    assert all(h.matches == 1 and h.fingerprint == "" for h in c.search_scored("Safari"))
    with pytest.raises(mc.ValidationError, match="collapse must be True or False"):
        c.search("Safari", collapse="yes")  # type: ignore[arg-type]


_CONTENTS = ["Disk full on db-1", "Disk full on db-2", "Login fails", "Cart empties", "x 'a'"]


_ROWS = st.lists(
    st.tuples(
        st.sampled_from(["bug", "error"]),
        st.sampled_from(_CONTENTS),
        st.integers(0, 20),  # days ago (ties on one time included)
        st.sampled_from(["low", "high", "critical"]),
        st.sampled_from([None, "shop"]),
        st.sampled_from([None, "a"]),
    ),
    min_size=1,
    max_size=40,
)
_DELETED = st.sets(st.integers(0, 39), max_size=10)


Row = tuple[str, str, int, str, str | None, str | None]


def kept_answers_as_counted(kept: mc.Backend, rows: list[Row], deleted: set[int]) -> None:
    """A store keeping groups answers every groups() query, group() and summary as the
    groups counted from the same rows in memory, after a first fold and deletes."""
    from memcollect.backends.memory import MemoryBackend
    from memcollect.groups import group_query

    now = 1_800_000_000.0
    memories = [
        mc.Memory(
            mc.new_id(), cat, text, {}, priority, (), project, agent, None, now - days * 86400
        )
        for cat, text, days, priority, project, agent in rows
    ]
    counted = MemoryBackend("memory://")
    for store in (kept, counted):
        store.write_batch(memories[: len(memories) // 2])
        store.write_batch(memories[len(memories) // 2 :])
    for store in (kept, counted):  # after a first read folded: deletes must recount
        store.groups(group_query())
        store.delete([memories[i].id for i in deleted if i < len(memories)])
    for order in ("count", "last_seen", "new", "rising"):
        for since, until in ((None, None), (now - 7 * 86400, now + 1), (now - 3 * 86400, None)):
            for category, project, agent in (
                (None, None, None),
                ("bug", None, None),
                (None, "shop", None),
                ("bug", None, "a"),
            ):
                query = group_query(
                    order=order,
                    since=since,
                    until=until,
                    category=category,
                    project=project,
                    agent=agent,
                )
                assert kept.groups(query) == counted.groups(query), (order, since, category)
    for group in counted.groups(group_query(limit=100)):
        assert kept.group(group.fingerprint, 100) == counted.group(group.fingerprint, 100)
    for days in (1, 7, 30):
        period = group_query(since=now - days * 86400, until=now + 1, limit=3)
        assert kept.summary(period) == counted.summary(period), days


@settings(max_examples=100, deadline=None)
@given(_ROWS, _DELETED)
def test_sqlite_kept_groups_answer_as_groups_counted_from_the_rows(
    rows: list[Row], deleted: set[int]
) -> None:
    from memcollect.backends.sqlite import SQLiteBackend

    kept = SQLiteBackend("sqlite://")
    kept.open()
    try:
        kept_answers_as_counted(kept, rows, deleted)
    finally:
        kept.close()


@pytest.fixture(scope="module")
def pg_store() -> Iterator[mc.Backend]:
    from memcollect.backends.postgres import PostgresBackend

    schema = f"kept_{uuid.uuid4().hex[:10]}"
    store = PostgresBackend(f"{require_postgres()}?schema={schema}")
    store.open()
    yield store
    store.close()
    drop_schema(schema)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(_ROWS, _DELETED)
def test_postgres_kept_groups_answer_as_groups_counted_from_the_rows(
    pg_store: mc.Backend, rows: list[Row], deleted: set[int]
) -> None:
    with pg_store._connection() as conn:  # type: ignore[attr-defined]
        conn.execute("TRUNCATE memories, groups, group_queue CASCADE")
    kept_answers_as_counted(pg_store, rows, deleted)


def test_postgres_folds_what_any_writer_stored_and_clears_its_queue(
    make_collector: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memcollect.backends import pggroups

    monkeypatch.setattr(pggroups, "FOLD_CHUNK", 3)
    monkeypatch.setattr(pggroups, "_VACUUM_AFTER", 2)
    schema = f"fold_{uuid.uuid4().hex[:10]}"
    url = f"{require_postgres()}?schema={schema}"
    try:
        writer = make_collector(url)
        for i in range(10):
            writer.collect("error", f"Disk full on db-{i}")
        assert writer.flush(30)
        import psycopg

        with psycopg.connect(require_postgres(), autocommit=True) as conn:
            # Rows another program inserts are queued by the trigger like the store's own.
            conn.execute(
                f'INSERT INTO "{schema}".memories (id, category, content, priority, created_at) '
                "VALUES (%s, 'error', 'Disk full on db-99', 2, %s)",
                (mc.new_id(), time.time()),
            )
        (group,) = make_collector(url).groups()  # folds four chunks, then vacuums the queue
        assert group.count == 11
        with psycopg.connect(require_postgres(), autocommit=True) as conn:
            queued = conn.execute(f'SELECT count(*) FROM "{schema}".group_queue').fetchone()
        assert queued == (0,)
    finally:
        drop_schema(schema)
