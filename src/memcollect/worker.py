"""The background worker: batches, writes, retries, bisects and dead-letters."""

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

from .backends.base import Backend, DeadLetter
from .config import Config
from .inbox import Inbox
from .locks import shared_lock
from .model import Memory
from .retry import CircuitBreaker, RetryPolicy, retry_after
from .stats import Counters

__all__ = ["Worker"]

log = logging.getLogger("memcollect")

Clock = Callable[[], float]
StoredCallback = Callable[[Sequence[Memory]], None]
FailureCallback = Callable[[Sequence[Memory], BaseException], None]


# Every digest starts as a copy of this one: copying costs a third less than building one,
# which parses its digest_size keyword each time.
_BLANK_DIGEST = blake2b(digest_size=16)


def content_hash(content: str) -> str:
    """A short stable digest of the content, for spotting repeats."""
    digest = _BLANK_DIGEST.copy()
    digest.update(content.encode("utf-8"))
    return digest.hexdigest()


# Accept-to-stored latency is sampled: at most this many memories of a batch, evenly spaced
# from its oldest. Every memory of a 2,048 batch cost ~0.25 µs a memory of the GIL that
# collect() waits for, and filled the latency reservoir with just two batches.
LATENCY_SAMPLES_PER_BATCH = 256


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


