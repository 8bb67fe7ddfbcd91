"""The exception tree: everything memcollect raises derives from MemcollectError."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ConfigError",
    "MemcollectError",
    "PermanentBackendError",
    "QueueFullError",
    "TransientBackendError",
    "ValidationError",
]


class MemcollectError(Exception):
    """Base class of every error memcollect raises."""


class ValidationError(MemcollectError, ValueError):
    """An argument was invalid; the message names the field and what to do."""


class ConfigError(ValidationError):
    """A configuration value was invalid; the message names the field."""


class QueueFullError(MemcollectError):
    """The queue was full and `on_full="raise"` was chosen."""


class BackendError(MemcollectError):
    """A store failed; raised by backends, never from collect()."""


class TransientBackendError(BackendError):
    """A failure that may pass by itself (connection lost, database busy): retried."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentBackendError(BackendError):
    """A failure that will repeat for the same records (bad data): bisected and dead-lettered."""


def failure_sentence(exc: BaseException) -> str:
    """A failure as one line: memcollect's own sentence, else what was raised and where (a
    bug: for a report, without a traceback in the user's log)."""
    if isinstance(exc, MemcollectError):
        return str(exc)
    import traceback
    from pathlib import Path

    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"unexpected {type(exc).__name__}{where}: {exc}"
