"""The service layer of the framework design memcollect grew out of, on the real engine.

Code written against that design runs with only its imports changed. What differs is
listed in the docs (docs/migrating.md).
"""

from .collecting import (
    AsyncMemoryCollector,
    MemoryServiceIntegration,
    get_memory_integration,
    quick_collect_bug,
    quick_collect_error,
    quick_collect_feedback,
    set_memory_integration,
)
from .profiles import config_errors, get_config, validate_config
from .services import BaseService, ServiceManager
from .types import CollectionStats, MemoryCategory, MemoryOperation, MemoryPriority, ServiceHealth

__all__ = [
    "AsyncMemoryCollector",
    "BaseService",
    "CollectionStats",
    "MemoryCategory",
    "MemoryOperation",
    "MemoryPriority",
    "MemoryServiceIntegration",
    "ServiceHealth",
    "ServiceManager",
    "config_errors",
    "get_config",
    "get_memory_integration",
    "quick_collect_bug",
    "quick_collect_error",
    "quick_collect_feedback",
    "set_memory_integration",
    "validate_config",
]
