"""The server's own history of its counters, so that a dashboard opened (or reloaded) after an
incident shows the hours before it; and the access-log filter that keeps polling out of it."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import msgspec

from ..stats import Stats

__all__ = ["History", "HistoryBody", "Sample", "Sampler", "quiet_polling"]

log = logging.getLogger("memcollect")

#: How often the server samples its counters, and for how long it keeps the samples.
HISTORY_INTERVAL_S = 5.0
HISTORY_KEEP_S = 6 * 3600.0


class Sample(msgspec.Struct, frozen=True, array_like=True):
    """The collector's counters at one moment (a JSON array: [t, accepted, stored, ...])."""

    t: float
    accepted: int
    stored: int
    #: Waiting to be stored: queued in RAM plus in the spool on disk.
    waiting: int
    dead_lettered: int
    dropped: int
    pending_embeddings: int


class HistoryBody(msgspec.Struct, frozen=True):
    """Samples of the server's counters, oldest first, taken every `interval` seconds."""

    interval: float
    samples: list[Sample]


class History:
    """The last hours of samples of a collector's counters, in RAM."""

    def __init__(self, interval: float = HISTORY_INTERVAL_S, keep: float = HISTORY_KEEP_S):
        self.interval = interval
        self._samples: deque[Sample] = deque(maxlen=max(2, int(keep / interval) + 1))
        self._lock = threading.Lock()

    @staticmethod
    def sample_of(stats: Stats, at: float) -> Sample:
        """A sample of these counters, taken at `at` (epoch seconds)."""
        return Sample(
            at,
            stats.accepted,
            stats.stored,
            stats.queue_depth + stats.spool_pending,
            stats.dead_lettered,
            stats.dropped,
            stats.pending_embeddings,
        )

    def record(self, stats: Stats, at: float) -> None:
        """Keep one sample of these counters, taken at `at` (epoch seconds)."""
        sample = self.sample_of(stats, at)
        with self._lock:
            self._samples.append(sample)

    def body(self, seconds: float, now: float) -> HistoryBody:
        """The samples of the last `seconds`."""
        with self._lock:
            kept = [s for s in self._samples if s.t >= now - seconds]
        return HistoryBody(self.interval, kept)


class Sampler:
    """Records a collector's counters into a History every interval, in a daemon thread."""

    def __init__(
        self,
        history: History,
        stats: Callable[[], Stats],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.history = history
        self._stats = stats
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memcollect-history", daemon=True)

    def start(self) -> None:
        """Take a first sample now, then one every interval until stop()."""
        self.sample()
        self._thread.start()

    def sample(self) -> None:
        """Take one sample now."""
        try:
            self.history.record(self._stats(), self._clock())
        except Exception as exc:  # noqa: BLE001 - a missed sample must not end the series
            log.debug("history sample failed: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.history.interval):
            self.sample()

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


#: What a dashboard polls: a success there is not worth a line of the access log each time.
POLLED_PATHS = frozenset({"/v1/stats", "/v1/history", "/v1/counts"})


def quiet_polling(record: logging.LogRecord) -> bool:
    """An access-log filter: drop successful GETs of the paths a dashboard polls."""
    args = record.args
    # uvicorn's access record: (client, method, path with query, http version, status).
    if isinstance(args, tuple) and len(args) == 5:
        _, method, path, _, status = args
        if (
            method == "GET"
            and isinstance(path, str)
            and path.split("?", 1)[0] in POLLED_PATHS
            and isinstance(status, int)
            and status < 400
        ):
            return False
    return True
