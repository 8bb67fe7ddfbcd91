"""The storing engine and the worker driven step by step on a fake clock: batching, backoff,
the circuit breaker, failover and put-off work, with no thread and no real time."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

import memcollect as mc
from memcollect.backends.memory import MemoryBackend
from memcollect.inbox import Inbox
from memcollect.model import Memory
from memcollect.retry import CircuitBreaker, RetryPolicy
from memcollect.stats import Counters
from memcollect.storing import Interruptible, Storing
from memcollect.testing import FakeClock, FaultyBackend
from memcollect.validate import make_memory
from memcollect.worker import Worker


def memory(text: str, priority: str | None = None) -> Memory:
    return make_memory("note", text, None, priority, None, None, None, None, 1 << 20)


@dataclass
class Rig:
    """One worker, its engine and its stores, on a fake clock."""

    clock: FakeClock
    backend: FaultyBackend
    inbox: Inbox
    storing: Storing
    worker: Worker
    breaker: CircuitBreaker
    counters: Counters
    fallback: MemoryBackend | None
    done: list[str] = field(default_factory=list)

    def batch(self, *texts: str) -> list[Memory]:
        """Memories for the engine directly, not queued."""
        return [memory(t) for t in texts]

    def put(self, *texts: str) -> list[Memory]:
        memories = [memory(t) for t in texts]
        assert self.inbox.put_many(memories) == len(memories)
        return memories


def rig(
    *,
    batch_size: int = 10,
    batch_timeout: float = 0.5,
    max_retries: int = 3,
    retry_base: float = 0.1,
    retry_max: float = 2.0,
    cooldown: float = 5.0,
    fallback: bool = False,
    backend: FaultyBackend | None = None,
) -> Rig:
    clock = FakeClock()
    backend = backend or FaultyBackend()
    counters = Counters(clock)
    breaker = CircuitBreaker(max_retries, cooldown, clock)
    inbox = Inbox(1000, batch_size, lambda m: None, clock)
    # The top of every jitter range: delays are exactly base * 2**attempt, capped.
    policy = RetryPolicy(retry_base, retry_max, max_retries, rng=lambda: 1.0)
    wait = Interruptible(clock, sleep=clock.sleep)
    store_back = MemoryBackend() if fallback else None
    done: list[str] = []
    storing = Storing(
        backend, counters, breaker, policy, fallback=store_back, clock=clock, wait=wait,
        on_done=lambda batch: done.extend(m.id for m in batch), batch_size=batch_size,
    )  # fmt: skip
    worker = Worker(
        inbox, storing, wait, batch_size=batch_size, batch_timeout=batch_timeout, clock=clock,
        wait_for_event=clock.wait,
    )  # fmt: skip
    return Rig(clock, backend, inbox, storing, worker, breaker, counters, store_back, done)


def test_a_partial_batch_waits_the_linger_from_its_first_memory_then_goes() -> None:
    r = rig(batch_size=10, batch_timeout=0.5)
    r.storing.idle_due = False
    r.put("a", "b", "c")
    started = r.clock()
    assert r.worker.step()
    assert r.clock() - started == pytest.approx(0.5)  # lingered exactly batch_timeout
    assert r.backend.write_calls == 1 and len(r.backend.written) == 3
    assert r.counters.stored == 3 and r.counters.batches == 1


def test_a_full_batch_goes_at_once_and_the_highest_priority_first() -> None:
    r = rig(batch_size=4, batch_timeout=60.0)
    r.storing.idle_due = False
    low = [memory(f"low {i}", "low") for i in range(3)]
    urgent = [memory(f"urgent {i}", "critical") for i in range(3)]
    r.inbox.put_many(low + urgent)
    started = r.clock()
    assert r.worker.step()
    assert r.clock() == started  # no linger: a whole batch was waiting
    assert r.backend.written == [m.id for m in urgent] + [low[0].id]


def test_a_flush_takes_a_partial_batch_without_waiting_the_linger() -> None:
    r = rig(batch_size=100, batch_timeout=30.0)
    r.storing.idle_due = False
    r.put("flushed")
    r.inbox.flush_waiters = 1  # what flush() does while it waits
    started = r.clock()
    r.worker.step()
    assert r.clock() == started and r.counters.stored == 1


def test_transient_failures_back_off_exponentially_then_store() -> None:
    r = rig(max_retries=5, retry_base=0.1, retry_max=0.3)
    r.backend.fail_next(4)
    batch = r.batch("eventually")
    r.storing.store(batch)
    assert r.clock.slept == pytest.approx([0.1, 0.2, 0.3, 0.3])  # doubled, then capped
    assert r.counters.retried == 4 and r.counters.failed == 4 and r.counters.stored == 1
    assert r.done == [batch[0].id]
    assert r.breaker.state == "closed" and r.breaker.failures == 0


def test_the_circuit_opens_after_max_retries_in_a_row_and_closes_on_success() -> None:
    r = rig(max_retries=3, retry_base=0.1, cooldown=5.0)
    r.backend.fail_next(5)
    seen: list[str] = []
    sleep = r.clock.sleep

    def watching_sleep(seconds: float) -> None:
        seen.append(r.breaker.state)
        sleep(seconds)

    r.storing.wait = Interruptible(r.clock, sleep=watching_sleep)
    r.storing.store(r.batch("through an outage"))
    # Closed for the first two failures, open from the third on, until the write passed.
    assert seen == ["closed", "closed", "open", "open", "open"]
    assert r.breaker.state == "closed" and r.counters.stored == 1


def test_an_unclassified_error_is_retried_then_the_batch_is_bisected_to_the_poison() -> None:
    poison = FaultyBackend(poison=lambda m: m.content == "poison")
    r = rig(max_retries=2, backend=poison)
    batch = r.batch("a", "b", "poison", "d")
    r.storing.store(batch)
    assert r.counters.dead_lettered == 1
    assert [d.memory.content for d in poison.dead_letters()] == ["poison"]
    assert sorted(m.content for m in poison.inner.recent(10)) == ["a", "b", "d"]
    assert r.clock.slept == []  # permanent errors are not retried: no time spent waiting
    assert sorted(r.done) == sorted(m.id for m in batch)  # all released from the spool


def test_with_a_fallback_an_open_circuit_sends_batches_there_and_they_move_back() -> None:
    r = rig(max_retries=2, cooldown=5.0, fallback=True)
    assert r.fallback is not None
    r.storing.idle_due = False
    r.backend.go_down()
    batch = r.batch("during the outage")
    r.storing.store(batch)
    assert r.breaker.state == "open"
    assert [m.id for m in r.fallback.recent(10)] == [batch[0].id]
    assert r.counters.stored_in_fallback == 1 and r.storing.fallback_pending
    r.backend.come_back()
    # Nothing queued: the worker waits out the cooldown (on the fake clock), then moves.
    started = r.clock()
    r.worker.step()
    assert r.clock() - started == pytest.approx(5.0, abs=0.02)
    assert r.fallback.count() == 0 and r.backend.inner.count() == 1
    assert r.counters.moved_to_primary == 1
    r.worker.step()  # the next pass finds the fallback empty
    assert not r.storing.fallback_pending


def test_a_retry_that_would_end_after_the_close_deadline_gives_the_batch_up() -> None:
    r = rig(max_retries=100, retry_base=1.0, retry_max=1.0)
    r.backend.go_down()
    r.worker.stop(r.clock() + 2.5)
    batch = r.batch("not in time")
    r.storing.store(batch)
    assert r.clock.slept == [1.0, 1.0]  # two retries fit before the deadline, the third not
    assert r.counters.dropped == {"shutdown_deadline": 1}  # counted, never silently lost


class PutOffWork(FaultyBackend):
    """A store with `steps` of work it does in quiet moments, after each write."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps, self.left, self.calls = steps, 0, 0

    def write_batch(self, batch: object) -> None:
        super().write_batch(batch)  # type: ignore[arg-type]
        self.left = self.steps

    def idle_work(self) -> bool:
        self.calls += 1
        self.left = max(0, self.left - 1)
        return self.left > 0


