"""OpenTelemetry, at no cost where it is not used: the active span's ids on each memory
collected, and (with otel=True) spans for memory operations, after the GenAI conventions."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .model import Memory

__all__ = ["Spans", "current_span_ids", "link_span"]

_modules = sys.modules


def current_span_ids() -> tuple[str, str] | None:
    """The active span's trace and span ids (hex), if OpenTelemetry is in use and a span is
    active; None at the cost of one dict lookup when the application never imported it."""
    trace = _modules.get("opentelemetry.trace")
    if trace is None:
        return None
    span = trace.get_current_span()
    if span is trace.INVALID_SPAN:  # no span active: what most calls find, checked first
        return None
    context = span.get_span_context()
    if not context.is_valid:
        return None
    global _last
    ids = (context.trace_id, context.span_id)
    last = _last  # read once: another thread may replace it meanwhile
    if last[0] == ids:
        return last[1]
    # The same span usually collects many memories: its ids are formatted once.
    last = _last = (ids, (format(ids[0], "032x"), format(ids[1], "016x")))
    return last[1]


# The ids last formatted, and their hex, replaced whole: ((trace_id, span_id), (hex, hex)).
_last: tuple[tuple[int, int], tuple[str, str]] = ((0, 0), ("0" * 32, "0" * 16))


class Spans:
    """Spans for memory operations (create_memory, search_memory, delete_memory), or, when
    not enabled, a context that does nothing."""

    def __init__(self, enabled: bool, store_id: str) -> None:
        self.enabled = enabled
        self.store_id = store_id
        self._tracer: Any = None

    def __call__(self, operation: str) -> Any:
        """A context around one operation; its value takes `.set_attribute()`."""
        if not self.enabled:
            return _NOTHING
        return self._span(operation)

    @contextmanager
    def _span(self, operation: str) -> Iterator[Any]:
        if self._tracer is None:
            from opentelemetry import trace  # only when asked for: otel=True

            from . import __version__

            self._tracer = trace.get_tracer("memcollect", __version__)
        attributes = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": "memcollect",
            "gen_ai.memory.store.id": self.store_id,
        }
        with self._tracer.start_as_current_span(operation, attributes=attributes) as span:
            yield span


class _Nothing:
    def set_attribute(self, key: str, value: object) -> None:
        """Nothing to record on."""

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NOTHING = _Nothing()


def link_span(memory: Memory) -> None:
    """Record the active span's trace and span ids with a memory, if a span is active: the
    trace id as a tag (trace:<id>, to search by), both in the metadata."""
    ids = current_span_ids()
    if ids is None:
        return
    trace_id, span_id = ids
    memory.metadata = {**memory.metadata, "trace_id": trace_id, "span_id": span_id}
    memory.tags = (*memory.tags, f"trace:{trace_id}")
