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
