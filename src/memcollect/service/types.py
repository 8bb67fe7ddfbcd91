"""The framework design's value types: categories, priorities, operations, stats, health."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..model import Memory

__all__ = [
    "CollectionStats",
    "MemoryCategory",
    "MemoryOperation",
    "MemoryPriority",
    "ServiceHealth",
]

log = logging.getLogger("memcollect.service")


class MemoryCategory(enum.StrEnum):
    """The framework's categories (memcollect accepts any lowercase slug besides)."""

    BUG = "bug"
    FEEDBACK = "feedback"
    ARCHITECTURE = "architecture"
    PERFORMANCE = "performance"
    INTEGRATION = "integration"
    QA = "qa"
    ERROR = "error"
    OPERATION = "operation"


class MemoryPriority(enum.StrEnum):
    """The framework's priorities."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass
class MemoryOperation:
    """A collected memory in the framework's shape."""

    id: str
    category: MemoryCategory | str
    content: str
    metadata: dict[str, Any]
    priority: MemoryPriority
    created_at: datetime
    retry_count: int = 0
    max_retries: int = 3
    next_retry: datetime | None = None

    def __post_init__(self) -> None:
        if self.next_retry is None:
            self.next_retry = self.created_at

    @classmethod
    def from_memory(cls, memory: Memory, max_retries: int = 3) -> MemoryOperation:
        """The framework's view of a memcollect Memory."""
        try:
            category: MemoryCategory | str = MemoryCategory(memory.category)
        except ValueError:
            category = memory.category
        return cls(
            id=memory.id,
            category=category,
            content=memory.content,
            metadata=dict(memory.metadata),
            priority=MemoryPriority(memory.priority),
            created_at=datetime.fromtimestamp(memory.created_at),
            max_retries=max_retries,
        )


@dataclass
class CollectionStats:
    """The framework's statistics, filled from the engine's counters."""

    total_operations: int = 0
    successful_operations: int = 0
    failed_operations: int = 0
    retried_operations: int = 0
    average_latency: float = 0.0
    queue_size: int = 0
    batch_operations: int = 0
    cache_hits: int = 0
    cache_misses: int = 0

    def success_rate(self) -> float:
        """Stored as a percentage of all finished operations (100.0 before any)."""
        finished = self.successful_operations + self.failed_operations
        if finished == 0:
            return 100.0
        return self.successful_operations / finished * 100.0


@dataclass
class ServiceHealth:
    """What health_check() reports about one service."""

    name: str
    status: str  # "healthy", "degraded", "unhealthy" or "stopped"
    checks: dict[str, bool] = field(default_factory=dict)
    message: str = ""
    uptime_seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        """True when status is "healthy"."""
        return self.status == "healthy"
