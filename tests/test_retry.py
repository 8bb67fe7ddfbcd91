"""Backoff with full jitter, Retry-After, and the circuit breaker, on an injected clock."""

from __future__ import annotations

import random

import pytest

from memcollect.retry import CircuitBreaker, RetryPolicy, retry_after
from memcollect.testing import FakeClock


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    top = RetryPolicy(base=0.1, cap=1.0, max_retries=5, rng=lambda: 0.999999)
    assert [round(top.delay(n), 3) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    bottom = RetryPolicy(base=0.1, cap=1.0, max_retries=5, rng=lambda: 0.0)
    assert bottom.delay(3) == 0.0
    assert top.delay(200) == pytest.approx(1.0, rel=1e-5)  # no overflow for long outages


def test_retry_after_is_a_floor_not_a_hint() -> None:
    policy = RetryPolicy(base=0.1, cap=1.0, max_retries=5, rng=lambda: 0.5)
    assert policy.delay(0, retry_after=7.0) == 7.0
    assert policy.delay(3, retry_after=0.01) == pytest.approx(0.4)


def test_circuit_breaker_opens_and_half_opens_on_an_injected_clock() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.record_failure(OSError("down"))
    assert breaker.state == "closed"
    breaker.record_failure(OSError("down"))
    assert breaker.state == "open"
    now[0] = 9.9
    assert breaker.state == "open"
    now[0] = 10.0
    assert breaker.state == "half_open"
    breaker.record_success()
    assert breaker.state == "closed" and breaker.failures == 0


def test_the_circuit_opens_after_failing_for_open_after_seconds_however_few_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=100, cooldown=10.0, clock=clock, open_after=5.0)
    started = clock()
    clock.advance(4.0)  # a write that hung for 4 s, then failed
    breaker.record_failure(TimeoutError("slow"), started)
    assert breaker.state == "closed" and breaker.failures == 1
    clock.advance(1.0)
    breaker.record_failure(TimeoutError("slow"))
    assert breaker.state == "open"  # 5 s of failing, from when the first write began
    assert breaker.cooldown_left() == pytest.approx(10.0)
    clock.advance(4.0)
    assert breaker.cooldown_left() == pytest.approx(6.0)


def test_a_failed_probe_opens_the_circuit_again_for_a_whole_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=2, cooldown=10.0, clock=clock)
    breaker.record_failure(OSError("down"))
    breaker.record_failure(OSError("down"))
    clock.advance(10.0)
    assert breaker.state == "half_open" and breaker.cooldown_left() == 0.0
    breaker.record_failure(OSError("still down"))
    assert breaker.state == "open" and breaker.cooldown_left() == pytest.approx(10.0)
    assert breaker.last_error == "OSError: still down"


def test_jitter_neither_uses_nor_moves_the_global_random_state() -> None:
    random.seed(42)
    expected = random.random()
    random.seed(42)
    policy = RetryPolicy(base=0.1, cap=1.0, max_retries=3)
    delays = [policy.delay(n) for n in range(50)]
    assert random.random() == expected
    assert len(set(delays)) > 40  # jittered: full jitter spreads the retries of many clients
    assert all(0.0 <= d <= 1.0 for d in delays)


def test_retry_after_is_read_from_the_error_only_when_it_is_a_number() -> None:
    class Busy(Exception):
        retry_after: object = None

    error = Busy()
    assert retry_after(error) is None
    error.retry_after = 3
    assert retry_after(error) == 3.0
    error.retry_after = "soon"
    assert retry_after(error) is None
