"""The Backend protocol every store implements, and the search query it answers."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

import msgspec

from ..errors import PermanentBackendError, TransientBackendError
from ..model import DeadLetter, Memory
from ..query import Hit, SearchQuery
from ..retry import ErrorKind

if TYPE_CHECKING:
    from ..groups import Group, GroupDetail, GroupQuery
    from ..report import Summary

__all__ = [
    "STOPWORDS",
    "Backend",
    "DeadLetter",
    "SearchQuery",
    "content_terms",
    "delete_page_order",
    "every_word_first",
    "plain_terms",
    "without_password",
]


def without_password(url: str) -> str:
    """The URL with any password in it replaced by ***, fit to show."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    credentials, at, host = authority.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"


_WORD = re.compile(r"\w+", re.UNICODE)


def delete_page_order(query: SearchQuery) -> str:
    """SQL order of a delete's pages: oldest first, newest first for `since` alone. A delete
    by time then finds its rows at the start of each page, not after every memory kept."""
    return "DESC" if query.since is not None and query.until is None else "ASC"


def plain_terms(text: str) -> list[str]:
    """The words of a plain-text query, lowercased."""
    return [w.lower() for w in _WORD.findall(text)]


# Words so common that matching them ranks nothing and scans everything.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "has",
        "have",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "will",
        "with",
        "we",
        "you",
    ]
)


def content_terms(text: str) -> list[str]:
    """The words of a query that carry meaning: its plain terms without STOPWORDS, unless
    it has nothing else."""
    terms = plain_terms(text)
    return [t for t in terms if t not in STOPWORDS] or terms


def every_word_first(
    run: Callable[[str, int], list[Memory]], every: str, some: str, limit: int
) -> list[Memory]:
    """Ranked hits of the query `every` (all words), then of `some` (any word) to fill `limit`.

    A memory holding every word of a query is what its author was looking for, and there are
    few of them even when each word is common: ranking those alone spares scoring the tens of
    thousands of memories that share one common word, unless too few hold them all.
    """
    found = run(every, limit)
    if len(found) >= limit or every == some:
        return found
    seen = {m.id for m in found}
    more = [m for m in run(some, limit + len(found)) if m.id not in seen]
    return found + more[: limit - len(found)]


def best_of(scored: Iterable[tuple[float, Memory]], limit: int) -> list[Memory]:
    """The `limit` best memories of rankings run with the same score function (higher is
    better): a memory found by several counts at its best score; ties keep their order."""
    best: dict[str, tuple[float, Memory]] = {}
    for score, memory in scored:
        if memory.id not in best or score > best[memory.id][0]:
            best[memory.id] = (score, memory)
    return [m for _, m in sorted(best.values(), key=lambda hit: -hit[0])[:limit]]


