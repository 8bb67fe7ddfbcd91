"""A storing child that is a thread of the collecting process: how storer="auto" begins.

It speaks the storing process's protocol over a pair of pipes, so the collecting side treats
both alike. A short script is stored from here and never waits for an interpreter to start;
a sustained load is handed to a storing process (collecting.StoringProcess promotes it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

from ..backends.base import Backend
from ..config import Config
from ..errors import failure_sentence
from ..storing import FailureCallback, StoredCallback
from ..tracing import Spans
from .protocol import tell_stopped

__all__ = ["InProcessChild", "Shared"]

log = logging.getLogger("memcollect")


class Shared:
    """What a storing thread takes from the collecting process: its stores and callbacks."""

    def __init__(
        self,
        backend: Backend,
        fallback: Backend | None,
        on_stored: Sequence[StoredCallback],
        on_failure: Sequence[FailureCallback],
        spans: Spans,
    ) -> None:
        self.backend = backend
        self.fallback = fallback
        # The collector's own lists: a callback registered later is called from here too.
        self.on_stored = on_stored
        self.on_failure = on_failure
        self.spans = spans
        # Set when the collecting side gives up on the thread (its close deadline passed):
        # retries stop waiting and nothing more is answered, so what was not stored stays
        # in the spool for the next start, as with a storing process that is killed.
        self.abandoned = threading.Event()
        # Set while a storing process starts to take the load over: the thread stores smaller
        # batches, so that it can stop soon once the process is ready.
        self.promoting = threading.Event()
        # Set when that process is ready: the thread stops after the batch it is storing and
        # answers how far it got; the process stores the rest.
        self.hand_over = threading.Event()

    def options(self) -> dict[str, Any]:
        """The Storing options that make it call back, trace, and give up as it is told."""
        return {
            "on_stored": self.on_stored,
            "on_failure": self.on_failure,
            "spans": self.spans,
            "wait": self.wait_unless_abandoned,
        }

    def wait_unless_abandoned(self, seconds: float) -> bool:
        """Wait before a retry; False (give the retry up) once abandoned."""
        return not self.abandoned.wait(seconds)


class InProcessChild:
    """The part of subprocess.Popen that StoringProcess uses, for a storing thread."""

    def __init__(self, config: Config, shared: Shared) -> None:
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        self.stdin: IO[bytes] | None = os.fdopen(requests_w, "wb")
        self.stdout: IO[bytes] | None = os.fdopen(answers_r, "rb")
        self.pid = os.getpid()
        self.returncode: int | None = None
        self._shared = shared
        self._exit_code: int | None = None
        self._ending = threading.Lock()
        self._after_end: Callable[[], None] | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(config, os.fdopen(requests_r, "rb"), os.fdopen(answers_w, "wb")),
            name="memcollect-storing",
            daemon=True,
        )
        self._thread.start()

    def _run(self, config: Config, requests: IO[bytes], answers: IO[bytes]) -> None:
        from .child import serve  # child imports this module for Shared

        code = 1
        try:
            # The hello line the process reads first: the thread has its config already.
            requests.readline()
            serve(config, requests, answers, self._shared)
            code = 0
        except Exception as exc:  # noqa: BLE001 - a bug: the collecting side starts another
            why = failure_sentence(exc)
            log.error("the storing thread stopped, the collecting process starts another: %s", why)
            tell_stopped(answers, why)
        finally:
            # The requests' write end first: the thread reading them then sees their end and
            # lets go of the read end, whose close() would otherwise wait for it for ever.
            for pipe in (self.stdin, requests, answers):
                with contextlib.suppress(OSError, ValueError):
                    if pipe is not None:
                        pipe.close()
            with self._ending:
                self._exit_code = code
                late, self._after_end = self._after_end, None
            if late is not None:
                late()

    def when_ended(self, action: Callable[[], None]) -> None:
        """Run `action` once the thread has ended: now if it has, else as its last step."""
        with self._ending:
            if self._exit_code is None and self._thread.is_alive():
                self._after_end = action
                return
        action()

    def poll(self) -> int | None:
        """The exit code once the thread has ended, else None."""
        if self.returncode is None and not self._thread.is_alive():
            self.returncode = self._exit_code if self._exit_code is not None else 1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the thread to end (not once it was abandoned); its exit code."""
        if self.returncode is None:
            self._thread.join(timeout)
        code = self.poll()
        if code is None:
            import subprocess  # as Popen.wait() raises; rare, so not imported up front

            raise subprocess.TimeoutExpired("memcollect-storing", timeout or 0.0)
        return code

    def kill(self) -> None:
        """A thread cannot be killed: it is abandoned, answers nothing more and stops at its
        next retry or range (what it did not answer stays in the spool, stored again by id)."""
        self._shared.abandoned.set()
        self.returncode = -9
