"""Storing batches: write, retry, bisect, dead-letter, fallback, move back, idle work.

One engine, used by the worker thread, the storing process and write-through alike. Its
clock and its wait come from outside, so that tests drive time instead of waiting on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

try:  # hashlib would also load OpenSSL: ~5 ms of `import memcollect` for one function
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - an interpreter built without it
    from hashlib import blake2b

from .backends.base import Backend
from .config import Config
from .heap import give_back
from .locks import SharedLock, shared_lock
from .model import DeadLetter, Memory
from .retry import CircuitBreaker, RetryPolicy, retry_after
from .stats import Counters
from .tracing import Spans

__all__ = [
    "FailureCallback",
    "StoredCallback",
    "Storing",
    "content_hash",
    "latency_sample",
    "notify_failure",
    "notify_stored",
]

log = logging.getLogger("memcollect")

Clock = Callable[[], float]
#: Waits up to the given seconds before a retry; False to give the retry up (a deadline).
Wait = Callable[[float], bool]
StoredCallback = Callable[[Sequence[Memory]], None]
FailureCallback = Callable[[Sequence[Memory], BaseException], None]

# Every digest starts as a copy of this one: copying costs a third less than building one,
# which parses its digest_size keyword each time.
_BLANK_DIGEST = blake2b(digest_size=16)

# Accept-to-stored latency is sampled: at most this many memories of a batch, evenly spaced
# from its oldest. Every memory of a 2,048 batch cost ~0.25 µs a memory of the GIL that
# collect() waits for, and filled the latency reservoir with just two batches.
LATENCY_SAMPLES_PER_BATCH = 256


def content_hash(content: str) -> str:
    """A short stable digest of the content, for spotting repeats."""
    digest = _BLANK_DIGEST.copy()
    digest.update(content.encode("utf-8"))
    return digest.hexdigest()


def latency_sample(batch: Sequence[Memory]) -> Iterator[float]:
    """The creation times of the batch's latency sample."""
    return (m.created_at for m in batch[:: len(batch) // LATENCY_SAMPLES_PER_BATCH + 1])


def notify_stored(callbacks: Sequence[StoredCallback], batch: Sequence[Memory]) -> None:
    """Call each on_stored callback; one that raises is logged, never fatal."""
    for callback in callbacks:
        try:
            callback(batch)
        except Exception:
            log.exception("on_stored callback %r failed", callback)


def notify_failure(
    callbacks: Sequence[FailureCallback], memories: Sequence[Memory], exc: BaseException
) -> None:
    """Call each on_failure callback; one that raises is logged, never fatal."""
    for callback in callbacks:
        try:
            callback(memories, exc)
        except Exception:
            log.exception("on_failure callback %r failed", callback)


def _wait_with_sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return True


def hash_contents(batch: Sequence[Memory]) -> None:
    """Give every memory of the batch its content hash, where it has none yet."""
    blank = _BLANK_DIGEST.copy
    for memory in batch:
        if not memory.content_hash:
            # content_hash() inlined: a call a memory is GIL time collect() waits for.
            digest = blank()
            digest.update(memory.content.encode())
            memory.content_hash = digest.hexdigest()


class Storing:
    """Stores batches in a backend, or its fallback while the backend rests, and never
    loses one silently: what cannot be stored is dead-lettered, dropped with a reason, or
    left in the spool for the next start."""

    def __init__(
        self,
        backend: Backend,
        counters: Counters,
        breaker: CircuitBreaker,
        policy: RetryPolicy,
        *,
        fallback: Backend | None = None,
        on_stored: Sequence[StoredCallback] = (),
        on_failure: Sequence[FailureCallback] = (),
        on_done: Callable[[Sequence[Memory]], None] = lambda batch: None,
        durable: bool = False,
        batch_size: int = 1000,
        clock: Clock = time.monotonic,
        wait: Wait = _wait_with_sleep,
        wall_clock: Clock = time.time,
        spans: Spans | None = None,
    ) -> None:
        self.backend = backend
        self.counters = counters
        self.breaker = breaker
        self.policy = policy
        self.fallback = fallback
        self.on_stored = on_stored
        self.on_failure = on_failure
        # Memories stored or dead-lettered: the spool releases them.
        self.on_done = on_done
        # Whether what is given up at a deadline is still kept on disk.
        self.durable = durable
        self.batch_size = batch_size
        self.clock = clock
        self.wait = wait
        self.wall_clock = wall_clock
        self.spans = spans or Spans(False, backend.url)
        self.fallback_pending = False
        # Held while a batch moves from the fallback to the primary: a delete() holds it too,
        # so that a memory read from the fallback is not written back after it was deleted.
        # Shared with other processes using the same fallback (a storing process, say).
        self.moving: SharedLock = shared_lock(
            fallback.move_lock_path() if fallback is not None else None
        )
        # Whether the backend may have work put off for a quiet moment (Backend.idle_work):
        # at start (what an earlier process left) and after every batch stored.
        self.idle_due = True
        #: Called once the backend's put-off work is done: what else may let go of RAM.
        self.caught_up: list[Callable[[], None]] = []
        # The last release failure warned of: a trickle of memories catches up after every
        # batch, and the same failure must not write a line each time.
        self._release_error = ""
        # When the write under way began (None between writes): a write that hangs shows.
        self.writing_since: float | None = None

    @classmethod
    def configured(
        cls,
        config: Config,
        backend: Backend,
        counters: Counters,
        breaker: CircuitBreaker,
        **options: Any,
    ) -> Storing:
        """An engine retrying and batching its moves as `config` says; `options` as for
        Storing()."""
        policy = RetryPolicy(config.retry_base, config.retry_max, config.max_retries)
        return cls(backend, counters, breaker, policy, batch_size=config.batch_size, **options)

    def check_fallback(self) -> None:
        """Note what an earlier run left in the fallback, to move it on."""
        if self.fallback is not None:
            self.fallback_pending = self.fallback.count() > 0

    @property
    def may_move(self) -> bool:
        """Whether the fallback holds memories and the primary may be tried now."""
        return self.fallback_pending and self.breaker.state != "open"

    # --- batches ------------------------------------------------------------------------

    def store(self, batch: list[Memory]) -> None:
        """Store one batch, retrying, bisecting and dead-lettering as needed."""
        hash_contents(batch)
        with self.spans("create_memory") as span:
            span.set_attribute("gen_ai.memory.record.count", len(batch))
            self._write(batch)

    def store_now(self, memories: Sequence[Memory]) -> None:
        """Write-through: store in this thread once, counted; raises what the store raised."""
        hash_contents(memories)
        started = self.clock()
        try:
            self.backend.write_batch(memories)
        except Exception:
            self.counters.failed += 1
            raise
        self._count_stored(list(memories), started)

    def _write(self, batch: list[Memory], patience: int | None = None) -> None:
        """Store a batch, retrying what may pass; an error that cannot be told is retried
        `patience` times (max_retries by default) before the batch is split."""
        patience = self.policy.max_retries if patience is None else patience
        attempt = 0
        fallback_failed = False
        while True:
            if self.fallback is not None and self.breaker.state == "open":
                if self._store_in_fallback(batch):
                    return
                fallback_failed = True
            started = self.writing_since = self.clock()
            try:
                self.backend.write_batch(batch)
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                self.writing_since = None
                self.counters.failed += 1
                kind = self.backend.classify(exc)
                if kind == "permanent" or (kind is None and attempt >= patience):
                    self._split(batch, exc, kind)
                    return
                self.breaker.record_failure(exc, started)
                just_opened = self.breaker.state == "open" and not fallback_failed
                if self.fallback is not None and just_opened:
                    continue  # the circuit just opened: straight to the fallback
                if not self._wait_to_retry(batch, exc, attempt):
                    return
                attempt += 1
                continue
            self.writing_since = None
            self.breaker.record_success()
            self._stored(batch, started)
            return

    def _wait_to_retry(self, batch: list[Memory], exc: BaseException, attempt: int) -> bool:
        delay = self.policy.delay(attempt, retry_after(exc))
        log.debug("write of %d failed (%s); retrying in %.3fs", len(batch), exc, delay)
        if not self.wait(delay):
            self._abandon(batch, exc)
            return False
        self.counters.retried += 1
        self.counters.retried_memories += len(batch)
        return True

    def _stored(self, batch: list[Memory], started: float) -> None:
        self.idle_due = True
        self._count_stored(batch, started)

    def _count_stored(self, batch: Sequence[Memory], started: float) -> None:
        """A batch is stored (in the store or the fallback): count it, release it, tell."""
        self.counters.record_stored(len(batch), self.clock() - started, latency_sample(batch))
        self.on_done(batch)
        notify_stored(self.on_stored, batch)

    def _store_in_fallback(self, batch: list[Memory]) -> bool:
        """While the primary rests: store the batch in the fallback; False if it failed too."""
        assert self.fallback is not None
        started = self.clock()
        try:
            self.fallback.write_batch(batch)
        except Exception as exc:  # noqa: BLE001 - then the primary is tried as usual
            log.error("fallback %s failed too: %s", self.fallback.url, exc)
            return False
        self.fallback_pending = True
        self.counters.stored_in_fallback += len(batch)
        self._count_stored(batch, started)
        return True

    def _split(self, batch: list[Memory], exc: BaseException, kind: str | None) -> None:
        """A record is refused: store the good half, narrow down the poison record.

        After an error that cannot be told, retried max_retries times, the halves are tried
        once each: the retries already showed the error is no passing one, and retrying at
        every level of the bisection made ten poison records of 20,000 take minutes.
        """
        if len(batch) == 1:
            self._dead_letter(batch[0], exc)
            return
        middle = len(batch) // 2
        patience = 0 if kind is None else None
        self._write(batch[:middle], patience)
        self._write(batch[middle:], patience)

    def _dead_letter(self, memory: Memory, exc: BaseException) -> None:
        letter = DeadLetter(memory, f"{type(exc).__name__}: {exc}", self.wall_clock())
        attempt = 0
        while True:
            try:
                self.backend.add_dead_letters([letter])
                break
            except Exception as dl_exc:  # noqa: BLE001
                if self.backend.classify(dl_exc) == "permanent":
                    self._unkeepable(memory, exc, dl_exc)
                    return
                if not self.wait(self.policy.delay(attempt, retry_after(dl_exc))):
                    log.error("memory %s could not be dead-lettered: %s", memory.id, dl_exc)
                    self._abandon([memory], dl_exc)
                    return
                attempt += 1
        self.counters.dead_lettered += 1
        log.warning("memory %s dead-lettered: %s", memory.id, letter.error)
        self.on_done([memory])
        notify_failure(self.on_failure, [memory], exc)

    def _unkeepable(self, memory: Memory, exc: BaseException, dl_exc: BaseException) -> None:
        """The store refuses a memory and its dead letter too: counted as dropped, told to
        on_failure, and released (kept, it would be refused again at every start)."""
        self.counters.drop("unstorable")
        log.error(
            "memory %s was dropped: the store refused it (%s: %s) and its dead letter too "
            "(%s: %s)", memory.id, type(exc).__name__, exc, type(dl_exc).__name__, dl_exc,
        )  # fmt: skip
        self.on_done([memory])
        notify_failure(self.on_failure, [memory], exc)

    def _abandon(self, batch: list[Memory], exc: BaseException) -> None:
        """Give up on a batch (shutdown deadline passed): count it, never silently."""
        if self.durable:
            # Still in the spool: the next start (or `memcollect recover`) stores it.
            log.warning("%d memories left in the spool at the close deadline (%s)", len(batch), exc)
            return
        self.counters.drop("shutdown_deadline", len(batch))
        log.warning("%d memories not stored before the close deadline (%s)", len(batch), exc)
        notify_failure(self.on_failure, batch, exc)

    # --- between batches ----------------------------------------------------------------

    def move_from_fallback(self) -> None:
        """Move one batch of what the fallback holds to the primary, then delete it there."""
        with self.moving:
            self._move_from_fallback()

    def _move_from_fallback(self) -> None:
        fallback, backend = self.fallback, self.backend
        assert fallback is not None
        try:
            memories = fallback.take_oldest(self.batch_size)
        except Exception as exc:  # noqa: BLE001 - try again on the next pass
            log.error("could not read the fallback %s: %s", fallback.url, exc)
            return
        if not memories:
            self.fallback_pending = False
            log.info("everything stored in the fallback has moved to %s", backend.url)
            return
        try:
            backend.write_batch(memories)  # idempotent: a move cut short repeats safely
        except Exception as exc:  # noqa: BLE001
            if backend.classify(exc) != "permanent" or not self._move_one_by_one(memories):
                self.breaker.record_failure(exc)
                return
        self.breaker.record_success()
        self.idle_due = True
        try:
            fallback.delete([m.id for m in memories])
        except Exception as exc:  # noqa: BLE001 - moved again later; the primary ignores repeats
            log.error("could not delete moved memories from the fallback: %s", exc)
            return
        self.counters.moved_to_primary += len(memories)

    def _move_one_by_one(self, memories: list[Memory]) -> bool:
        """A moved batch held a record the primary refuses: dead-letter just that one.
        False when the primary fails for another reason (try the move again later)."""
        for memory in memories:
            try:
                self.backend.write_batch([memory])
            except Exception as exc:  # noqa: BLE001
                if self.backend.classify(exc) != "permanent":
                    return False
                letter = DeadLetter(memory, f"{type(exc).__name__}: {exc}", self.wall_clock())
                try:
                    self.backend.add_dead_letters([letter])
                except Exception:  # noqa: BLE001
                    return False
                self.counters.dead_lettered += 1
        return True

    def idle_step(self) -> None:
        """Run the backend's put-off work once; idle_due says whether more is waiting."""
        try:
            self.idle_due = self.backend.idle_work()
        except Exception:  # a backend's own bug must not stop storing
            log.exception("%s: idle work failed", self.backend.url)
            self.idle_due = False
            return
        if not self.idle_due:
            self.release_memory()

    def release_memory(self) -> None:
        """Give back what a burst needed in RAM, once caught up; a failure only warns."""
        try:
            self.backend.release_memory()
            for release in self.caught_up:
                release()
            give_back()
        except Exception as exc:  # noqa: BLE001 - memory kept is not memories lost
            error = f"{type(exc).__name__}: {exc}"
            if error != self._release_error:
                log.warning(
                    "%s: could not give back memory after a load (%s); it is tried again "
                    "each time storing catches up",
                    self.backend.url,
                    error,
                )
            self._release_error = error
        else:
            self._release_error = ""


class Interruptible:
    """A retry wait that a close cuts short, and that gives up past the close deadline."""

    def __init__(self, clock: Clock, sleep: Callable[[float], object] | None = None) -> None:
        self.clock = clock
        self.deadline: float | None = None
        self._interrupt = threading.Event()
        # Injected, a fake clock's sleep stands for both; real, a close interrupts the first.
        self._pause: Callable[[float], object] = sleep or self._interrupt.wait
        self._sleep: Callable[[float], object] = sleep or time.sleep

    def stop(self, deadline: float) -> None:
        """From now on, give up retries that would end after `deadline`; wake a waiting one."""
        self.deadline = deadline
        self._interrupt.set()

    def __call__(self, seconds: float) -> bool:
        """Wait `seconds` before a retry; False when the close deadline would pass first."""
        if self.deadline is None:
            self._pause(seconds)
            if self.deadline is None:
                return True
        remaining = self.deadline - self.clock()
        if remaining <= seconds:
            # Shutting down, and the retry would come after the deadline: give up now, so that
            # close() sees the batch counted rather than racing the worker to the deadline.
            return False
        self._sleep(seconds)
        return True
