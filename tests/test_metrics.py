"""/metrics is generated from Stats: every field has a metric, with the field's value."""

from __future__ import annotations

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from memcollect.stats import Health, Latency, Stats


def _sample_stats() -> Stats:
    """A Stats whose every field holds a distinct value (none left at a default)."""
    values: dict[str, object] = {}
    for number, field in enumerate(msgspec.structs.fields(Stats), start=1):
        kind = field.type
        if kind is Latency:
            values[field.name] = Latency(p50_ms=number, p99_ms=2 * number, samples=number)
        elif kind == dict[str, int]:
            values[field.name] = {"queue_full": number, "closed": 1}
        elif kind is str:
            values[field.name] = "half_open" if field.name == "circuit" else "sqlite:///m.db"
        elif kind is float:
            values[field.name] = number + 0.5
        else:
            values[field.name] = number
    reasons = values["dropped_by_reason"]
    assert isinstance(reasons, dict)
    values["dropped"] = sum(reasons.values())
    return Stats(**values)  # type: ignore[arg-type]


def _scrape(stats: Stats, health: Health) -> dict[str, dict[tuple[str, ...], float]]:
    from memcollect.server.metrics import stats_metrics

    class Fixed(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return stats_metrics(stats, health)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    found: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.values()))
            found.setdefault(family.name, {})[labels] = sample.value
    return found


def test_every_stats_field_has_a_metric_with_its_value() -> None:
    from memcollect.server.metrics import metric_name

    stats = _sample_stats()
    scraped = _scrape(stats, Health("degraded", ["a reason"], "sqlite:///m.db"))
    for field in msgspec.structs.fields(Stats):
        name = metric_name(field.name)
        assert name in scraped, f"Stats.{field.name} has no metric"
        value = getattr(stats, field.name)
        samples = scraped[name]
        if isinstance(value, Latency):
            assert samples[("0.5",)] == value.p50_ms / 1000
            assert samples[("0.99",)] == value.p99_ms / 1000
        elif field.name == "dropped":
            assert sum(samples.values()) == value  # the per-reason counts sum to the total
        elif isinstance(value, dict):
            assert samples == {(reason,): float(n) for reason, n in value.items()}
        elif field.name == "circuit":
            assert samples == {(): 1.0}  # half_open: not closed
        elif field.name == "backend":
            assert samples == {(value,): 1.0}
        else:
            assert samples == {(): float(value)}, field.name
    assert scraped["memcollect_health"] == {(): 1.0}


def test_counters_are_counters_and_gauges_are_gauges() -> None:
    from memcollect.server.metrics import GAUGES, metric_name, stats_metrics

    stats = _sample_stats()
    kinds = {m.name: m.type for m in stats_metrics(stats, Health("ok", [], "x"))}
    for field in msgspec.structs.fields(Stats):
        if field.type in (int, int | None) and field.name != "dropped":
            expected = "gauge" if field.name in GAUGES else "counter"
            assert kinds[metric_name(field.name)] == expected, field.name
    assert kinds["memcollect_stored"] == "counter"
    assert kinds["memcollect_queue_depth"] == "gauge"


def test_a_storing_process_unknown_is_left_out_rather_than_shown_as_zero() -> None:
    from memcollect.server.metrics import stats_metrics

    stats = msgspec.structs.replace(_sample_stats(), storer_pid=None)
    names = {m.name for m in stats_metrics(stats, Health("ok", [], "x"))}
    assert "memcollect_storer_pid" not in names
    assert "memcollect_storer_restarts" in names


def test_no_password_in_a_store_url_reaches_stats_health_or_metrics() -> None:
    from memcollect.backends.base import without_password

    assert without_password("postgresql://app:s3cret@db:5432/m?x=1") == (
        "postgresql://app:***@db:5432/m?x=1"
    )
    assert without_password("postgresql://app@db/m") == "postgresql://app@db/m"
    assert without_password("sqlite:///data/a:b@c.db") == "sqlite:///data/a:b@c.db"
    import memcollect as mc
    from memcollect.backends.memory import MemoryBackend

    backend = MemoryBackend("memory://user:hunter2@somewhere")
    with mc.MemoryCollector(backend, durability="memory") as c:
        assert "hunter2" not in c.stats().backend
        assert "hunter2" not in repr(c)
