"""Giving freed memory back to the system once the worker has nothing left to do."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["give_back"]

_trim: Callable[[int], int] | None = None
_looked = False


def give_back() -> None:
    """Return the C heap's free pages to the system, where the C library can (glibc)."""
    global _trim, _looked
    if not _looked:
        _looked = True
        # glibc keeps what SQLite's page caches and the batches freed, and the process's RSS
        # stays at its high-water mark; malloc_trim hands the free pages back (~0.1 ms).
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                _trim = ctypes.CDLL(None).malloc_trim
            except (OSError, AttributeError):  # musl and others: nothing to call
                _trim = None
    if _trim is not None:
        _trim(0)
