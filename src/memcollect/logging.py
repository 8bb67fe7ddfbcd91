"""Log records as memories: `MemoryHandler` for logging, `MemoryProcessor` for structlog."""

from .integrations.logging import LEVELS, MemoryHandler, MemoryProcessor

__all__ = ["LEVELS", "MemoryHandler", "MemoryProcessor"]
