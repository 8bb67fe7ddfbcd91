"""Log records as memories: a logging.Handler and a structlog processor over a collector.

Both never block and never raise into the application: a record that cannot be collected is
counted in `dropped` and left out. memcollect's own log records are never collected (they
would feed back into the queue that logs them).
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Mapping
from typing import Any

from ..collector import MemoryCollector
from ..errors import ValidationError

__all__ = ["LEVELS", "MemoryHandler", "MemoryProcessor"]

#: A level's category and priority: errors are errors, warnings operations, the rest notes.
LEVELS: dict[int, tuple[str, str]] = {
    logging.CRITICAL: ("error", "critical"),
    logging.ERROR: ("error", "high"),
    logging.WARNING: ("operation", "medium"),
    logging.INFO: ("note", "low"),
    logging.DEBUG: ("note", "low"),
}

# What every LogRecord has: anything else on a record came in through `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# Metadata values collect() takes as they are; anything else is kept as its repr().
_PLAIN = (str, int, float, bool, type(None))

_inside = threading.local()


def _own(name: str) -> bool:
    return name == "memcollect" or name.startswith("memcollect.")


def _level_of(levelno: int) -> tuple[str, str]:
    known = LEVELS.get(levelno)
    if known is not None:
        return known
    for threshold in sorted(LEVELS, reverse=True):
        if levelno >= threshold:
            return LEVELS[threshold]
    return LEVELS[logging.DEBUG]


def _plain(value: Any, depth: int = 0) -> Any:
    """A value collect() accepts as metadata: JSON-like as it is, anything else as repr()."""
    if isinstance(value, _PLAIN):
        return value if not isinstance(value, int) or -(1 << 63) <= value < 1 << 63 else repr(value)
    if depth < 8 and isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if depth < 8 and isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return repr(value)


class MemoryHandler(logging.Handler):
    """Turns log records into memories: the level gives the category and priority, the
    message the content, `extra` and where it was logged the metadata (with the traceback of
    `exc_info`), and the logger's name a tag. At WARNING and above by default."""

    __slots__ = ("agent", "collector", "dropped", "levels", "project")

    def __init__(
        self,
        collector: MemoryCollector,
        level: int | str = logging.WARNING,
        *,
        project: str | None = None,
        agent: str | None = None,
        levels: Mapping[int, tuple[str, str]] | None = None,
    ) -> None:
        if collector.config.on_full == "block":
            raise ValidationError(
                "MemoryHandler never blocks the code that logs, and this collector's "
                "on_full='block' would: give the handler one with on_full='drop_lowest'"
            )
        super().__init__(level)
        self.collector = collector
        self.project = project
        self.agent = agent
        self.levels = dict(levels) if levels is not None else None
        #: Records left out: they could not be collected (the collector said why, once).
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Collect the record; never blocks, never raises."""
        if _own(record.name) or getattr(_inside, "active", False):
            return
        _inside.active = True
        try:
            self._collect(record)
        except Exception:  # noqa: BLE001 - a handler must never raise into the application
            self.dropped += 1
        finally:
            _inside.active = False

    def _collect(self, record: logging.LogRecord) -> None:
        if self.levels is not None and record.levelno in self.levels:
            category, priority = self.levels[record.levelno]
        else:
            category, priority = _level_of(record.levelno)
        # Kept small: each key is checked on the caller's thread (the logger's name is the
        # tag, the level the category and priority).
        metadata: dict[str, Any] = {
            "level": record.levelname,
            "where": f"{record.pathname}:{record.lineno} in {record.funcName}",
        }
        fields = record.__dict__
        for key in fields.keys() - _STANDARD:  # what came in through `extra`
            if not key.startswith("_"):
                metadata[key] = _plain(fields[key])
        if record.exc_info and record.exc_info[0] is not None:
            metadata["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        elif record.exc_text:
            metadata["traceback"] = record.exc_text
        if record.stack_info:
            metadata["stack"] = record.stack_info
        message = record.getMessage() or f"(an empty {record.levelname} message)"
        self.collector.collect(
            category,
            message,
            metadata,
            priority=priority,
            tags=[record.name[:128]] if record.name else None,
            project=self.project,
            agent=self.agent,
        )


class MemoryProcessor:
    """A structlog processor that collects each event at `level` or above as a memory (the
    event its content, the other keys its metadata) and passes the event on unchanged."""

    def __init__(
        self,
        collector: MemoryCollector,
        level: str = "warning",
        *,
        project: str | None = None,
        agent: str | None = None,
    ) -> None:
        self.collector = collector
        self.threshold = logging.getLevelNamesMapping()[level.upper()]
        self.project = project
        self.agent = agent
        #: Events left out: they could not be collected.
        self.dropped = 0

    def __call__(self, logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        """Collect the event if it is at the level or above; return it as it came."""
        levelname = str(event_dict.get("level", method_name)).upper()
        levelno = logging.getLevelNamesMapping().get(levelname, logging.INFO)
        name = str(event_dict.get("logger", "") or "")
        if levelno < self.threshold or _own(name) or getattr(_inside, "active", False):
            return event_dict
        _inside.active = True
        try:
            category, priority = _level_of(levelno)
            metadata = {
                str(k): _plain(v) for k, v in event_dict.items() if k not in ("event", "exc_info")
            }
            if event_dict.get("exc_info"):
                metadata["traceback"] = traceback.format_exc()
            self.collector.collect(
                category,
                str(event_dict.get("event", "")) or f"(an empty {levelname} event)",
                metadata,
                priority=priority,
                tags=[name[:128]] if name else None,
                project=self.project,
                agent=self.agent,
            )
        except Exception:  # noqa: BLE001 - a processor must never raise into the application
            self.dropped += 1
        finally:
            _inside.active = False
        return event_dict
