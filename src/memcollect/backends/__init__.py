"""Stores memcollect writes to, chosen by URL scheme."""

from __future__ import annotations

from ..errors import ValidationError
from .base import Backend, DeadLetter, SearchQuery

__all__ = ["Backend", "DeadLetter", "SearchQuery", "open_backend"]

SCHEMES = (
    "memory://, sqlite:///path/to/file.db, postgresql://user@host/db, http://host:8765, mem0://"
)


def open_backend(url: str) -> Backend:
    """A backend for a URL: memory://, sqlite:///file.db, postgresql://…, http://host:port."""
    if not isinstance(url, str) or "://" not in url:
        raise ValidationError(f"backend {url!r} is not a URL: use one of {SCHEMES}")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        from .memory import MemoryBackend

        return MemoryBackend(url)
    if scheme == "sqlite":
        from .sqlite import SQLiteBackend

        return SQLiteBackend(url)
    if scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresBackend
        except ImportError as exc:
            raise ValidationError(str(exc)) from None
        return PostgresBackend(url)
    if scheme == "mem0":
        from .mem0 import Mem0Backend

        return Mem0Backend(url)
    if scheme in ("http", "https"):
        try:
            from .remote import RemoteBackend
        except ImportError as exc:
            raise ValidationError(str(exc)) from None
        return RemoteBackend(url)
    raise ValidationError(f"backend scheme {scheme!r} is not supported: use one of {SCHEMES}")
