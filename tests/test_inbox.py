"""The bounded, priority-aware inbox: order, bounds, eviction, and flush's completion marks."""

from __future__ import annotations

import threading

from memcollect.inbox import Inbox
from memcollect.model import Memory
from memcollect.testing import FakeClock
from memcollect.validate import make_memory


def memory(text: str, priority: str = "medium") -> Memory:
    return make_memory("note", text, None, priority, None, None, None, None, 1 << 20)


def inbox(max_size: int = 10, batch_size: int = 4, evicted: list[Memory] | None = None) -> Inbox:
    return Inbox(max_size, batch_size, (evicted if evicted is not None else []).append, FakeClock())


def test_take_gives_the_highest_priority_first_and_fifo_within_one() -> None:
    box = inbox(batch_size=10)
    order = [("l1", "low"), ("c1", "critical"), ("m1", "medium"), ("c2", "critical"),
             ("l2", "low"), ("h1", "high")]  # fmt: skip
    for text, priority in order:
        assert box.put(memory(text, priority))
    assert [m.content for m in box.take(4)] == ["c1", "c2", "h1", "m1"]
    box.finish()
    assert [m.content for m in box.take(4)] == ["l1", "l2"]


def test_a_full_inbox_refuses_and_counts_only_what_it_took() -> None:
    box = inbox(max_size=3)
    assert [box.put(memory(str(i))) for i in range(5)] == [True, True, True, False, False]
    assert box.size == 3 and box.accepted == 3
    assert box.put_many([memory("x"), memory("y")]) == 0
    assert box.put_many([memory("x"), memory("y")], force=True) == 2  # read back from disk
    assert box.size == 5 and box.accepted == 5
    box.put_many([memory("z")], force=True, count=False)
    assert box.accepted == 5  # already counted when it was first accepted


def test_a_closing_inbox_takes_no_new_memories_but_still_takes_read_back_ones() -> None:
    box = inbox()
    box.closing = True
    assert not box.put(memory("late"))
    assert box.put_many([memory("replayed")], force=True) == 1


def test_evict_lowest_drops_the_oldest_of_the_lowest_priority_up_to_the_rank_given() -> None:
    evicted: list[Memory] = []
    box = inbox(evicted=evicted)
    for text, priority in [("h", "high"), ("l1", "low"), ("l2", "low"), ("m", "medium")]:
        box.put(memory(text, priority))
    victim = box.evict_lowest(rank=1)  # medium or below
    assert victim is not None and victim.content == "l1"
    assert [m.content for m in evicted] == ["l1"]
    box.evict_lowest(rank=1)
    box.evict_lowest(rank=1)
    assert box.evict_lowest(rank=1) is None  # only "h" is left, above medium
    assert box.size == 1


def test_wakeup_is_set_when_a_batch_starts_and_when_it_fills() -> None:
    box = inbox(batch_size=3)
    box.put(memory("first"))
    assert box.wakeup.is_set()  # the linger clock starts
    box.wakeup.clear()
    box.put(memory("second"))
    assert not box.wakeup.is_set()  # nothing new for the worker
    box.put(memory("third"))
    assert box.wakeup.is_set()  # a whole batch


def test_marks_cover_what_was_queued_before_them_and_not_what_came_after() -> None:
    box = inbox(batch_size=2)
    for i in range(3):
        box.put(memory(f"before {i}"))
    marks = box.marks()
    box.put(memory("after"))
    clock = FakeClock()
    box._clock = clock
    box.take(2)
    box.finish()
    # A deadline of now: each call says whether it is done, without waiting.
    assert not box.wait_done(marks, clock())  # one of them is still queued
    box.take(2)  # the last one before, with the one after
    assert not box.wait_done(marks, clock())  # taken, but its batch has not finished
    box.finish()
    assert box.wait_done(marks, clock())  # "after" needs no flush before it


def test_find_sees_queued_and_in_flight_memories() -> None:
    box = inbox(batch_size=1)
    first, second = memory("first"), memory("second")
    box.put_many([first, second])
    box.take(1)
    assert box.find(first.id) is first  # in flight
    assert box.find(second.id) is second  # queued
    box.finish()
    assert box.find(first.id) is None


def test_wait_for_room_returns_once_a_batch_is_taken() -> None:
    box = Inbox(1, 1, lambda m: None)  # the real clock: another thread makes room
    box.put(memory("full"))
    took = threading.Event()

    def worker() -> None:
        box.take(1)
        took.set()

    thread = threading.Thread(target=worker)
    thread.start()
    import time

    assert box.wait_for_room(time.monotonic() + 30)
    thread.join()
    assert took.is_set() and box.size == 0
