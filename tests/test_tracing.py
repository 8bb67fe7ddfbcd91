"""OpenTelemetry: span ids recorded with memories, and spans for memory operations."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

import memcollect as mc

otel = pytest.importorskip(
    "opentelemetry.sdk.trace", reason="!!! SKIPPED, NOT TESTED: opentelemetry-sdk is missing"
)
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

Make = Callable[..., mc.MemoryCollector]
EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    if not isinstance(trace.get_tracer_provider(), otel.TracerProvider):
        provider = otel.TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def test_a_memory_collected_in_a_span_carries_its_ids_and_is_found_by_its_trace(
    make_collector: Make, spans: InMemorySpanExporter
) -> None:
    c = make_collector("memory://")
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("checkout") as span:
        context = span.get_span_context()
        inside = c.collect("error", "payment failed", {"order": 7})
        batch = c.collect_batch([{"category": "note", "content": "retried"}])
    outside = c.collect("note", "no span here")
    assert c.flush(10)
    trace_id, span_id = format(context.trace_id, "032x"), format(context.span_id, "016x")
    memory = c.get(inside)
    assert memory is not None
    assert memory.metadata == {"order": 7, "trace_id": trace_id, "span_id": span_id}
    assert f"trace:{trace_id}" in memory.tags
    found = {m.id for m in c.search(tags=[f"trace:{trace_id}"])}
    assert found == {inside, *batch}
    plain = c.get(outside)
    assert plain is not None and "trace_id" not in plain.metadata and plain.tags == ()


def test_with_otel_on_memory_operations_are_spans_after_the_genai_conventions(
    make_collector: Make, spans: InMemorySpanExporter
) -> None:
    c = make_collector("memory://", otel=True, batch_size=3)
    for i in range(3):
        c.collect("note", f"span me {i}")
    assert c.flush(10)
    c.search("span")
    c.delete(category="note")
    by_name = {}
    for span in spans.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    assert set(by_name) == {"create_memory", "search_memory", "delete_memory"}
    created = by_name["create_memory"]
    assert sum(s.attributes["gen_ai.memory.record.count"] for s in created) == 3
    for span in (created[0], by_name["search_memory"][0], by_name["delete_memory"][0]):
        assert span.attributes["gen_ai.operation.name"] == span.name
        assert span.attributes["gen_ai.provider.name"] == "memcollect"
        assert span.attributes["gen_ai.memory.store.id"] == "memory://"
    assert by_name["search_memory"][0].attributes["gen_ai.memory.record.count"] == 3
    assert by_name["delete_memory"][0].attributes["gen_ai.memory.record.count"] == 3


def test_with_otel_off_no_span_is_made(make_collector: Make, spans: InMemorySpanExporter) -> None:
    c = make_collector("memory://")
    c.collect("note", "quiet")
    assert c.flush(10)
    c.search("quiet")
    assert spans.get_finished_spans() == ()


def test_collecting_without_opentelemetry_never_imports_it() -> None:
    probe = (
        "import sys, memcollect as mc\n"
        "with mc.MemoryCollector('memory://', durability='memory') as c:\n"
        "    c.collect('note', 'x'); c.collect_batch([{'category': 'note', 'content': 'y'}])\n"
        "print('opentelemetry' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    assert out.stdout.strip() == "False"