def test_put_off_work_runs_between_batches_until_done_and_again_after_a_write() -> None:
    backend = PutOffWork(steps=3)
    r = rig(backend=backend, batch_timeout=0.0)
    r.worker.step()  # at start: one look, nothing to do
    assert backend.calls == 1 and not r.storing.idle_due
    r.put("one")
    r.worker.step()  # stores, and the store now has three steps put off
    for _ in range(2):
        r.worker.step()
    assert backend.calls == 4 and backend.left == 0
    # Done: no step too many, because with nothing queued the worker would now wait for
    # memories (a wait with no end, which the fake clock refuses).
    assert not r.storing.idle_due
    with pytest.raises(RuntimeError, match="never end"):
        r.worker.step()


def test_put_off_work_waits_while_the_circuit_is_not_closed() -> None:
    backend = PutOffWork(steps=5)
    r = rig(backend=backend, max_retries=1, cooldown=60.0)
    r.breaker.record_failure(mc.TransientBackendError("down"))
    assert r.breaker.state == "open"
    r.put("queued")
    r.worker.inbox.flush_waiters = 1
    assert not r.worker._quiet()
    r.breaker.record_success()
    r.storing.idle_due = True
    r.worker.step()  # stored, then quiet: the first step of work
    assert backend.calls == 1


class CannotRelease(PutOffWork):
    """A store whose giving back of memory fails once caught up."""

    def release_memory(self) -> None:
        raise OSError("no such thing")


def test_a_release_that_fails_only_warns_in_one_line_and_storing_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = CannotRelease(steps=2)
    r = rig(backend=backend, batch_timeout=0.0)
    r.put("one")
    r.worker.step()  # stores; the put-off step is due
    with caplog.at_level("WARNING", logger="memcollect"):
        r.worker.step()  # the step, then caught up: the release fails
    warnings = [rec for rec in caplog.records if "give back memory" in rec.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    assert "OSError: no such thing" in warnings[0].getMessage()
    assert not r.storing.idle_due
    with caplog.at_level("WARNING", logger="memcollect"):
        r.put("two")
        r.worker.step()  # stored, caught up again: the same failure, not warned again
        r.worker.step()
    assert len(backend.written) == 2
    assert sum("give back memory" in rec.getMessage() for rec in caplog.records) == 1
