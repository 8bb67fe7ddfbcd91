"""What stores with embeddings share: the vectors in RAM, embedding, and the fusion's parts."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

from ..errors import TransientBackendError, ValidationError
from ..model import Memory
from .base import without_password
from .scoring import word_share

__all__ = [
    "NEIGHBOUR_SHARE",
    "TEXT_WEIGHT",
    "VectorMatrix",
    "cosines",
    "embed_texts",
    "found_by",
    "hybrid_scores",
    "meaning_scale",
    "numpy",
    "semantic_options",
]

Key = TypeVar("Key", bound=Hashable)

_OFF = ("0", "false", "off", "no")


def semantic_options(options: dict[str, str], url: str) -> tuple[bool, str, str | None]:
    """Whether a store URL's `semantic=` option turns embeddings on, with which embedder
    ("model" or "static") and model directory (`model=`); checked as the collector is made."""
    semantic = options.get("semantic", "0").lower()
    if semantic not in (*_OFF, "1", "true", "on", "yes", "static"):
        raise ValidationError(
            f"semantic in {without_password(url)!r} must be 1 (the model), static "
            "(static token vectors, faster and less exact) or 0"
        )
    enabled = semantic not in _OFF
    model_dir = options.get("model")
    if enabled:
        from ..semantic import MISSING_EXTRA, available, check_model_dir

        if not available():
            raise ValidationError(MISSING_EXTRA)
        check_model_dir(model_dir, url)
    return enabled, "static" if semantic == "static" else "model", model_dir


def numpy() -> Any:
    """numpy, imported as semantic recall imports it (one thread at a time)."""
    from ..semantic import numpy as load  # here: stores without vectors never need it

    return load()


def embed_texts(model_dir: str | None, kind: str, texts: Sequence[str]) -> Any:
    """The embeddings of texts, as a float32 matrix of unit rows; a model that cannot be
    loaded is a TransientBackendError (the model, not any memory, is at fault)."""
    from ..semantic import get_embedder

    try:
        embedder = get_embedder(model_dir, kind)
    except ValidationError:
        raise
    except Exception as exc:
        # Retried (health says why), never dead-lettered memory by memory.
        raise TransientBackendError(
            f"the embedding model could not be loaded ({type(exc).__name__}: {exc}); "
            "fix or replace the model directory, and the memories waiting are stored"
        ) from exc
    return embedder.embed(texts)


# Hybrid search scores a memory by its meaning and its words together, as a sum of scores,
# not of ranks: reciprocal rank fusion gives the top text hit the weight of the top semantic
# one even when it shares only a question's "when" (Bruch et al., "An Analysis of Fusion
# Functions for Hybrid Retrieval", 2023, find the sum better). Meaning counts as the cosine
# similarity above the store's median, as a share of the best one's: the scale of cosines
# differs by embedder (static vectors crowd them together), this share does not. Words count
# as TEXT_WEIGHT times the square of the share of the query's words held, each word weighed
# by its rarity (BM25's idf): holding one word of a question is weak evidence, most of them
# strong. On LoCoMo's dev set (bench/recall_locomo.py) weights 2 to 3 gave recall@10
# 0.656-0.667; the paraphrase set of bench/recall.py, whose queries share few words with
# their targets, stays as good as semantic alone with the model and with static vectors
# (unsquared or unscaled, static hybrid fell from 0.77 to 0.70-0.73 at 5).
TEXT_WEIGHT = 2.5
# The share of its score a hit lends each of its session's neighbours: an answer is often
# the turn right after the one that matches. 0.2 and 0.3 gave 0.665 on the dev set, 0.1 0.649.
NEIGHBOUR_SHARE = 0.2
# Similarities the median is taken from, at most (a stride through the store).
_MEDIAN_SAMPLE = 10_000


def meaning_scale(similarities: Any) -> tuple[float, float]:
    """The median and the best of a query's similarities to every memory of a store."""
    if not len(similarities):
        return 0.0, 0.0
    sample = similarities[:: max(1, len(similarities) // _MEDIAN_SAMPLE)]
    return float(numpy().median(sample)), float(similarities.max())


def hybrid_scores(
    memories: Mapping[Key, Memory],
    cosine: Mapping[Key, float],
    scale: tuple[float, float],
    stems: Sequence[tuple[str, float]],
    neighbours: Mapping[Key, Sequence[Key]],
) -> dict[Key, float]:
    """Each candidate's hybrid score (its meaning on the store's `scale`, its median and
    best similarity, plus its weighed words), and the share of it its session neighbours
    receive; best first."""
    median, top = scale
    spread = max(top - median, 1e-6)
    own = {
        key: max(0.0, (cosine.get(key, 0.0) - median) / spread)
        + TEXT_WEIGHT * word_share(stems, memory) ** 2
        for key, memory in memories.items()
    }
    scores = dict(own)
    for key, score in own.items():
        for near in neighbours.get(key, ()):
            scores[near] = scores.get(near, 0.0) + NEIGHBOUR_SHARE * score
    return dict(sorted(scores.items(), key=lambda item: -item[1]))


def found_by(key: object, by_text: set[Any], by_meaning: set[Any]) -> str:
    """How a hybrid hit was found: by its words, its meaning, both, or as a neighbour."""
    if key in by_text:
        return "both" if key in by_meaning else "text"
    return "meaning" if key in by_meaning else "session"


class VectorMatrix:
    """The embeddings in RAM: a float32 matrix that grows as batches land (amortized), read
    by searches on any thread from a consistent snapshot."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loading = threading.Lock()  # one sync with the file at a time
        self.checked_seq = 0  # every row up to here has been loaded from the file
        self._size = 0
        self._seqs: Any = None
        self._matrix: Any = None
        # Rows this process added after the last sync read the file: the next sync skips them.
        self._written: set[int] = set()
        # Rows deleted since the last compaction (their vectors are still in the matrix).
        self._forgotten: set[int] = set()
        # The file's count of deletes when this process last looked for rows deleted elsewhere.
        self.deletions_seen: int | None = None

    def add_written(self, seqs: Sequence[int], vectors: Any) -> None:
        """Rows this process just stored (nothing to do until a search has loaded the file)."""
        with self.lock:
            if self._matrix is None:
                return
            keep = [i for i, seq in enumerate(seqs) if seq > self.checked_seq]
            self._append([seqs[i] for i in keep], vectors[keep])
            self._written.update(seqs[i] for i in keep)

    def add_synced(self, seqs: Sequence[int], vectors: Any, checked: int) -> None:
        """Rows read from the file, up to seq `checked`."""
        with self.lock:
            keep = [i for i, seq in enumerate(seqs) if seq not in self._written]
            self._written = {seq for seq in self._written if seq > checked}
            if keep:
                self._append([seqs[i] for i in keep], vectors[keep])
            self.checked_seq = max(self.checked_seq, checked)

    def _append(self, seqs: Sequence[int], vectors: Any) -> None:
        np = numpy()
        need = self._size + len(seqs)
        if self._matrix is None or need > len(self._matrix):
            # Readers keep the arrays they took; the grown ones are published whole.
            old = 0 if self._matrix is None else len(self._matrix)
            capacity = max(need, old * 2, 1024)
            matrix = np.empty((capacity, vectors.shape[1]), np.float32)
            ids = np.empty(capacity, np.int64)
            if self._matrix is not None:
                matrix[: self._size] = self._matrix[: self._size]
                ids[: self._size] = self._seqs[: self._size]
            self._matrix, self._seqs = matrix, ids
        self._matrix[self._size : need] = vectors
        self._seqs[self._size : need] = seqs
        self._size = need

    def forget(self, seqs: Sequence[int]) -> None:
        """Rows deleted from the file. Their vectors leave RAM once a quarter of the rows
        are such: searches skip deleted rows anyway, and compacting costs a copy of all."""
        with self.lock:
            if self._matrix is None:
                return  # no vectors loaded (and maybe no numpy installed): nothing to forget
            np = numpy()
            self._forgotten.update(seqs)
            if len(self._forgotten) < max(1024, self._size // 4):
                return
            keep = ~np.isin(self._seqs[: self._size], np.fromiter(self._forgotten, np.int64))
            # Published whole, as when growing: readers keep the arrays they took.
            self._matrix, self._seqs = (
                self._matrix[: self._size][keep],
                self._seqs[: self._size][keep],
            )
            self._size = len(self._seqs)
            self._forgotten = set()

    def deleted_here(self, count: int) -> None:
        """This process's delete made the file's count of deletes `count`; it has forgotten
        those rows already, so when it had seen the count before, there is nothing to look
        for at the next sync."""
        with self.loading:
            if self.deletions_seen == count - 1:
                self.deletions_seen = count

    def keep_only(self, held: set[int], upto: int) -> None:
        """Forget the rows up to seq `upto` that are not in `held` (deleted elsewhere)."""
        with self.lock:
            if self._matrix is None:
                return
            np = numpy()
            mine = self._seqs[: self._size]
            mine = mine[mine <= upto]
            gone = mine[~np.isin(mine, np.fromiter(held, np.int64, len(held)))]
        if len(gone):
            self.forget(gone.tolist())

    def snapshot(self) -> tuple[Any, Any]:
        """(seqs, matrix) as of now."""
        with self.lock:
            if self._matrix is None:
                return (), None
            return self._seqs[: self._size], self._matrix[: self._size]


def cosines(seqs: Any, scores: Any, wanted: Sequence[int]) -> dict[int, float]:
    """The similarity of each wanted row that has a vector, clipped to 0..1."""
    if not len(seqs) or not wanted:
        return {}
    np = numpy()
    positions = np.flatnonzero(np.isin(seqs, np.asarray(wanted, dtype=seqs.dtype)))
    return {int(seqs[i]): min(1.0, max(0.0, float(scores[i]))) for i in positions}
