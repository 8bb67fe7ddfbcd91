"""Configuration in the framework's shape: its profiles, and checking a config of that shape."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from ..config import from_framework_config, load_config
from ..errors import ConfigError

__all__ = ["config_errors", "get_config", "validate_config"]

log = logging.getLogger("memcollect.service")


# --- configuration in the framework's shape ----------------------------------------------

_FRAMEWORK_PROFILES: dict[str, dict[str, Any]] = {
    "default": {
        "batch_size": 10, "batch_timeout": 30.0, "max_queue_size": 1000, "max_retries": 3,
        "retry_delay": 1.0, "operation_timeout": 15.0, "max_concurrent_ops": 20,
        "health_check_interval": 60,
        "cache": {"enabled": True, "max_size": 1000, "ttl_seconds": 300},
    },
    "development": {
        "batch_size": 5, "batch_timeout": 10.0, "max_queue_size": 500, "max_retries": 2,
        "retry_delay": 0.5, "operation_timeout": 10.0, "max_concurrent_ops": 10,
        "health_check_interval": 30,
        "cache": {"enabled": True, "max_size": 500, "ttl_seconds": 120},
    },
    "production": {
        "batch_size": 50, "batch_timeout": 30.0, "max_queue_size": 10_000, "max_retries": 5,
        "retry_delay": 2.0, "operation_timeout": 30.0, "max_concurrent_ops": 50,
        "health_check_interval": 60,
        "cache": {"enabled": True, "max_size": 5000, "ttl_seconds": 600},
    },
    "high_performance": {
        "batch_size": 100, "batch_timeout": 5.0, "max_queue_size": 50_000, "max_retries": 3,
        "retry_delay": 0.5, "operation_timeout": 10.0, "max_concurrent_ops": 100,
        "health_check_interval": 30,
        "cache": {"enabled": True, "max_size": 10_000, "ttl_seconds": 300},
    },
    "low_resource": {
        "batch_size": 5, "batch_timeout": 60.0, "max_queue_size": 200, "max_retries": 2,
        "retry_delay": 2.0, "operation_timeout": 20.0, "max_concurrent_ops": 5,
        "health_check_interval": 120,
        "cache": {"enabled": True, "max_size": 100, "ttl_seconds": 60},
    },
}  # fmt: skip


def get_config(environment: str = "default") -> dict[str, Any]:
    """A framework config profile as a fresh dict (changing it changes no other)."""
    try:
        return copy.deepcopy(_FRAMEWORK_PROFILES[environment])
    except KeyError:
        raise ConfigError(
            f"unknown environment {environment!r}: use {', '.join(_FRAMEWORK_PROFILES)}"
        ) from None


_POSITIVE = ("batch_size", "max_queue_size", "max_concurrent_ops")
_NON_NEGATIVE = ("max_retries",)
_SECONDS = ("batch_timeout", "retry_delay", "operation_timeout", "health_check_interval")


def config_errors(config: object) -> list[str]:
    """Every problem with a framework config, one sentence each (empty when valid)."""
    if not isinstance(config, Mapping):
        return [f"config must be a dict, not {type(config).__name__}"]
    errors = []
    for key in _POSITIVE + _NON_NEGATIVE:
        if key in config:
            value = config[key]
            low = 1 if key in _POSITIVE else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                errors.append(f"{key} must be a whole number of at least {low}, not {value!r}")
    for key in _SECONDS:
        if key in config:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                errors.append(f"{key} must be a number of seconds, not {value!r}")
    cache = config.get("cache", {})
    if not isinstance(cache, Mapping):
        errors.append(f"cache must be a dict, not {cache!r}")
    else:
        if "enabled" in cache and not isinstance(cache["enabled"], bool):
            errors.append(f"cache.enabled must be True or False, not {cache['enabled']!r}")
        for key in ("max_size", "ttl_seconds"):
            value = cache.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                errors.append(f"cache.{key} must be a non-negative number, not {value!r}")
    if not errors:
        try:
            load_config(from_framework_config(config), environ={})
        except ConfigError as exc:
            errors.append(str(exc))
    return errors


def validate_config(config: object) -> bool:
    """Whether a framework config is valid (config_errors() says what is wrong)."""
    errors = config_errors(config)
    for error in errors:
        log.warning("invalid memory collector config: %s", error)
    return not errors