class Worker:
    """Moves memories from the inbox to the backend on one thread."""

    def __init__(
        self,
        inbox: Inbox,
        backend: Backend,
        counters: Counters,
        *,
        batch_size: int,
        batch_timeout: float,
        policy: RetryPolicy,
        breaker: CircuitBreaker,
        on_stored: list[StoredCallback],
        on_failure: list[FailureCallback],
        on_done: Callable[[Sequence[Memory]], None] = lambda batch: None,
        refill: Callable[[], int] | None = None,
        durable: bool = False,
        fallback: Backend | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.inbox = inbox
        self.backend = backend
        self.counters = counters
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.policy = policy
        self.breaker = breaker
        self.on_stored = on_stored
        self.on_failure = on_failure
        self.on_done = on_done
        # Reads records waiting on disk only back into the inbox; how many it added.
        self.refill = refill
        # Whether what is not stored by the close deadline is still kept on disk.
        self.durable = durable
        # Where batches go while the primary's circuit is open; moved back once it is not.
        self.fallback = fallback
        self.fallback_pending = False
        # Held while a batch moves from the fallback to the primary: a delete() holds it too,
        # so that a memory read from the fallback is not written back after it was deleted.
        # Shared with other processes using the same fallback (a storing process, say).
        self.moving = shared_lock(fallback.move_lock_path() if fallback is not None else None)
        # Whether the backend may have work put off for a quiet moment (Backend.idle_work):
        # at start (what an earlier process left) and after every batch stored.
        self.idle_due = True
        self.clock = clock
        # When the write under way began (None between writes): a write that hangs shows.
        self.writing_since: float | None = None
        self.thread: threading.Thread | None = None
        # Set by close(): drain everything, then stop. `deadline` bounds the drain.
        self.stopping = False
        self.deadline: float | None = None
        self._interrupt = threading.Event()
        # Set by close() when the worker outlives its deadline: run once the thread ends.
        self.after_exit: Callable[[], None] | None = None
        self._exit_lock = threading.Lock()
        self._exited = False

    @classmethod
    def configured(
        cls,
        config: Config,
        inbox: Inbox,
        backend: Backend,
        counters: Counters,
        breaker: CircuitBreaker,
        **options: Any,
    ) -> Worker:
        """A worker batching and retrying as `config` says; `options` as for Worker()."""
        return cls(
            inbox,
            backend,
            counters,
            batch_size=config.batch_size,
            batch_timeout=config.batch_timeout,
            policy=RetryPolicy(config.retry_base, config.retry_max, config.max_retries),
            breaker=breaker,
            **options,
        )

    # --- thread --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        self.thread = threading.Thread(target=self._run, name="memcollect-worker", daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        """Whether the worker thread is running."""
        return self.thread is not None and self.thread.is_alive()

    def stop(self, deadline: float) -> None:
        """Ask the worker to drain what is queued by `deadline` (monotonic), then exit."""
        self.deadline = deadline
        self.stopping = True
        self.inbox.closing = True
        self._interrupt.set()
        self.inbox.wakeup.set()

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch:
                    self.process(batch)
                elif self.stopping:
                    return
                if self.fallback_pending and self.breaker.state != "open" and not self.stopping:
                    with self.moving:
                        self.move_from_fallback()
                if self.idle_due and self._quiet():
                    self.idle_due = self.idle_step()
        except Exception:  # pragma: no cover - a bug; never take the host process down
            log.exception("memcollect worker crashed; memories queued from now on are not stored")
        finally:
            with self._exit_lock:
                self._exited = True
                late = self.after_exit
            if late is not None:
                late()

    def _quiet(self) -> bool:
        """Whether there is time for the backend's put-off work: no full batch waiting, no
        close, and the backend writing. (A flush that comes meanwhile waits one step.)"""
        return (
            not self.stopping
            and self.breaker.state == "closed"
            and self.inbox.size < self.batch_size
        )

    def idle_step(self) -> bool:
        """Run the backend's put-off work once; whether more is waiting."""
        try:
            return self.backend.idle_work()
        except Exception:  # a backend's own bug must not stop storing
            log.exception("%s: idle work failed", self.backend.url)
            return False

    def when_exited(self, action: Callable[[], None]) -> None:
        """Run `action` once the thread has ended: now if it has, else as its last step."""
        with self._exit_lock:
            if not self._exited and self.alive():
                self.after_exit = action
                return
        action()

    def _next_batch(self) -> list[Memory]:
        """Wait for a full batch, the linger timeout, a flush, or shutdown; then take one."""
        inbox = self.inbox
        linger_until: float | None = None
        while True:
            inbox.wakeup.clear()
            if self.refill is not None and inbox.size <= inbox.max_size // 2:
                self.refill()
            size = inbox.size
            if self.stopping:
                if self.deadline is not None and self.clock() >= self.deadline:
                    return []  # out of time: close() counts what is left
                return inbox.take(self.batch_size)
            if size and (size >= self.batch_size or inbox.flush_waiters):
                return inbox.take(self.batch_size)
            if size:
                # The linger clock starts with the first memory of a batch.
                now = self.clock()
                if linger_until is None:
                    linger_until = now + self.batch_timeout
                if now >= linger_until:
                    return inbox.take(self.batch_size)
                inbox.wakeup.wait(linger_until - now)
            else:
                linger_until = None
                if self.fallback_pending:
                    # Idle, with memories to move back: go and move them once the primary's
                    # circuit allows a try.
                    if self.breaker.state != "open":
                        return []
                    inbox.wakeup.wait(max(0.01, self.breaker.cooldown_left()))
                elif self.idle_due and self._quiet():
                    return []  # a quiet moment: the backend's put-off work runs
                else:
                    inbox.wakeup.wait()

    # --- one batch -----------------------------------------------------------------------

    def process(self, batch: list[Memory]) -> None:
        """Store one batch (retrying, bisecting and dead-lettering as needed), then release it."""
        try:
            self.store(batch)
        finally:
            self.inbox.finish()

    def store(self, batch: list[Memory]) -> None:
        """Store one batch in this thread, retrying, bisecting and dead-lettering as needed."""
        blank = _BLANK_DIGEST.copy
        for memory in batch:
            if not memory.content_hash:
                # content_hash() inlined: a call a memory is GIL time collect() waits for.
                digest = blank()
                digest.update(memory.content.encode())
                memory.content_hash = digest.hexdigest()
        self._write(batch)

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
                if (
                    self.fallback is not None
                    and self.breaker.state == "open"
                    and not (fallback_failed)
                ):
                    continue  # the circuit just opened: straight to the fallback
                delay = self.policy.delay(attempt, retry_after(exc))
                log.debug("write of %d failed (%s); retrying in %.3fs", len(batch), exc, delay)
                if not self._sleep(delay):
                    self._abandon(batch, exc)
                    return
                self.counters.retried += 1
                self.counters.retried_memories += len(batch)
                attempt += 1
                continue
            self.writing_since = None
            self.breaker.record_success()
            self.idle_due = True
            self.counters.record_stored(len(batch), self.clock() - started, latency_sample(batch))
            self.on_done(batch)
            notify_stored(self.on_stored, batch)
            return

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
        self.counters.record_stored(len(batch), self.clock() - started, latency_sample(batch))
        self.on_done(batch)
        notify_stored(self.on_stored, batch)
        return True

    def move_from_fallback(self) -> None:
        """Move one batch of what the fallback holds to the primary, then delete it there."""
        assert self.fallback is not None
        try:
            memories = self.fallback.take_oldest(self.batch_size)
        except Exception as exc:  # noqa: BLE001 - try again on the next pass
            log.error("could not read the fallback %s: %s", self.fallback.url, exc)
            return
        if not memories:
            self.fallback_pending = False
            log.info("everything stored in the fallback has moved to %s", self.backend.url)
            return
        try:
            self.backend.write_batch(memories)  # idempotent: a move cut short repeats safely
        except Exception as exc:  # noqa: BLE001
            if self.backend.classify(exc) != "permanent" or not self._move_one_by_one(memories):
                self.breaker.record_failure(exc)
                return
        self.breaker.record_success()
        self.idle_due = True
        try:
            self.fallback.delete([m.id for m in memories])
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
                letter = DeadLetter(memory, f"{type(exc).__name__}: {exc}", time.time())
                try:
                    self.backend.add_dead_letters([letter])
                except Exception:  # noqa: BLE001
                    return False
                self.counters.dead_lettered += 1
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
        letter = DeadLetter(memory, f"{type(exc).__name__}: {exc}", time.time())
        attempt = 0
        while True:
            try:
                self.backend.add_dead_letters([letter])
                break
            except Exception as dl_exc:  # noqa: BLE001
                if self.backend.classify(dl_exc) == "permanent":
                    self._unkeepable(memory, exc, dl_exc)
                    return
                if not self._sleep(self.policy.delay(attempt, retry_after(dl_exc))):
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

    def _sleep(self, seconds: float) -> bool:
        """Wait before a retry; False when the shutdown deadline has passed."""
        if self.deadline is None:
            self._interrupt.wait(seconds)
            if self.deadline is None:
                return True
        remaining = self.deadline - self.clock()
        if remaining <= seconds:
            # Shutting down, and the retry would come after the deadline: give up now, so that
            # close() sees the batch counted rather than racing the worker to the deadline.
            return False
        time.sleep(seconds)
        return True
