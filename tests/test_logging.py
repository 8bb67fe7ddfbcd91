"""Log records as memories: the logging handler and the structlog processor."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator

import pytest

import memcollect as mc
from memcollect.logging import MemoryHandler, MemoryProcessor

Make = Callable[..., mc.MemoryCollector]


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("app.checkout")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    log.handlers.clear()


def stored(c: mc.MemoryCollector) -> list[mc.Memory]:
    assert c.flush(10)
    return sorted(c.recent(100), key=lambda m: m.created_at)


def test_records_become_memories_with_their_level_message_extra_and_traceback(
    make_collector: Make, logger: logging.Logger
) -> None:
    c = make_collector("memory://")
    logger.addHandler(MemoryHandler(c, project="shop", agent="checkout-service"))
    logger.info("not collected: below WARNING")
    logger.warning("retrying payment %s after %d ms", "p-42", 250, extra={"order": 7})
    try:
        {}["user_id"]
    except KeyError:
        logger.exception("checkout failed", extra={"cart": {"items": 3}, "user": object()})
    logger.critical("payments are down")
    warning, error, critical = stored(c)
    assert (warning.category, warning.priority) == ("operation", "medium")
    assert warning.content == "retrying payment p-42 after 250 ms"
    assert warning.metadata["order"] == 7 and warning.metadata["level"] == "WARNING"
    assert "test_logging.py" in warning.metadata["where"]
    assert warning.tags == ("app.checkout",)
    assert (warning.project, warning.agent) == ("shop", "checkout-service")
    assert (error.category, error.priority) == ("error", "high")
    assert "KeyError: 'user_id'" in error.metadata["traceback"]
    assert error.metadata["cart"] == {"items": 3}
    assert error.metadata["user"].startswith("<object object")  # kept as its repr
    assert (critical.category, critical.priority) == ("error", "critical")


def test_the_handler_never_raises_into_the_application(
    make_collector: Make, logger: logging.Logger
) -> None:
    c = make_collector("memory://")
    handler = MemoryHandler(c)
    logger.addHandler(handler)
    logger.warning("")  # empty: still a memory, saying so
    # A formatting error in the caller's code, straight to the handler (pytest's own capture
    # handler would raise it).
    handler.handle(logging.LogRecord("app", logging.WARNING, "x.py", 1, "%s %s", ("x",), None))
    logger.warning("deep", extra={"nested": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}})
    contents = [m.content for m in stored(c)]
    assert contents == ["(an empty WARNING message)", "deep"]
    assert handler.dropped == 1
    c.close()
    logger.error("after the collector closed")  # counted as dropped by the collector
    assert c.stats().dropped_by_reason == {"closed": 1}


def test_memcollects_own_log_records_are_never_collected(
    make_collector: Make,
) -> None:
    c = make_collector("memory://")
    handler = MemoryHandler(c, level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        logging.getLogger("memcollect").warning("the library's own warning")
        logging.getLogger("memcollect.server").error("and its server's")
        logging.getLogger("app").warning("the application's")
    finally:
        root.removeHandler(handler)
    assert [m.content for m in stored(c)] == ["the application's"]


def test_a_collector_that_would_block_is_refused(make_collector: Make) -> None:
    c = make_collector("memory://", on_full="block")
    with pytest.raises(mc.ValidationError, match="never blocks"):
        MemoryHandler(c)


def test_the_structlog_processor_collects_events_and_passes_them_on(make_collector: Make) -> None:
    structlog = pytest.importorskip("structlog")
    c = make_collector("memory://")
    processor = MemoryProcessor(c, project="shop")
    seen: list[dict[str, object]] = []

    def keep(logger: object, method: str, event: dict[str, object]) -> str:
        seen.append(dict(event))
        return ""

    log = structlog.wrap_logger(
        structlog.PrintLogger(io.StringIO()),
        processors=[structlog.processors.add_log_level, processor, keep],
    )
    log.info("below the level")
    log.warning("disk almost full", free_mb=12, mount="/var")
    log.error("upload failed", user="u-1")
    warning, error = stored(c)
    assert warning.content == "disk almost full" and warning.metadata["free_mb"] == 12
    assert (warning.category, error.category, error.priority) == ("operation", "error", "high")
    assert warning.project == "shop" and processor.dropped == 0
    assert [e["event"] for e in seen] == ["below the level", "disk almost full", "upload failed"]
