"""Random sequences of collect/flush/get/close never lose or duplicate a memory."""

from __future__ import annotations

import itertools
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import memcollect as mc
from memcollect.testing import FaultyBackend

_names = itertools.count()


class CollectorMachine(RuleBasedStateMachine):
    """The model: a dict of what was accepted; the system: a collector with a flaky store."""

    durability = "memory"
    max_queue_size = 100_000

    def __init__(self) -> None:
        super().__init__()
        self.backend = FaultyBackend()
        self.data_dir = tempfile.mkdtemp(prefix="memcollect-model-")
        self.collector = mc.MemoryCollector(
            self.backend,
            durability=self.durability,
            data_dir=self.data_dir,
            batch_size=7,
            batch_timeout=0.001,
            retry_base=0.0005,
            retry_max=0.002,
            max_retries=3,
            max_queue_size=self.max_queue_size,
        )
        self.accepted: dict[str, str] = {}
        self.closed = False

    @precondition(lambda self: not self.closed)
    @rule(
        category=st.sampled_from(["bug", "error", "note", "feedback"]),
        priority=st.sampled_from([None, "low", "medium", "high", "critical"]),
        n=st.integers(1, 20),
    )
    def collect(self, category: str, priority: str | None, n: int) -> None:
        for _ in range(n):
            content = f"memory {next(_names)}"
            mid = self.collector.collect(category, content, priority=priority)
            assert mid not in self.accepted
            self.accepted[mid] = content

    @precondition(lambda self: not self.closed)
    @rule(n=st.integers(1, 3))
    def transient_failures(self, n: int) -> None:
        self.backend.fail_next(n)

    @precondition(lambda self: not self.closed)
    @rule()
    def flush(self) -> None:
        assert self.collector.flush(timeout=30)
        assert self.backend.inner.count() == len(self.accepted)

    @rule(data=st.data())
    def get(self, data: st.DataObject) -> None:
        if self.accepted:
            mid = data.draw(st.sampled_from(sorted(self.accepted)))
            found = self.collector.get(mid)
            assert found is not None and found.content == self.accepted[mid]

    @rule()
    def close(self) -> None:
        self.collector.close(timeout=30)
        self.closed = True

    @invariant()
    def nothing_duplicated(self) -> None:
        written = self.backend.written
        assert len(written) == len(set(written))

    def teardown(self) -> None:
        self.collector.close(timeout=30)
        stored = {m.id: m.content for m in self.backend.inner.recent(100_000)}
        assert stored == self.accepted
        assert self.collector.stats().dropped == 0
        shutil.rmtree(self.data_dir, ignore_errors=True)


CollectorMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None
)
test_collector_never_loses_or_duplicates = CollectorMachine.TestCase


class SpoolCollectorMachine(CollectorMachine):
    """The same, through the spool with a RAM window of 8: spills and reads back."""

    durability = "spool"
    max_queue_size = 8


SpoolCollectorMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None
)
test_spool_collector_never_loses_or_duplicates = SpoolCollectorMachine.TestCase
