"""Giving freed memory back to the system once the worker has nothing left to do."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

__all__ = ["give_back"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    # glibc keeps what SQLite's page caches and the batches freed, and the process's RSS
    # stays at its high-water mark; malloc_trim hands the free pages back (~0.1 ms).
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # musl and others: nothing to call
        return None
    return trim


def give_back() -> None:
    """Return the C heap's free pages to the system, where the C library can (glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
