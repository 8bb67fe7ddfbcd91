"""Counters, latency percentiles and throughput, on an injected clock."""

from __future__ import annotations

import threading

import pytest

from memcollect.stats import Counters, Reservoir
from memcollect.testing import FakeClock


def test_percentiles_are_of_the_most_recent_samples() -> None:
    reservoir = Reservoir(size=100)
    reservoir.extend([10.0] * 100)  # old and slow: pushed out below
    reservoir.extend(i / 1000 for i in range(1, 101))
    latency = reservoir.snapshot()
    assert latency.samples == 100
    assert latency.p50_ms == pytest.approx(50.0)
    assert latency.p99_ms == pytest.approx(100.0)
    assert latency.max_ms == pytest.approx(100.0)
    assert latency.mean_ms == pytest.approx(50.5)
    assert Reservoir().snapshot().samples == 0


def test_throughput_is_overall_and_over_the_last_minute() -> None:
    clock = FakeClock()
    counters = Counters(clock)
    for _ in range(10):  # 1,000 a second for ten seconds
        clock.advance(1.0)
        counters.record_stored(1000, 0.01, [])
    clock.advance(100.0)  # then quiet for 100 s, and 600 more in the last 30 s
    for _ in range(3):
        clock.advance(10.0)
        counters.record_stored(200, 0.01, [])
    overall, recent = counters.throughput()
    assert overall == pytest.approx(10_600 / 140.0)
    assert recent == pytest.approx(600 / 60.0)
    assert counters.batches == 13 and counters.stored == 10_600


def test_drops_are_counted_by_reason_and_remember_when_the_last_was() -> None:
    clock = FakeClock()
    counters = Counters(clock)
    assert counters.last_drop is None
    counters.drop("queue_full", 3)
    clock.advance(5.0)
    counters.drop("closed")
    assert counters.dropped == {"queue_full": 3, "closed": 1}
    assert counters.last_drop == clock()


def test_absorb_adds_another_process_counts_and_its_drops() -> None:
    clock = FakeClock()
    counters = Counters(clock)
    counters.absorb({"stored": 5, "retried": 2, "dead_lettered": 1}, {"unstorable": 2})
    counters.absorb({"stored": 3, "retried": 0, "dead_lettered": 0}, {})
    assert (counters.stored, counters.retried, counters.dead_lettered) == (8, 2, 1)
    assert counters.dropped == {"unstorable": 2} and counters.last_drop == clock()


def test_counts_from_many_threads_are_not_lost() -> None:
    counters = Counters(FakeClock())

    def work() -> None:
        for _ in range(2000):
            counters.drop("queue_full")
            counters.record_stored(1, 0.0, [])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counters.dropped["queue_full"] == 16_000 and counters.stored == 16_000
