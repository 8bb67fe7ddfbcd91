"""Config, its profiles, and loading: profile → memcollect.toml → MEMCOLLECT_* env → kwargs."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from .errors import ConfigError

__all__ = ["FRAMEWORK_LINGER_CAP", "PROFILES", "Config", "from_framework_config", "load_config"]

Durability = Literal["memory", "spool", "fsync"]
OnFull = Literal["drop_lowest", "block", "raise"]
Storer = Literal["auto", "thread", "process"]
_CHOICES: dict[str, tuple[str, ...]] = {
    "durability": ("memory", "spool", "fsync"),
    "on_full": ("drop_lowest", "block", "raise"),
    "storer": ("auto", "thread", "process"),
}


class Config(msgspec.Struct, kw_only=True):
    """Everything a MemoryCollector can be tuned by; invalid values fail with the field named."""

    backend: str = ""
    """Where memories are stored: a store URL (`sqlite:///`, `postgresql://`, `http://`,
    `memory://`, `mem0://`); empty means `sqlite:///<data_dir>/memories.db`."""
    profile: str = "default"
    """Named defaults to start from: default, development, production, high_performance,
    low_resource."""
    durability: Durability = "spool"
    """What collect() writes before it returns: RAM only (memory), RAM and the spool on disk
    (spool: survives kill -9), or the spool with group fsync (fsync: survives power loss)."""
    data_dir: str = "./.memcollect"
    """The directory of the spool and of the default SQLite store."""
    batch_size: int = 256
    """Most memories written to the store in one batch."""
    batch_timeout: float = 0.05
    """Seconds a batch's first memory waits for more before the batch is written."""
    max_queue_size: int = 50_000
    """Memories held in RAM; with the spool, more wait on disk."""
    on_full: OnFull = "drop_lowest"
    """What happens at the bound: drop the oldest of the lowest priority, block, or raise."""
    block_timeout: float = 1.0
    """Seconds `on_full="block"` waits for room before it drops the memory."""
    max_retries: int = 5
    """Failed writes in a row after which the circuit opens."""
    retry_base: float = 0.05
    """Seconds of the first retry's backoff (exponential, full jitter)."""
    retry_max: float = 10.0  # _DEFAULT_RETRY_MAX
    """Longest backoff in seconds, and how often an open circuit probes the store."""
    fsync_interval: float = 0.02
    """Seconds between the spool's group fsyncs in fsync mode."""
    max_spool_bytes: int = 1 << 30
    """Bytes the spool may hold on disk before `on_full` applies."""
    fallback: str | None = None
    """A second store URL that takes the writes while the primary is down."""
    cache_size: int = 1024
    """Entries of the read cache for get() and search(); 0 turns it off."""
    cache_ttl: float = 60.0
    """Seconds a cached read is kept."""
    cache_bytes: int = 32 << 20
    """Bytes the read cache may hold."""
    max_content_bytes: int = 64 * 1024
    """Largest content, in UTF-8 bytes."""
    exit_timeout: float = 5.0
    """Seconds the at-exit flush may take."""
    # Writes failing for this long open the circuit, as max_retries failures in a row do:
    # health then says failing, and a fallback takes the writes.
    circuit_open_after: float = 5.0
    """Seconds of failing writes after which the circuit opens."""
    # Where memories are stored from: a thread of this process, or a process of their own
    # that reads them from the spool (collecting and storing then use a core each). "auto"
    # stores from a thread and hands a sustained load to a process, where that can be done
    # (collector.storer_for says when).
    storer: Storer = "auto"
    """Where memories are stored from: a thread, a storing process fed by the spool, or auto
    (a thread, then a process once the load is sustained, given two cores)."""
    # Spans for memory operations (create, search, delete) after OpenTelemetry's GenAI
    # conventions, emitted per batch, never from collect(); needs opentelemetry-api.
    otel: bool = False
    """Emit OpenTelemetry spans for memory operations (needs the otel extra)."""

    def __post_init__(self) -> None:
        for name, (kind, low) in _LIMITS.items():
            value = getattr(self, name)
            if kind is int and (type(value) is not int):
                raise ConfigError(f"{name} must be a whole number, not {value!r}")
            if kind is float:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
                if not math.isfinite(value):
                    raise ConfigError(f"{name} must be finite, not {value!r}")
                setattr(self, name, float(value))
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be at least {low}, not {value!r}")
        for name, choices in _CHOICES.items():
            _check_choice(name, getattr(self, name), choices)
        _check_choice("profile", self.profile, tuple(PROFILES))
        if self.storer == "process" and self.durability == "memory":
            raise ConfigError(
                "storer='process' needs durability='spool' or 'fsync': the spool is how "
                "memories reach the storing process"
            )
        for name in ("backend", "data_dir"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a str, not {getattr(self, name)!r}")
        if self.fallback is not None and not isinstance(self.fallback, str):
            raise ConfigError(f"fallback must be a backend URL or None, not {self.fallback!r}")
        if self.retry_max < self.retry_base:
            raise ConfigError(
                f"retry_max ({self.retry_max}) must be at least retry_base ({self.retry_base})"
            )

    @property
    def backend_url(self) -> str:
        """The backend URL, defaulting to a SQLite file in data_dir."""
        if self.backend in ("mem0://", "mem0:"):
            return f"mem0:///{Path(self.data_dir) / 'mem0'}"
        if self.backend:
            return self.backend
        return f"sqlite:///{Path(self.data_dir) / 'memories.db'}"

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed, validated."""
        return msgspec.structs.replace(self, **changes)


_LIMITS: dict[str, tuple[type, float]] = {
    "batch_size": (int, 1),
    "batch_timeout": (float, 0.0),
    "max_queue_size": (int, 1),
    "block_timeout": (float, 0.0),
    "max_retries": (int, 0),
    "retry_base": (float, 0.0),
    "retry_max": (float, 0.0),
    "fsync_interval": (float, 0.0),
    "max_spool_bytes": (int, 1 << 20),
    "cache_size": (int, 0),
    "cache_ttl": (float, 0.0),
    "cache_bytes": (int, 0),
    "max_content_bytes": (int, 1),
    "exit_timeout": (float, 0.0),
    "circuit_open_after": (float, 0.0),
}

FIELDS: tuple[str, ...] = Config.__struct_fields__
_DEFAULT_RETRY_MAX = 10.0

PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "development": {
        "batch_size": 64,
        "batch_timeout": 0.02,
        "max_queue_size": 10_000,
        "max_retries": 3,
        "retry_max": 2.0,
    },
    "production": {
        "batch_size": 512,
        "batch_timeout": 0.1,
        "max_queue_size": 100_000,
        "max_retries": 8,
        "retry_max": 30.0,
        "cache_size": 4096,
    },
    "high_performance": {
        "batch_size": 2048,
        "batch_timeout": 0.2,
        "max_queue_size": 500_000,
        "max_retries": 8,
        "retry_max": 30.0,
        "cache_size": 16_384,
    },
    "low_resource": {
        "batch_size": 100,
        "batch_timeout": 0.25,
        "max_queue_size": 2_000,
        "cache_size": 128,
        "max_spool_bytes": 64 << 20,
    },
}


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


# Keys that only the framework design's config dicts have.
FRAMEWORK_KEYS = frozenset(
    {"retry_delay", "operation_timeout", "max_concurrent_ops", "health_check_interval", "cache"}
)
# The framework's batch_timeout (30-60 s) was how long a partial batch could wait. Here the
# worker lingers only from the first memory of a batch, and beyond a few hundred milliseconds
# a longer linger saves no write: it only delays recall. So it is capped.
FRAMEWORK_LINGER_CAP = 0.25


def from_framework_config(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Config fields for a framework-style dict (batch_size, retry_delay, cache: {...}, ...).

    batch_size, max_queue_size and max_retries map as they are; batch_timeout becomes the
    linger, capped at FRAMEWORK_LINGER_CAP; retry_delay becomes retry_base; operation_timeout
    bounds close() at exit (exit_timeout); cache.enabled/max_size/ttl_seconds become
    cache_size/cache_ttl. max_concurrent_ops and health_check_interval have no engine
    counterpart (one writer thread; health is computed on demand) and are accepted as is.
    Config fields (backend, data_dir, durability, ...) pass through.
    """
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key in ("max_concurrent_ops", "health_check_interval"):
            continue
        if key == "batch_timeout":
            out["batch_timeout"] = min(_number(value, key), FRAMEWORK_LINGER_CAP)
        elif key == "retry_delay":
            out["retry_base"] = _number(value, key)
        elif key == "operation_timeout":
            out["exit_timeout"] = _number(value, key)
        elif key == "cache":
            if not isinstance(value, Mapping):
                raise ConfigError(f"cache must be a dict like {{'enabled': True}}, not {value!r}")
            unknown = set(value) - {"enabled", "max_size", "ttl_seconds"}
            if unknown:
                raise ConfigError(
                    f"unknown cache setting {sorted(unknown)[0]!r}: use enabled, max_size, "
                    "ttl_seconds"
                )
            if not value.get("enabled", True):
                out["cache_size"] = 0
            elif "max_size" in value:
                out["cache_size"] = value["max_size"]
            if "ttl_seconds" in value:
                out["cache_ttl"] = value["ttl_seconds"]
        elif key in FIELDS:
            out[key] = value
        else:
            raise ConfigError(
                f"unknown config field {key!r}: use the framework's keys or memcollect's fields"
            )
    if "retry_base" in out and isinstance(out["retry_base"], (int, float)):
        out.setdefault("retry_max", max(_DEFAULT_RETRY_MAX, float(out["retry_base"])))
    return out


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number of seconds, not {value!r}")
    return float(value)


def _file_settings(start: Path) -> tuple[dict[str, Any], str]:
    explicit = os.environ.get("MEMCOLLECT_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"MEMCOLLECT_CONFIG names {explicit!r}, which is not a file")
        return _read_toml(path, path.name != "pyproject.toml"), str(path)
    for name, whole in (("memcollect.toml", True), ("pyproject.toml", False)):
        path = start / name
        if path.is_file():
            settings = _read_toml(path, whole)
            if settings or whole:
                return settings, str(path)
    return {}, ""


def _read_toml(path: Path, whole: bool) -> dict[str, Any]:
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        raise ConfigError(f"{path} could not be read as TOML: {exc}") from None
    section = data if whole else data.get("tool", {}).get("memcollect", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [tool.memcollect] must be a table")
    return section


def _env_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = environ.get(f"MEMCOLLECT_{name.upper()}")
        if value is not None:
            out[name] = None if (name == "fallback" and value == "") else value
    return out


def _field_hint(key: str) -> str:
    """What to write instead of an unknown field."""
    if key == "tool":
        return (
            ": memcollect.toml holds the fields at its top level "
            "([tool.memcollect] is for pyproject.toml)"
        )
    import difflib  # only on this error path

    close = difflib.get_close_matches(key, FIELDS, n=1)
    return f": did you mean {close[0]!r}?" if close else f": the fields are {', '.join(FIELDS)}"


def load_config(
    base: Config | Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> Config:
    """Build a Config: profile defaults, then the config file, then MEMCOLLECT_* env, then kwargs.

    A Config passed as `base` is taken as it is, with only `overrides` applied on top.
    """
    unknown = set(overrides) - set(FIELDS)
    if unknown:
        first = sorted(unknown)[0]
        raise ConfigError(f"unknown config field {first!r}{_field_hint(first)}")
    if isinstance(base, Config):
        return _build(msgspec.structs.asdict(base) | overrides, "arguments")
    if base is not None and FRAMEWORK_KEYS & set(base):
        base = from_framework_config(base)
    env = os.environ if environ is None else environ
    file_settings, file_name = _file_settings(Path(cwd) if cwd else Path.cwd())
    env_settings = _env_settings(env)
    layers: list[tuple[dict[str, Any], str]] = [
        (file_settings, file_name or "config file"),
        (env_settings, "MEMCOLLECT_* environment"),
        (dict(base or {}), "config mapping"),
        (overrides, "arguments"),
    ]
    profile = "default"
    for layer, _ in layers:
        profile = layer.get("profile", profile)
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
    merged: dict[str, Any] = dict(PROFILES[profile], profile=profile)
    origin: dict[str, str] = {}
    for layer, source in layers:
        for key in layer:
            if key not in FIELDS:
                raise ConfigError(f"unknown config field {key!r} in {source}{_field_hint(key)}")
            origin[key] = f"MEMCOLLECT_{key.upper()}" if layer is env_settings else source
        merged.update(layer)
    return _build(merged, "configuration", origin)


_EXPECTED = {"int": "a whole number", "float": "a number", "str": "a string"}


def _build(values: dict[str, Any], source: str, origin: Mapping[str, str] | None = None) -> Config:
    try:
        return msgspec.convert(values, Config, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if " - at `$." in message:
            what, field = message.rsplit(" - at `$.", 1)
            field = field.rstrip("`")
            if what.startswith("Expected `"):
                expected = what.split("`")[1]
                what = f"must be {_EXPECTED.get(expected, expected)}"
            elif what.startswith("Invalid enum value") and field in _CHOICES:
                what = f"must be one of {', '.join(_CHOICES[field])}"
            where = (origin or {}).get(field)
            if where:
                # Name where the bad value came from: that is what the user must fix.
                raise ConfigError(
                    f"invalid {field} from {where}: {what}, not {values.get(field)!r}"
                ) from None
            message = f"{field}: {what}"
        raise ConfigError(f"invalid {source}: {message}") from None
