"""The checks and limits every memory passes: at collect(), at the server, at an import."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ValidationError
from .model import BUILTIN_CATEGORIES, DEFAULT_PRIORITY, PRIORITY_RANK, Memory, _id_at

__all__ = [
    "CATEGORY_PATTERN",
    "MAX_LABEL",
    "MAX_TAG",
    "check_category",
    "check_content",
    "check_labels",
    "check_memories",
    "check_memory",
    "check_metadata",
    "check_priority",
    "check_tags",
    "make_memory",
    "memory_from_dict",
    "memory_from_record",
]

#: What a category is (the server states it for its clients too).
CATEGORY_PATTERN = "^[a-z][a-z0-9_-]{0,63}$"
_CATEGORY_RE = re.compile(CATEGORY_PATTERN[1:-1] + r"\Z")
# Categories already checked once; bounded so that a stream of unique slugs cannot grow it.
_valid_categories: set[str] = set(BUILTIN_CATEGORIES)
_MAX_CACHED_CATEGORIES = 4096
_MAX_DEPTH = 32
# Integers in metadata fit 64 signed bits: the spool's msgpack and every store's integers
# (SQLite's, PostgreSQL's bigint) hold them exactly.
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
MAX_LABEL = 256
MAX_TAG = 128
_SURROGATE = (
    "holds a lone surrogate that UTF-8 cannot encode: decode the text with errors='replace' first"
)


# Labels, tags and metadata keys that passed once: calls reuse a few of each, and a set
# lookup costs less than checking them again. Bounded like _valid_categories.
_known_labels: set[str] = set()
_known_tags: set[str] = set()
_known_keys: set[str] = set()
_MAX_KNOWN = 4096


def _remember(known: set[str], value: str) -> None:
    if len(known) < _MAX_KNOWN:
        known.add(value)


def _utf8(text: str) -> bool:
    """Whether a str that is not ASCII encodes to UTF-8 (a lone surrogate does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_category(category: object) -> str:
    """Return the category as a plain str, or raise ValidationError."""
    if type(category) is str and category in _valid_categories:
        return category
    if not isinstance(category, str):
        raise ValidationError(f"category must be a str like 'bug', not {type(category).__name__}")
    category = str.__str__(category)
    if not _CATEGORY_RE.match(category):
        raise ValidationError(
            f"category {category!r} is not a lowercase slug: use letters, digits, '_' or '-', "
            "starting with a letter, at most 64 characters (e.g. 'bug', 'user_feedback')"
        )
    if len(_valid_categories) < _MAX_CACHED_CATEGORIES:
        _valid_categories.add(category)
    return category


def check_priority(priority: object, category: str) -> str:
    """Return the priority as a plain str (defaulted by category), or raise ValidationError."""
    if priority is None:
        return DEFAULT_PRIORITY.get(category, "medium")
    if type(priority) is str and priority in PRIORITY_RANK:
        return priority
    if isinstance(priority, str) and str.__str__(priority) in PRIORITY_RANK:
        return str.__str__(priority)
    raise ValidationError(
        f"priority {priority!r} is unknown: use one of 'low', 'medium', 'high', 'critical'"
    )


def check_content(content: object, max_bytes: int) -> str:
    """Return the content as a plain str, or raise ValidationError."""
    if type(content) is not str:
        if not isinstance(content, str):
            raise ValidationError(f"content must be a str, not {type(content).__name__}")
        content = str.__str__(content)
    if not content:
        raise ValidationError("content is empty: pass the text of the memory")
    n = len(content)
    # A str of n characters encodes to between n and 4n bytes: only encode when it matters.
    if n * 4 > max_bytes or not content.isascii():
        if n > max_bytes:
            size = n
        else:
            try:
                size = len(content.encode("utf-8"))
            except UnicodeEncodeError:
                raise ValidationError(f"content {_SURROGATE}") from None
        if size > max_bytes:
            raise ValidationError(
                f"content is {size} bytes, over max_content_bytes={max_bytes}: "
                "shorten it or raise max_content_bytes"
            )
    if "\x00" in content:
        raise ValidationError("content contains a NUL character (\\x00): remove it")
    return content


def _check_label(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a str or None, not {type(value).__name__}")
    value = str.__str__(value)
    if not value or len(value) > MAX_LABEL or "\x00" in value:
        raise ValidationError(
            f"{field} {value[:40]!r} must be a non-empty str of at most {MAX_LABEL} "
            "characters without NUL"
        )
    if not (value.isascii() or _utf8(value)):
        raise ValidationError(f"{field} {_SURROGATE}")
    _remember(_known_labels, value)
    return value


def check_labels(
    project: object, agent: object, session: object
) -> tuple[str | None, str | None, str | None]:
    """Validate project, agent and session."""
    known = _known_labels
    return (
        project
        if project is None or (type(project) is str and project in known)
        else _check_label(project, "project"),
        agent
        if agent is None or (type(agent) is str and agent in known)
        else _check_label(agent, "agent"),
        session
        if session is None or (type(session) is str and session in known)
        else _check_label(session, "session"),
    )


def check_tags(tags: object) -> tuple[str, ...]:
    """Return the tags as a tuple of unique str, or raise ValidationError."""
    if not tags and (tags is None or isinstance(tags, (list, tuple, set, frozenset))):
        return ()
    if isinstance(tags, (str, bytes, Mapping)) or not isinstance(tags, Iterable):
        raise ValidationError(
            f"tags must be a list of str like ['auth'], not {type(tags).__name__}"
        )
    out: list[str] = []
    for i, tag in enumerate(tags):
        if not isinstance(tag, str):
            raise ValidationError(f"tags[{i}] must be a str, not {type(tag).__name__}")
        if not tag or len(tag) > MAX_TAG or "\x00" in tag:
            raise ValidationError(
                f"tags[{i}] {tag[:40]!r} must be a non-empty str of at most {MAX_TAG} "
                "characters without NUL"
            )
        if not (tag.isascii() or _utf8(tag)):
            raise ValidationError(f"tags[{i}] {_SURROGATE}")
        plain = str.__str__(tag)
        _remember(_known_tags, plain)
        out.append(plain)
    return tuple(dict.fromkeys(out)) if len(out) > 1 else tuple(out)


def check_metadata(metadata: object) -> dict[str, Any]:
    """Return a deep copy of metadata made of JSON types only, or raise ValidationError.

    The copy is what makes collect() safe against a caller mutating its dict afterwards.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValidationError(f"metadata must be a dict, not {type(metadata).__name__}")
    return _copy_mapping(metadata, "metadata", 0)


def _copy_mapping(value: Mapping[Any, Any], path: str, depth: int) -> dict[str, Any]:
    # depth counts the containers around this one: metadata itself is level 1 of 32.
    if depth >= _MAX_DEPTH:
        raise ValidationError(f"{path} is nested deeper than {_MAX_DEPTH} levels (or is cyclic)")
    out: dict[str, Any] = {}
    for raw_key, item in value.items():
        key = raw_key
        if type(key) is not str:
            if not isinstance(key, str):
                raise ValidationError(
                    f"{path} has a key {key!r} of type {type(key).__name__}: JSON keys are str"
                )
            key = str.__str__(key)
        if "\x00" in key:
            raise ValidationError(f"{path} has a key {key!r} with a NUL character: remove it")
        if not (key.isascii() or _utf8(key)):
            raise ValidationError(f"{path} has a key that {_SURROGATE}")
        _remember(_known_keys, key)
        t = type(item)
        if t is str or t is bool or item is None or (t is int and _INT_MIN <= item <= _INT_MAX):
            if t is str and "\x00" in item:
                raise ValidationError(f"{path}[{key!r}] contains a NUL character: remove it")
            if t is str and not (item.isascii() or _utf8(item)):
                raise ValidationError(f"{path}[{key!r}] {_SURROGATE}")
            out[key] = item
        else:
            out[key] = _copy_value(item, f"{path}[{key!r}]", depth + 1)
    return out


def _copy_value(value: Any, path: str, depth: int) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationError(f"{path} contains a NUL character: remove it")
        if not (value.isascii() or _utf8(value)):
            raise ValidationError(f"{path} {_SURROGATE}")
        return str.__str__(value)
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValidationError(
                f"{path} is an integer beyond 64 bits, which stores cannot hold exactly: "
                "store it as a string"
            )
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(
                f"{path} is {value!r}, which JSON cannot hold: store None or a string instead"
            )
        return float(value)
    if isinstance(value, Mapping):
        return _copy_mapping(value, path, depth)
    if isinstance(value, (list, tuple)):
        if depth >= _MAX_DEPTH:
            raise ValidationError(
                f"{path} is nested deeper than {_MAX_DEPTH} levels (or is cyclic)"
            )
        return [_copy_value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    hint = {
        "set": "use a list",
        "frozenset": "use a list",
        "bytes": "decode it to str",
        "bytearray": "decode it to str",
        "datetime": "use .isoformat()",
        "date": "use .isoformat()",
    }.get(type(value).__name__, "convert it to str, a number, bool, None, a list or a dict")
    raise ValidationError(f"{path} is a {type(value).__name__}, which JSON cannot hold: {hint}")


def make_memory(  # noqa: PLR0917 - positional on the hot path: keywords cost time per call
    category: object,
    content: object,
    metadata: object,
    priority: object,
    tags: object,
    project: object,
    agent: object,
    session: object,
    max_content_bytes: int,
) -> Memory:
    """Validate the arguments of collect() and build a Memory with a new id.

    Each check has an exact-type fast path for the common case and falls back to the full
    check (and its error message) otherwise: this function is most of collect()'s cost.
    """
    cat = (
        category
        if (type(category) is str and category in _valid_categories)
        else (check_category(category))
    )
    if not (
        type(content) is str
        and len(content) > 0
        and len(content) * 4 <= max_content_bytes
        and content.isascii()
        and "\x00" not in content
    ):
        content = check_content(content, max_content_bytes)
    if type(metadata) is dict and metadata:
        md = _fast_metadata(metadata)
    else:
        md = check_metadata(metadata) if metadata else _empty_metadata(metadata)
    tag_tuple = _fast_tags(tags) if tags else _empty_tags(tags)
    if priority is None:
        prio = DEFAULT_PRIORITY.get(cat, "medium")
    else:
        prio = (
            priority
            if (type(priority) is str and priority in PRIORITY_RANK)
            else (check_priority(priority, cat))
        )
    if project is None and agent is None and session is None:
        now = time.time()
        return Memory(_id_at(now), cat, content, md, prio, tag_tuple, None, None, None, now)
    labels = check_labels(project, agent, session)
    now = time.time()
    return Memory(_id_at(now), cat, content, md, prio, tag_tuple, *labels, now)


def _fast_metadata(metadata: dict[Any, Any]) -> dict[str, Any]:
    # A flat dict of known str keys and plain scalars is copied as is; anything else is
    # walked. Strings first: they are most values.
    for key, item in metadata.items():
        t = type(item)
        if t is str:
            if "\x00" in item or not (item.isascii() or _utf8(item)):
                return check_metadata(metadata)
        elif not (
            (t is int and _INT_MIN <= item <= _INT_MAX)
            or t is bool
            or item is None
            or (t is float and item - item == 0)  # false for NaN and ±inf
        ):
            return check_metadata(metadata)
        if type(key) is not str or key not in _known_keys:
            return check_metadata(metadata)
    return metadata.copy()


def _fast_tags(tags: Any) -> tuple[str, ...]:
    # A list or tuple of known tags; one tag, the usual case, without building a dict.
    t = type(tags)
    if t is list or t is tuple:
        if len(tags) == 1:
            tag = tags[0]
            if type(tag) is str and tag in _known_tags:
                return (tag,)
        else:
            for tag in tags:
                if type(tag) is not str or tag not in _known_tags:
                    return check_tags(tags)
            return tuple(dict.fromkeys(tags))
    return check_tags(tags)


def _empty_metadata(metadata: object) -> dict[str, Any]:
    if metadata is None or isinstance(metadata, Mapping):
        return {}
    return check_metadata(metadata)


def _empty_tags(tags: object) -> tuple[str, ...]:
    return () if tags is None else check_tags(tags)


def check_fingerprint(value: object) -> str:
    """A caller's own fingerprint: 1 to MAX_TAG characters, no NUL."""
    if type(value) is not str or not 0 < len(value) <= MAX_TAG or "\x00" in value:
        raise ValidationError(
            f"fingerprint must be a str of 1 to {MAX_TAG} characters without NUL, not "
            f"{value!r}: leave it out to have one made from the content"
        )
    return value


def memory_from_dict(item: Mapping[str, Any], max_content_bytes: int) -> Memory:
    """Build a Memory from a dict with the keyword names of collect()."""
    if not isinstance(item, Mapping):
        raise ValidationError(f"each item must be a dict, not {type(item).__name__}")
    unknown = set(item) - _ITEM_KEYS
    if unknown:
        raise ValidationError(
            f"unknown field {sorted(unknown)[0]!r}: use {', '.join(sorted(_ITEM_KEYS))}"
        )
    if "category" not in item or "content" not in item:
        raise ValidationError("each item needs 'category' and 'content'")
    memory = make_memory(
        item["category"],
        item["content"],
        item.get("metadata"),
        item.get("priority"),
        item.get("tags"),
        item.get("project"),
        item.get("agent"),
        item.get("session"),
        max_content_bytes,
    )
    if item.get("fingerprint") not in (None, ""):  # "": a Memory's own, not yet made
        memory.fingerprint = check_fingerprint(item["fingerprint"])
    return memory


_ITEM_KEYS = frozenset(
    {
        "category",
        "content",
        "metadata",
        "priority",
        "tags",
        "project",
        "agent",
        "session",
        "fingerprint",
    }
)
_RECORD_KEYS = _ITEM_KEYS | {"id", "created_at", "content_hash"}
_ID_RE = re.compile(r"[0-9a-hjkmnp-tv-z]{26}\Z")
# Records from another process: created between 2000 and 2100, a guard against seconds given
# in milliseconds (or nonsense) rather than a policy on clocks.
_MIN_CREATED, _MAX_CREATED = 946_684_800.0, 4_102_444_800.0


def memory_from_record(item: Mapping[str, Any], max_content_bytes: int) -> Memory:
    """Build a Memory from a dict that may carry its own `id` and `created_at` (a replay).

    Keeping the sender's id is what makes a resent record idempotent: the store keeps one row.
    """
    if not isinstance(item, Mapping):
        raise ValidationError(f"each memory must be a JSON object, not {type(item).__name__}")
    unknown = set(item) - _RECORD_KEYS
    if unknown:
        raise ValidationError(
            f"unknown field {sorted(unknown)[0]!r}: use {', '.join(sorted(_RECORD_KEYS))}"
        )
    fields = {k: v for k, v in item.items() if k in _ITEM_KEYS}
    memory = memory_from_dict(fields, max_content_bytes)
    memory_id = item.get("id")
    if memory_id is not None:
        if not isinstance(memory_id, str) or not _ID_RE.match(memory_id.lower()):
            raise ValidationError(
                f"id {memory_id!r} is not a memcollect id (26 characters of Crockford base32): "
                "omit it to get a new one"
            )
        memory.id = memory_id.lower()
    created = item.get("created_at")
    if created is not None:
        if (
            type(created) not in (int, float)
            or not math.isfinite(created)
            or not _MIN_CREATED <= created <= _MAX_CREATED
        ):
            raise ValidationError(
                f"created_at {created!r} must be epoch seconds between 2000 and 2100"
            )
        memory.created_at = float(created)
    digest = item.get("content_hash")
    if digest is not None:
        if not isinstance(digest, str) or len(digest) > MAX_TAG:
            raise ValidationError(f"content_hash must be a str of at most {MAX_TAG} characters")
        memory.content_hash = digest  # the sender's worker computed it; "" is filled in here
    return memory


def check_memory(memory: object, max_content_bytes: int) -> Memory:
    """A Memory built elsewhere (a replay, a dead letter), checked as collect() checks its
    arguments, keeping its id and time; raises ValidationError."""
    if not isinstance(memory, Memory):
        raise ValidationError(
            f"a {type(memory).__name__} is not a memcollect Memory: use collect_batch() for dicts"
        )
    record = {field: getattr(memory, field) for field in Memory.__struct_fields__}
    return memory_from_record(record, max_content_bytes)


def check_memories(memories: Iterable[object], max_content_bytes: int) -> list[Memory]:
    """check_memory() for each, all valid or none; an error names the memory's index."""
    checked = []
    for index, memory in enumerate(memories):
        if not isinstance(memory, Memory):
            raise ValidationError(
                f"memory {index} is a {type(memory).__name__}, not a memcollect Memory: "
                "use collect_batch() for dicts"
            )
        try:
            checked.append(check_memory(memory, max_content_bytes))
        except ValidationError as exc:
            raise ValidationError(f"memory {index}: {exc}") from None
    return checked
