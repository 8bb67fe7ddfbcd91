"""MemoryCollector: collect, read-your-writes, flush, close, threads, asyncio, queue policies."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import memcollect as mc
from memcollect.backends.memory import MemoryBackend
from memcollect.stats import Counters
from memcollect.storing import LATENCY_SAMPLES_PER_BATCH, latency_sample
from memcollect.testing import FaultyBackend
from memcollect.validate import make_memory

from .conftest import CountingReads
from .test_failover import with_fallback

Make = Callable[..., mc.MemoryCollector]


def test_collect_returns_an_id_and_stores_every_field(make_collector: Make) -> None:
    c = make_collector()
    mid = c.collect(
        "bug",
        "Login fails on Safari 17",
        {"module": "auth"},
        priority="critical",
        tags=["auth"],
        project="web",
        agent="qa",
        session="s-42",
    )
    assert c.flush()
    stored = c.get(mid)
    assert stored is not None
    assert (stored.category, stored.content, stored.metadata, stored.priority) == (
        "bug",
        "Login fails on Safari 17",
        {"module": "auth"},
        "critical",
    )
    assert (stored.tags, stored.project, stored.agent, stored.session) == (
        ("auth",),
        "web",
        "qa",
        "s-42",
    )
    assert len(stored.content_hash) == 32


def test_get_sees_memories_still_queued(make_collector: Make) -> None:
    backend = FaultyBackend()
    backend.go_down()
    c = make_collector(backend)
    mid = c.collect("note", "not stored yet")
    found = c.get(mid)
    assert found is not None and found.content == "not stored yet"
    assert backend.inner.get(mid) is None
    backend.come_back()
    assert c.flush()
    assert backend.inner.get(mid) is not None


def test_get_many_sees_queued_and_stored_in_the_order_asked_with_one_read_of_the_store(
    make_collector: Make,
) -> None:
    backend = CountingReads()
    c = make_collector(backend)
    stored = [c.collect("note", f"stored {i}") for i in range(5)]
    assert c.flush()
    backend.go_down()
    queued = c.collect("note", "still queued")
    asked = [stored[3], "01unknown0000000000000000", queued, stored[0], stored[3], stored[1]]
    found = c.get_many(asked)
    assert [m.id for m in found] == [stored[3], queued, stored[0], stored[1]]
    assert found[1].content == "still queued"
    assert backend.reads == [("get_many", 4)]  # stored[3], unknown, [0], [1]; not one by one
    backend.reads.clear()
    assert [m.id for m in c.get_many(stored[:2])] == stored[:2]
    assert backend.reads == []  # read once, then cached
    assert c.get_many([]) == []
    with pytest.raises(mc.ValidationError, match=r"ids\[1\] must be a str"):
        c.get_many(["a", 2])  # type: ignore[list-item]
    backend.come_back()
    assert c.flush()


def test_get_many_reads_the_fallback_for_what_the_primary_missed(
    make_collector: Make, tmp_path: Path
) -> None:
    c, primary, _ = with_fallback(make_collector, tmp_path)
    before = c.collect("note", "stored in the primary")
    assert c.flush()
    primary.go_down()
    during = c.collect("note", "stored in the fallback")
    assert c.flush(timeout=30)
    assert [m.content for m in c.get_many([during, before])] == [
        "stored in the fallback",
        "stored in the primary",
    ]


def test_invalid_input_raises_before_anything_is_queued(make_collector: Make) -> None:
    c = make_collector()
    with pytest.raises(mc.ValidationError, match="category"):
        c.collect("Not A Slug", "x")
    with pytest.raises(mc.ValidationError, match="item 1: content"):
        c.collect_batch([{"category": "bug", "content": "ok"}, {"category": "bug", "content": ""}])
    assert c.flush()
    assert c.stats().accepted == 0
    assert c.count() == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tags": [1]}, "tags[0]"),
        ({"tags": [""]}, "tags[0]"),
        ({"project": 5}, "project"),
        ({"agent": ["qa"]}, "agent"),
        ({"session": b"s-1"}, "session"),
        ({"since": float("nan")}, "since"),
        ({"limit": 0}, "limit"),
    ],
)
def test_invalid_search_filters_are_named(
    make_collector: Make, kwargs: dict[str, Any], field: str
) -> None:
    c = make_collector()  # SQLite: its filter tokens once met these as AttributeError
    c.collect("bug", "login fails", tags=["web"], project="shop")
    assert c.flush()
    with pytest.raises(mc.ValidationError) as info:
        c.search("login", **kwargs)
    assert str(info.value).startswith(field), str(info.value)
    assert [m.content for m in c.search("login", tags=["web"], project="shop")] == ["login fails"]


def test_dead_letters_limit_is_checked(make_collector: Make) -> None:
    with pytest.raises(mc.ValidationError, match="limit"):
        make_collector().dead_letters(-5)


def test_collect_batch_stores_all(make_collector: Make) -> None:
    c = make_collector()
    ids = c.collect_batch(
        [{"category": "feedback", "content": f"item {i}", "tags": ["t"]} for i in range(500)]
    )
    assert len(set(ids)) == 500
    assert c.flush()
    assert c.count() == 500
    assert c.count("feedback") == 500


def built(**fields: object) -> mc.Memory:
    values: dict[str, object] = dict(
        id=mc.new_id(),
        category="bug",
        content="built elsewhere",
        metadata={},
        priority="high",
        tags=(),
        project=None,
        agent=None,
        session=None,
        created_at=1.7e9,
    )
    values.update(fields)
    return mc.Memory(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("metadata", {"s": {1, 2}}, r"metadata\['s'\] is a set"),
        ("priority", "urgent", "priority 'urgent' is unknown"),
        ("category", "Bad Category", "not a lowercase slug"),
        ("content", "", "content is empty"),
        ("id", "not-an-id", "is not a memcollect id"),
        ("created_at", float("nan"), "created_at"),
        ("tags", ("",), "tag"),
    ],
)
def test_collect_memories_checks_memories_built_by_hand(
    make_collector: Make, field: str, value: object, error: str
) -> None:
    c = make_collector(durability="spool")
    good = built(content="kept id and time", created_at=1.6e9)
    with pytest.raises(mc.ValidationError, match=f"memory 1: .*{error}"):
        c.collect_memories([good, built(**{field: value})])
    assert c.flush() and c.count() == 0  # all valid or none
    assert c.collect_memories([good]) == [good.id]
    assert c.flush()
    stored = c.get(good.id)
    assert stored is not None and stored.created_at == 1.6e9 and stored.content_hash
    assert c.stats().spool_pending == 0  # nothing left behind in the spool


def test_collect_memories_refuses_what_is_not_a_memory(make_collector: Make) -> None:
    c = make_collector()
    with pytest.raises(mc.ValidationError, match=r"memory 0 is a dict.*collect_batch"):
        c.collect_memories([{"category": "bug", "content": "x"}])  # type: ignore[list-item]


def test_many_threads_lose_and_duplicate_nothing(make_collector: Make) -> None:
    c = make_collector(batch_size=64, max_queue_size=1_000_000)
    ids: list[list[str]] = [[] for _ in range(8)]

    def produce(slot: int) -> None:
        for i in range(2_000):
            ids[slot].append(c.collect("qa", f"thread {slot} item {i}"))

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.flush(timeout=60)
    every = [i for chunk in ids for i in chunk]
    assert len(set(every)) == 16_000
    assert c.count() == 16_000
    stats = c.stats()
    assert stats.accepted == stats.stored == 16_000
    assert stats.queue_depth == 0 and stats.dropped == 0


def test_asyncio_collect_and_aflush_do_not_block_the_loop(make_collector: Make) -> None:
    c = make_collector()

    async def main() -> list[str]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        ids = await asyncio.gather(*(c.collect_async("error", f"e{i}") for i in range(300)))
        assert await c.aflush()
        task.cancel()
        assert ticks > 0  # the loop kept running while aflush waited
        return list(ids)

    ids = asyncio.run(main())
    assert len(set(ids)) == 300
    assert c.count("error") == 300


def test_async_context_manager_closes(tmp_path: Any) -> None:
    async def main() -> mc.MemoryCollector:
        async with mc.MemoryCollector("memory://", durability="memory") as c:
            await c.collect_async("note", "async with")
        return c

    c = asyncio.run(main())
    assert c.count() == 1
    assert c.health().status == "failing"  # closed


def test_close_is_idempotent_and_stores_what_was_queued(make_collector: Make) -> None:
    backend = MemoryBackend()
    c = make_collector(backend, batch_timeout=10.0)  # would linger without close
    for i in range(10):
        c.collect("note", f"n{i}")
    c.close()
    c.close()
    assert backend.count() == 10


def test_collect_after_close_is_counted_not_raised(make_collector: Make) -> None:
    c = make_collector()
    c.close()
    c.collect("note", "too late")
    stats = c.stats()
    assert stats.dropped_by_reason == {"closed": 1}
    assert stats.accepted == 1


def test_priorities_go_first_when_there_is_a_backlog(make_collector: Make) -> None:
    backend = FaultyBackend()
    backend.go_down()
    order: list[str] = []
    c = make_collector(backend, batch_size=4)
    c.on_stored(lambda batch: order.extend(m.priority for m in batch))
    c.collect("note", "first", priority="low")
    # The first write fails and retries; the rest queue up behind it.
    for priority in ["low", "medium", "high", "critical", "low", "critical"]:
        c.collect("note", priority, priority=priority)
    backend.come_back()
    assert c.flush()
    rest = order[order.index("low") + 1 :] if order[0] == "low" else order
    assert rest[:2] == ["critical", "critical"]
    assert rest.index("high") < rest.index("medium") < len(rest) - 1


def test_on_full_drop_lowest_evicts_the_oldest_lowest(make_collector: Make) -> None:
    backend = FaultyBackend()
    backend.go_down()
    # A long linger keeps everything queued (not in flight), so the bound is hit exactly.
    c = make_collector(
        backend, max_queue_size=3, on_full="drop_lowest", batch_size=1000, batch_timeout=30.0
    )
    low1 = c.collect("note", "low-1", priority="low")
    low2 = c.collect("note", "low-2", priority="low")
    c.collect("note", "medium", priority="medium")
    c.collect("error", "critical")  # full: evicts the oldest low, low-1
    assert c.get(low1) is None and c.get(low2) is not None
    c.collect("note", "low-3", priority="low")  # a tie: the older low-2 goes, low-3 stays
    assert c.get(low2) is None
    c.collect("bug", "high")  # evicts low-3, the last low
    doomed = c.collect("note", "low-4", priority="low")  # lower than all queued: itself dropped
    assert c.get(doomed) is None
    assert c.stats().dropped_by_reason == {"queue_full": 4}
    backend.come_back()
    assert c.flush()
    assert sorted(m.content for m in backend.inner.recent(10)) == ["critical", "high", "medium"]
    stats = c.stats()
    assert stats.accepted == stats.stored + stats.dropped == 7


def test_health_degrades_while_drops_are_recent() -> None:
    now = [1000.0]
    backend = FaultyBackend()
    backend.go_down()
    c = mc.MemoryCollector(
        backend,
        durability="memory",
        max_queue_size=1,
        batch_timeout=30.0,
        clock=lambda: now[0],
    )
    c.collect("note", "kept")
    c.collect("note", "evicts the first")
    health = c.health()
    assert health.status == "degraded"
    assert any("dropped" in r for r in health.reasons)
    backend.come_back()
    assert c.flush()
    assert c.health().status == "degraded"  # the queue is empty, but the drop is recent
    now[0] += 301
    assert c.health().status == "ok"
    c.close()


def test_on_full_raise(make_collector: Make) -> None:
    backend = FaultyBackend()
    backend.go_down()
    c = make_collector(
        backend, max_queue_size=2, on_full="raise", batch_size=1000, batch_timeout=30.0
    )
    c.collect("note", "a")
    c.collect("note", "b")
    with pytest.raises(mc.QueueFullError, match="max_queue_size=2"):
        c.collect("note", "c")
    backend.come_back()


def test_on_full_block_waits_for_room_then_times_out(make_collector: Make) -> None:
    backend = FaultyBackend()
    backend.go_down()
    c = make_collector(
        backend,
        max_queue_size=2,
        on_full="block",
        block_timeout=0.05,
        batch_size=1000,
        batch_timeout=30.0,
    )
    c.collect("note", "a")
    c.collect("note", "b")
    c.collect("note", "c")  # blocks 50 ms, then is dropped and counted
    assert c.stats().dropped_by_reason == {"queue_full": 1}
    # With room made in time, a blocked collect() goes through.
    released = threading.Timer(0.02, backend.come_back)
    released.start()
    c2 = make_collector(
        FaultyBackend(), max_queue_size=1, on_full="block", block_timeout=5.0, batch_size=1
    )
    for i in range(50):
        c2.collect("note", f"x{i}")
    assert c2.flush()
    assert c2.stats().dropped == 0 and c2.count() == 50
    released.join()


def test_stats_and_latencies_are_reported(make_collector: Make) -> None:
    c = make_collector(batch_size=10)
    for i in range(100):
        c.collect("performance", f"p{i}")
    assert c.flush()
    s = c.stats()
    assert s.stored == 100 and s.batches >= 10
    assert s.batch_write_latency.samples == s.batches
    assert s.accept_to_stored_latency.samples == 100
    assert 0 < s.accept_to_stored_latency.p50_ms <= s.accept_to_stored_latency.p99_ms
    assert s.throughput_per_s > 0 and s.uptime_s > 0
    assert s.to_dict()["stored"] == 100


def make_memory_at(created_at: float) -> mc.Memory:
    memory = make_memory("note", "x", None, None, None, None, None, None, 1024)
    memory.created_at = created_at
    return memory


def test_latency_of_a_large_batch_is_sampled_from_its_oldest_memory() -> None:
    counters = Counters()
    now = time.time()
    # A batch of 2,048 whose oldest memory waited 10 s and the others about 1 s.
    batch = [make_memory_at(now - 10.0)] + [make_memory_at(now - 1.0) for _ in range(2047)]
    counters.record_stored(len(batch), 0.001, latency_sample(batch))
    latency = counters.store_latency.snapshot()
    assert 0 < latency.samples <= LATENCY_SAMPLES_PER_BATCH
    assert latency.max_ms >= 10_000  # the oldest is always in the sample
    assert 900 <= latency.p50_ms <= 1_100


def test_callbacks_see_stored_batches_and_a_failing_callback_is_harmless(
    make_collector: Make,
) -> None:
    seen: list[str] = []
    c = make_collector(on_stored=lambda batch: seen.extend(m.id for m in batch))

    @c.on_stored
    def broken(batch: Any) -> None:
        raise RuntimeError("user bug")

    ids = [c.collect("note", f"n{i}") for i in range(20)]
    assert c.flush()
    assert sorted(seen) == sorted(ids)
    c.collect("note", "after the broken callback")
    assert c.flush() and c.count() == 21


def test_a_worker_outliving_close_releases_the_backend_when_it_ends(
    make_collector: Make,
) -> None:
    release = threading.Event()
    closed = threading.Event()

    class Slow(MemoryBackend):
        def write_batch(self, batch: Sequence[mc.Memory]) -> None:
            release.wait(10)
            super().write_batch(batch)

        def close(self) -> None:
            closed.set()

    c = make_collector(Slow("memory://"))
    c.collect("note", "held in a slow write")
    c.close(timeout=0.2)  # the worker is still inside write_batch
    assert not closed.is_set()  # not closed under a write in flight
    release.set()
    assert closed.wait(10)  # released by the worker as it ends


class _ClosingBackend(MemoryBackend):
    """Records when it is closed, and from which thread."""

    closed_by: str | None = None

    def close(self) -> None:
        self.closed_by = threading.current_thread().name
        super().close()


def test_close_from_a_callback_stores_what_is_queued_then_finishes(make_collector: Make) -> None:
    backend = _ClosingBackend("memory://")
    c = make_collector(backend, batch_size=2)
    outcomes: list[str] = []

    @c.on_stored
    def close_once(batch: Sequence[mc.Memory]) -> None:
        if outcomes:
            return
        c.collect_batch([{"category": "note", "content": f"queued {i}"} for i in range(5)])
        c.close(timeout=10)  # on the worker: it cannot join itself
        outcomes.append("closed")
        with pytest.raises(mc.MemcollectError, match="callback"):
            c.flush()
        outcomes.append("flush refused")

    c.collect("note", "first")
    c.collect("note", "second")
    worker = c._pipeline.worker.thread
    assert worker is not None
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert outcomes == ["closed", "flush refused"]
    assert c.closed and c.stats().stored == 7
    assert backend.closed_by == worker.name  # released as the worker's last step


def test_each_drop_is_reported_once_even_to_a_callback_that_collects(make_collector: Make) -> None:
    backend = FaultyBackend()
    backend.go_down()  # the queue stays full: every newcomer evicts the oldest
    c = make_collector(backend, max_queue_size=10, retry_base=5.0, retry_max=10.0)
    reported: list[str] = []

    @c.on_failure
    def note_the_drop(memories: Sequence[mc.Memory], error: BaseException) -> None:
        assert isinstance(error, mc.QueueFullError)
        reported.extend(m.content for m in memories)
        c.collect("error", f"dropped {memories[0].content}")  # into the same full queue

    for i in range(40):
        c.collect("error", f"e {i}")
    assert reported, "an evicted memory is a dropped one: on_failure hears of it"
    assert all(content.startswith("e ") for content in reported)  # never its own notes
    assert len(reported) == len(set(reported)) < 40
    # Each note the callback collected evicted one more memory: counted, not reported.
    assert c.stats().dropped == 2 * len(reported)
    backend.come_back()
