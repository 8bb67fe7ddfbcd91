"""What every backend must do, run on each of them."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memcollect as mc
from memcollect.backends.base import Backend, DeadLetter, SearchQuery
from memcollect.validate import make_memory

UNICODE = [
    "emoji 🐛🔥 in a bug report",
    "עברית מימין לשמאל with RTL text",
    "control chars \t\x01\x1f\x7f kept",
    "CJK 日本語のテキスト",
    "combining e\u0301 and zero\u200bwidth",
]


def mem(content: str, category: str = "note", **kw: object) -> mc.Memory:
    args: dict[str, object] = dict(
        metadata=None, priority=None, tags=None, project=None, agent=None, session=None
    )
    args.update(kw)
    memory = make_memory(category, content, max_content_bytes=1 << 20, **args)  # type: ignore[arg-type]
    memory.content_hash = "h" * 32  # as the worker hands memories to a store
    memory.fingerprint = "f" * 16
    return memory


def check_delete_pages_start_where_their_rows_are(store: Backend) -> None:
    """For a store that orders a delete's pages (SQLite, PostgreSQL): a cut-off deletes the
    oldest, so its page starts there, not after every newer memory kept."""
    batch = [mem(f"m {i}") for i in range(10)]
    for at, memory in enumerate(batch):
        memory.created_at = 1.7e9 + at
    store.write_batch(batch)
    oldest = store.filtered_ids(SearchQuery(until=1.7e9 + 5, limit=2))
    assert oldest == [batch[0].id, batch[1].id]
    # With a category, in the order of its index: the same, oldest first.
    assert store.filtered_ids(SearchQuery(category="note", until=1.7e9 + 5, limit=2)) == oldest
    newest = store.filtered_ids(SearchQuery(since=1.7e9 + 5, limit=2))
    assert newest == [batch[9].id, batch[8].id]


def test_writes_are_idempotent(backend: Backend) -> None:
    batch = [mem(f"m{i}") for i in range(10)]
    backend.write_batch(batch)
    backend.write_batch(batch)
    backend.write_batch([*batch[3:6], mem("new")])
    assert backend.count() == 11


def test_every_field_round_trips(backend: Backend) -> None:
    original = mem(
        "full record",
        "architecture",
        metadata={"nested": {"list": [1, 2.5, None, True, "x"]}, "n": -3},
        priority="critical",
        tags=["a", "b"],
        project="web",
        agent="qa",
        session="s-1",
    )
    backend.write_batch([original])
    assert backend.get(original.id) == original
    assert backend.get("01nosuchid0000000000000000") is None


def test_get_many_reads_in_the_order_asked(backend: Backend) -> None:
    batch = [mem(f"many {i}") for i in range(5)]
    backend.write_batch(batch)
    unknown = "01nosuchid0000000000000000"
    asked = [batch[3].id, unknown, batch[0].id, batch[4].id]
    assert backend.get_many(asked) == [batch[3], batch[0], batch[4]]
    assert backend.get_many([unknown]) == [] and backend.get_many([]) == []


@pytest.mark.parametrize("text", UNICODE)
def test_unicode_round_trips(backend: Backend, text: str) -> None:
    m = mem(text, metadata={"k": text}, tags=[text[:10]])
    backend.write_batch([m])
    assert backend.get(m.id) == m


def test_counts_and_recent(backend: Backend) -> None:
    backend.write_batch([mem(f"b{i}", "bug") for i in range(3)] + [mem("f", "feedback")])
    assert backend.count() == 4
    assert backend.count("bug") == 3
    assert backend.count("nothing") == 0
    assert backend.count_by_category() == {"bug": 3, "feedback": 1}
    newest = backend.recent(2)
    assert [m.content for m in newest] == ["f", "b2"]
    assert [m.content for m in backend.recent(10, "bug")] == ["b2", "b1", "b0"]


def test_deleted_memories_are_gone_from_reads_counts_and_search(backend: Backend) -> None:
    kept = mem("Checkout fails on Firefox", "bug", tags=["checkout"])
    gone = mem("Checkout leaked the token sk-live-123", "bug", tags=["checkout"])
    other = mem("Checkout page note", tags=["checkout"])
    backend.write_batch([kept, gone, other])
    backend.delete([gone.id, "01nosuchid0000000000000000"])
    assert backend.get(gone.id) is None and backend.get(kept.id) == kept
    assert backend.count() == 2 and backend.count_by_category() == {"bug": 1, "note": 1}
    found = backend.search(SearchQuery(text="checkout", limit=10))
    assert {m.id for m in found} == {kept.id, other.id}
    assert backend.search(SearchQuery(text="leaked token", limit=10)) == []
    listed = backend.search(SearchQuery(tags=("checkout",), limit=10))
    assert {m.id for m in listed} == {kept.id, other.id}


def test_filtered_ids_give_a_delete_its_pages(backend: Backend) -> None:
    old = [mem(f"old {i}", "bug", tags=["t"], session="s") for i in range(7)]
    new = [mem(f"new {i}", "bug", tags=["t"]) for i in range(3)] + [mem("new note", session="s")]
    start = time.time() - 10_000
    for at, memory in enumerate(old + new):
        memory.created_at = start + at * 100
    backend.write_batch(old + new)
    # Whatever the text says: a delete's pages go by the filters alone.
    everything = SearchQuery(text="no memory holds these words", session="s", limit=100)
    assert sorted(backend.filtered_ids(everything)) == sorted(m.id for m in [*old, new[-1]])
    recent_bugs = SearchQuery(category="bug", tags=("t",), since=start + 650, limit=100)
    assert sorted(backend.filtered_ids(recent_bugs)) == sorted(m.id for m in new[:3])
    page_by_page: list[str] = []
    while page := backend.filtered_ids(SearchQuery(until=start + 650, limit=3)):
        assert len(page) <= 3 and not set(page) & set(page_by_page)
        page_by_page += page
        backend.delete(page)
    assert sorted(page_by_page) == sorted(m.id for m in old)
    assert backend.count() == len(new)


def test_search_ranks_the_best_match_first(backend: Backend) -> None:
    backend.write_batch(
        [
            mem("Login fails on Safari 17 after password reset"),
            mem("Safari renders the header too wide"),
            mem("Login page is slow"),
            mem("Unrelated note about billing"),
        ]
    )
    hits = backend.search(SearchQuery(text="safari login", limit=10))
    assert hits[0].content == "Login fails on Safari 17 after password reset"
    assert {h.content for h in hits[1:]} == {
        "Safari renders the header too wide",
        "Login page is slow",
    }
    assert backend.search(SearchQuery(text="nonexistentword")) == []


def test_search_ranks_memories_holding_every_word_first(backend: Backend) -> None:
    every = mem("the eviction of the cache went on for a long while after the deploy today")
    backend.write_batch(
        [
            mem("cache cache cache"),
            mem("cache cache"),
            mem("eviction eviction"),
            every,
            *(mem(f"filler note number {i} about billing") for i in range(6)),
        ]
    )
    hits = backend.search(SearchQuery(text="cache eviction", limit=3))
    assert hits[0].id == every.id
    assert len(hits) == 3  # then memories holding some of the words fill the limit
    assert backend.search(SearchQuery(text="cache eviction", limit=1)) == [every]


def test_search_filters(backend: Backend) -> None:
    t0 = time.time()
    backend.write_batch(
        [
            mem("timeout in payments", "error", tags=["pay", "prod"], project="shop", agent="a1"),
            mem("timeout in search", "error", tags=["search"], project="shop", agent="a2"),
            mem("timeout in payments", "bug", tags=["pay"], project="blog", session="s9"),
        ]
    )

    def contents(**kw: object) -> list[str]:
        hits = backend.search(SearchQuery(text="timeout", limit=10, **kw))  # type: ignore[arg-type]
        return sorted(f"{h.category}:{h.content}" for h in hits)

    assert contents(category="error") == ["error:timeout in payments", "error:timeout in search"]
    assert contents(tags=("pay",)) == ["bug:timeout in payments", "error:timeout in payments"]
    assert contents(tags=("pay", "prod")) == ["error:timeout in payments"]
    assert contents(project="blog") == ["bug:timeout in payments"]
    assert contents(agent="a2") == ["error:timeout in search"]
    assert contents(session="s9") == ["bug:timeout in payments"]
    assert len(contents(since=t0 - 60)) == 3
    assert contents(until=t0 - 60) == []
    # No words: the filters alone, newest first.
    assert [h.content for h in backend.search(SearchQuery(project="shop", limit=1))] == [
        "timeout in search"
    ]


@pytest.mark.parametrize(
    "value", ["two words", "émoji 🐛", "dash-and_under", "Case", "x" * 120, 'quote"d']
)
def test_search_filters_on_any_value(backend: Backend, value: str) -> None:
    backend.write_batch(
        [
            mem("timeout in payments", tags=[value], project=value, agent=value, session=value),
            mem("timeout in payments", tags=[value + "x"], project=value + "x"),
            mem("timeout in payments", tags=["other"], project=value.upper() + "y"),
        ]
    )
    for filters in ({"project": value}, {"tags": (value,)}, {"agent": value, "session": value}):
        hits = backend.search(SearchQuery(text="timeout", **filters))  # type: ignore[arg-type]
        assert [h.project for h in hits] == [value], filters


@pytest.mark.parametrize(
    "text", ["secret) OR (timeout", "secret OR timeout", '"secret" OR timeout*', "secret"]
)
def test_search_filters_hold_whatever_the_text_says(backend: Backend, text: str) -> None:
    # A project filter is how a service keeps one tenant's memories from another's.
    backend.write_batch(
        [
            mem("secret timeout of tenant b", project="b", tags=["b"]),
            mem("timeout of tenant a", project="a", tags=["a"]),
        ]
    )
    try:
        hits = backend.search(SearchQuery(text=text, project="a", limit=10))
    except mc.ValidationError:
        return  # a store without FTS syntax may refuse it; it must not leak
    assert all(h.project == "a" for h in hits), [h.content for h in hits]


def test_dead_letters(backend: Backend) -> None:
    a, b = mem("poison a"), mem("poison b")
    backend.add_dead_letters([DeadLetter(a, "PermanentBackendError: bad", 1.0)])
    backend.add_dead_letters([DeadLetter(b, "PermanentBackendError: worse", 2.0)])
    letters = backend.dead_letters()
    assert [(d.memory, d.error) for d in letters] == [
        (a, "PermanentBackendError: bad"),
        (b, "PermanentBackendError: worse"),
    ]
    assert len(backend.dead_letters(limit=1)) == 1
    backend.remove_dead_letters([a.id])
    assert [d.memory.id for d in backend.dead_letters()] == [b.id]
    assert backend.count() == 0  # dead letters are not memories


def test_scan_pages_through_everything_in_id_order(backend: Backend) -> None:
    batch = [mem(f"page {i}", "note" if i % 2 else "bug") for i in range(25)]
    backend.write_batch(batch[::-1])  # stored in any order, listed in id order
    seen: list[str] = []
    after: str | None = None
    while page := backend.scan(after, 10):
        assert len(page) <= 10
        seen += [m.id for m in page]
        after = page[-1].id
    assert seen == sorted(m.id for m in batch)
    assert backend.scan(batch[-1].id, 10) == []
    assert backend.take_oldest(2) == sorted(batch, key=lambda m: m.id)[:2]


HOSTILE = [
    'What did Caroline take away from the book "Becoming Nicole"?',
    "login NOT working",
    "Safari AND",
    "login OR",
    'he said "hi',
    "(timeout OR",
    "a:b c.d -x +y ^z",
    "NEAR(login safari)",
    "saf*",
    "'); DROP TABLE memories; --",
    "Caroline's café 🐛🔥",
    "日本語のテキスト",
    "{content} : login",
    "???",
    "",
]
QUERY_CORPUS = [
    "login fails on safari",
    "login works on chrome",
    "Caroline read Becoming Nicole",
    "timeout calling payments",
    "he said hi at the standup",
    "café opened near the office 🐛",
]


def words_only(text: str) -> str:
    """The query with every character that is not part of a word taken out."""
    return " ".join(re.findall(r"\w+", text))


@pytest.mark.parametrize("text", HOSTILE)
def test_any_text_is_a_query_of_its_words(backend: Backend, text: str) -> None:
    """Punctuation, quotes and operators never raise, and never change what a query finds:
    the same memories as its words alone."""
    backend.write_batch([mem(c) for c in QUERY_CORPUS])
    hits = backend.search(SearchQuery(text=text, limit=50))
    plain = backend.search(SearchQuery(text=words_only(text), limit=50))
    if not words_only(text) and text.strip():
        assert hits == []  # no word in it: nothing matches (an empty query lists by recency)
    elif text.strip():
        assert {h.id for h in hits} == {h.id for h in plain}, (text, hits, plain)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=40))
def test_no_text_makes_search_raise(backend: Backend, text: str) -> None:
    hits = backend.search(SearchQuery(text=text, limit=5))
    assert len(hits) <= 5


def test_common_words_alone_find_nothing_on_any_backend(backend: Backend) -> None:
    """A query sharing only common words ("on", "the") with a memory does not find it: the
    same on memory:// (what users' tests run on) as on the stores they deploy."""
    backend.write_batch([mem("login fails on the safari browser")])
    assert backend.search(SearchQuery(text="cannot sign in on the Apple phone")) == []
    assert len(backend.search(SearchQuery(text="the safari"))) == 1


def test_hits_say_how_strongly_and_how_they_were_found(backend: Backend) -> None:
    """The same scale on every store: the share of the query's words a hit holds."""
    full, part = mem("login fails on safari after reset"), mem("safari crashes at start")
    backend.write_batch([full, part, mem("unrelated note about lunch")])
    query = SearchQuery(text="login safari reset?", limit=10, mode="text")
    hits = backend.search_hits(query)
    by_id = {hit.memory.id: hit for hit in hits}
    assert set(by_id) == {full.id, part.id}
    assert by_id[full.id].score == 1.0
    assert by_id[part.id].score == pytest.approx(6 / 16)  # "safari" of login+safari+reset
    assert {hit.found_by for hit in hits} == {"text"}
    # The hits are search()'s results, in its order.
    assert [hit.memory.id for hit in hits] == [m.id for m in backend.search(query)]
    listing = backend.search_hits(SearchQuery(limit=10))
    assert len(listing) == 3 and {(h.score, h.found_by) for h in listing} == {(1.0, "filters")}
