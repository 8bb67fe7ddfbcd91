"""Backoff with full jitter, and the circuit breaker."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["CircuitBreaker", "ErrorKind", "RetryPolicy", "retry_after"]

ErrorKind = Literal["transient", "permanent"]
Clock = Callable[[], float]


class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""

    def __init__(
        self,
        base: float,
        cap: float,
        max_retries: int,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self.max_retries = max_retries
        # A private generator: jitter must not consume (or depend on) the user's global seed.
        self._rng = rng or random.Random().random

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based); Retry-After is a floor."""
        ceiling = min(self.cap, self.base * (2 ** min(attempt, 62)))
        wait: float = self._rng() * ceiling
        if retry_after is not None and retry_after > wait:
            # A store that says when to come back means it: never sooner.
            return float(retry_after)
        return wait


def retry_after(exc: BaseException) -> float | None:
    """The minimum wait a backend asked for, if it did."""
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) else None


class CircuitBreaker:
    """Opens after `threshold` failures in a row, or once writes have failed for `open_after`
    seconds (a store that makes each write wait long before failing it is down as surely as
    one that fails fast); half-opens once `cooldown` has passed."""

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        clock: Clock = time.monotonic,
        open_after: float = math.inf,
    ) -> None:
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self.open_after = open_after
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.last_error: str = ""
        # When the first failed write of the current run of failures began.
        self.failing_since: float | None = None

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        """closed: writing; open: resting after repeated failures; half_open: ready to probe."""
        if self.opened_at is None:
            return "closed"
        if self._clock() - self.opened_at >= self.cooldown:
            return "half_open"
        return "open"

    def cooldown_left(self) -> float:
        """Seconds until an open circuit allows a try (0 when it does now)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (self._clock() - self.opened_at))

    def record_success(self) -> None:
        """A write went through: close the circuit."""
        self.failures = 0
        self.opened_at = None
        self.last_error = ""
        self.failing_since = None

    def record_failure(self, error: BaseException, started: float | None = None) -> None:
        """A write (begun at `started`) failed: count it, and open (or re-open) the circuit
        past the threshold of failures or of time."""
        now = self._clock()
        self.failures += 1
        self.last_error = f"{type(error).__name__}: {error}"
        if self.failing_since is None:
            self.failing_since = now if started is None else started
        if self.failures >= self.threshold or now - self.failing_since >= self.open_after:
            self.opened_at = now
