"""The worker thread: takes batches from the inbox and hands them to the storing engine."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .errors import failure_sentence
from .inbox import Inbox
from .model import Memory
from .storing import Interruptible, Storing

__all__ = ["Worker"]

log = logging.getLogger("memcollect")

# The wait after a step fails as no store fails (a bug), doubling while it repeats.
_FIRST_PAUSE_S = 0.5
_MOST_PAUSE_S = 30.0

Clock = Callable[[], float]
#: Waits for an event up to a timeout (None: for as long as it takes); whether it was set.
WaitEvent = Callable[[threading.Event, float | None], bool]


def wait_event(event: threading.Event, timeout: float | None) -> bool:
    """Event.wait, as a function a test can replace with a fake clock's."""
    return event.wait(timeout)


class Worker:
    """Moves memories from the inbox to the store on one thread, batching by size or time."""

    def __init__(
        self,
        inbox: Inbox,
        storing: Storing,
        wait: Interruptible,
        *,
        batch_size: int,
        batch_timeout: float,
        refill: Callable[[], int] | None = None,
        clock: Clock = time.monotonic,
        wait_for_event: WaitEvent = wait_event,
    ) -> None:
        self.inbox = inbox
        self.storing = storing
        self.wait = wait
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        # Reads records waiting on disk only back into the inbox; how many it added.
        self.refill = refill
        self.clock = clock
        self.wait_for_event = wait_for_event
        self.thread: threading.Thread | None = None
        # Set by stop(): drain everything, then stop. `deadline` bounds the drain.
        self.stopping = False
        self.deadline: float | None = None
        # Set by close() when the worker outlives its deadline: run once the thread ends.
        self.after_exit: Callable[[], None] | None = None
        self._exit_lock = threading.Lock()
        self._exited = False
        #: Why the last step failed as no store fails (a bug), until a batch is stored again.
        self.error: str | None = None
        self._pause = _FIRST_PAUSE_S

    def start(self) -> None:
        """Start the worker thread."""
        self.thread = threading.Thread(target=self._run, name="memcollect-worker", daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        """Whether the worker thread is running."""
        return self.thread is not None and self.thread.is_alive()

    def on_thread(self) -> bool:
        """Whether the caller is the worker thread itself (a callback)."""
        return self.thread is threading.current_thread()

    def stop(self, deadline: float) -> None:
        """Ask the worker to drain what is queued by `deadline` (on its clock), then exit."""
        self.deadline = deadline
        self.stopping = True
        self.inbox.closing = True
        self.wait.stop(deadline)
        self.inbox.wakeup.set()

    def when_exited(self, action: Callable[[], None]) -> None:
        """Run `action` once the thread has ended: now if it has, else as its last step."""
        with self._exit_lock:
            if not self._exited and self.alive():
                self.after_exit = action
                return
        action()

    def _run(self) -> None:
        try:
            while True:
                try:
                    if not self.step():
                        return
                except Exception as exc:  # noqa: BLE001 - a bug: said, waited out, tried again
                    if not self._failed(exc):
                        return
        finally:
            with self._exit_lock:
                self._exited = True
                late = self.after_exit
            if late is not None:
                late()

    def step(self) -> bool:
        """Wait for and store one batch, or do the work between batches; False to exit."""
        storing = self.storing
        batch = self.next_batch()
        if batch:
            self.process(batch)
        elif self.stopping:
            return False
        if storing.may_move and not self.stopping:
            storing.move_from_fallback()
        if storing.idle_due and self._quiet():
            storing.idle_step()
        return True

    def drain(self, deadline: float) -> None:
        """Store what is queued from the caller's thread, until `deadline` (no thread)."""
        while self.clock() < deadline:
            if self.refill is not None:
                self.refill()
            batch = self.inbox.take(self.batch_size)
            if not batch:
                return
            try:
                self.process(batch)
            except Exception as exc:  # noqa: BLE001 - a bug: what is left is counted as left
                log.error("the worker failed: %s", failure_sentence(exc))
                return

    def process(self, batch: list[Memory]) -> None:
        """Store one batch, then release it from the inbox."""
        try:
            self.storing.store(batch)
        except Exception:
            # Not lost to a bug: queued again (the store skips what it stored already), and a
            # flush waits for it rather than saying it was stored.
            self.inbox.put_back(batch)
            raise
        else:
            if self.error is not None:  # before finish(): a flush it ends sees health ok
                log.warning("the worker stores again after: %s", self.error)
                self.error, self._pause = None, _FIRST_PAUSE_S
        finally:
            self.inbox.finish()

    def _failed(self, exc: Exception) -> bool:
        """A step failed as no store fails (a bug): say it once, wait, and go on, the wait
        doubling while it repeats; False when a close cut the wait short."""
        why = failure_sentence(exc)
        if why != self.error:
            log.error("the worker failed, and tries again in %.1f s: %s", self._pause, why)
        self.error = why
        pause, self._pause = self._pause, min(_MOST_PAUSE_S, self._pause * 2)
        return self.wait(pause)

    def _quiet(self) -> bool:
        """Whether there is time for the backend's put-off work: no full batch waiting, no
        close, and the backend writing. (A flush that comes meanwhile waits one step.)"""
        return (
            not self.stopping
            and self.storing.breaker.state == "closed"
            and self.inbox.size < self.batch_size
        )

    def next_batch(self) -> list[Memory]:
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
                self.wait_for_event(inbox.wakeup, linger_until - now)
                continue
            linger_until = None
            if not self._wait_idle():
                return []

    def _wait_idle(self) -> bool:
        """Nothing queued: wait for memories; False when there is work between batches."""
        storing, wakeup, wait = self.storing, self.inbox.wakeup, self.wait_for_event
        if storing.fallback_pending:
            # Idle, with memories to move back: go and move them once the primary's circuit
            # allows a try.
            if storing.breaker.state != "open":
                return False
            wait(wakeup, max(0.01, storing.breaker.cooldown_left()))
        elif storing.idle_due and self._quiet():
            return False  # a quiet moment: the backend's put-off work runs
        else:
            wait(wakeup, None)
        return True