class Backend(ABC):
    """A store for memories. write_batch must be idempotent: the same id twice is one row.

    Errors: raise TransientBackendError for what may pass (or let a driver error through and
    classify it in `classify`), PermanentBackendError for a record that can never be stored.
    Reads are called from any thread; writes only from the collector's worker.
    """

    name: ClassVar[str] = "backend"
    #: Full-text search ranks by relevance (not only filters).
    supports_ranking: ClassVar[bool] = True
    #: Data outlives the process.
    persistent: ClassVar[bool] = True
    #: search() takes mode="semantic" and "hybrid".
    supports_semantic: bool = False
    #: A write mostly waits for a server: a storing process reads and prepares the next
    #: memories meanwhile.
    waits_on_server: ClassVar[bool] = False

    def __init__(self, url: str) -> None:
        #: The store's URL as stats, health, logs and errors show it: without a password.
        self.url = without_password(url)

    def default_mode(self) -> str:
        """The search mode when the caller names none: hybrid with embeddings, else text."""
        return "hybrid" if self.supports_semantic else "text"

    def open(self) -> None:  # noqa: B027 - most backends connect lazily
        """Connect and create or migrate the schema; called once before use."""

    @abstractmethod
    def write_batch(self, batch: Sequence[Memory]) -> None:
        """Store memories; ids already stored are skipped."""

    @abstractmethod
    def get(self, memory_id: str) -> Memory | None:
        """One memory by id."""

    def get_many(self, ids: Sequence[str]) -> list[Memory]:
        """The memories with these ids, in the order asked; ids not stored are left out."""
        return [m for m in map(self.get, ids) if m is not None]

    @abstractmethod
    def recent(self, limit: int, category: str | None = None) -> list[Memory]:
        """The newest memories first."""

    @abstractmethod
    def count(self, category: str | None = None) -> int:
        """How many memories are stored."""

    @abstractmethod
    def count_by_category(self) -> dict[str, int]:
        """How many memories are stored, per category."""

    @abstractmethod
    def search(self, query: SearchQuery) -> list[Memory]:
        """Memories matching the text and filters, best first."""

    def search_hits(self, query: SearchQuery) -> list[Hit]:
        """search(), each result with its score and how it was found (by its words, unless
        the store says more)."""
        from .scoring import text_hits

        return text_hits(query, self.search(query))

    @abstractmethod
    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep memories that could not be stored, with their errors."""

    @abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""

    @abstractmethod
    def remove_dead_letters(self, ids: Sequence[str]) -> None:
        """Forget dead letters (after they were queued again)."""

    def scan(self, after: str | None, limit: int) -> list[Memory]:
        """Stored memories in id (time) order, from just after the id `after` (for export)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list every memory")

    def groups(self, query: GroupQuery) -> list[Group]:
        """Groups of memories sharing a fingerprint, by the query's order; computed from
        every stored memory unless the store keeps them."""
        from ..groups import groups_of

        return groups_of(self._every_memory(), query)

    def group(
        self, fingerprint: str, limit: int = 20, before: str | None = None
    ) -> GroupDetail | None:
        """One group with a page of its members (newest first, before the id `before`) and
        its memories per day; None when no memory has that fingerprint."""
        from ..groups import group_of

        return group_of(self._every_memory(), fingerprint, limit, before)

    def summary(self, query: GroupQuery) -> Summary:
        """A period's totals, groups and breakdowns for a report (the query has since and
        until), computed from every stored memory unless the store keeps them."""
        from ..report import summary_of

        return summary_of(self._every_memory(), query)

    def _every_memory(self) -> Iterator[Memory]:
        after = None
        while page := self.scan(after, 1000):
            yield from page
            after = page[-1].id

    def filtered_ids(self, query: SearchQuery) -> list[str]:
        """Ids of up to `query.limit` memories that pass the query's filters, in whatever
        order the store finds them cheapest (a page of a delete; the text is not used)."""
        return [m.id for m in self.search(msgspec.structs.replace(query, text=""))]

    def take_oldest(self, limit: int) -> list[Memory]:
        """The oldest stored memories, to move them to another store (a fallback's job)."""
        return self.scan(None, limit)

    def delete(self, ids: Sequence[str]) -> None:
        """Remove memories (ids not stored are ignored), with all kept for them: index
        entries, vectors."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete memories")

    def idle_work(self) -> bool:
        """One short step of work the store puts off while memories come in (embeddings,
        say), run by the worker when its queue is short; True while more is waiting."""
        return False

    def release_memory(self) -> None:
        """Let go of caches the store can fill again, once its put-off work is done."""
        return None  # a store without caches of its own keeps nothing

    def pending_embeddings(self) -> int:
        """How many stored memories wait for their embedding (0 without semantic recall)."""
        return 0

    def health_reasons(self) -> list[str]:
        """What is wrong with the store besides failing writes (which the collector sees)."""
        return []

    def classify(self, exc: BaseException) -> ErrorKind | None:
        """Whether a write error is worth retrying; None when it cannot be told."""
        if isinstance(exc, TransientBackendError):
            return "transient"
        if isinstance(exc, PermanentBackendError):
            return "permanent"
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return "transient"
        if isinstance(exc, (ValueError, TypeError, UnicodeError, OverflowError)):
            return "permanent"
        return None

    def move_lock_path(self) -> str | None:
        """The file whose lock the processes moving memories out of this store, as a
        fallback, and deleting from it take turns on; None when no other process reaches it."""
        if not self.persistent:
            return None
        import hashlib  # here: only a collector with a fallback needs them
        import tempfile

        # Named after a digest of the URL, so no password in it shows in the file's name.
        digest = hashlib.blake2b(self.url.encode(), digest_size=12).hexdigest()
        return f"{tempfile.gettempdir()}/memcollect-moving-{digest}.lock"

    def after_fork(self) -> None:  # noqa: B027 - only backends holding connections need it
        """Drop what the parent process owns (connections) without closing it."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
