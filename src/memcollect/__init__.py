"""memcollect: fire-and-forget memory collection for AI agents, recalled by search."""

from __future__ import annotations

from .backends.base import Backend
from .collector import MemoryCollector
from .config import PROFILES, Config, load_config
from .errors import (
    BackendError,
    ConfigError,
    MemcollectError,
    PermanentBackendError,
    QueueFullError,
    TransientBackendError,
    ValidationError,
)
from .groups import Group, GroupDetail
from .model import Category, DeadLetter, Memory, Priority, id_time, new_id
from .query import Hit, SearchQuery
from .report import Report
from .stats import Health, Latency, Stats

__version__ = "0.1.0"

__all__ = [
    "PROFILES",
    "Backend",
    "BackendError",
    "Category",
    "Config",
    "ConfigError",
    "DeadLetter",
    "Group",
    "GroupDetail",
    "Health",
    "Hit",
    "Latency",
    "MemcollectError",
    "Memory",
    "MemoryCollector",
    "PermanentBackendError",
    "Priority",
    "QueueFullError",
    "Report",
    "SearchQuery",
    "Stats",
    "TransientBackendError",
    "ValidationError",
    "__version__",
    "id_time",
    "load_config",
    "new_id",
]
