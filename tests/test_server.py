"""The HTTP API through httpx's ASGI transport: ingest, reads, limits, auth, errors, metrics."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

import memcollect as mc
from memcollect.backends.base import DeadLetter
from memcollect.server import create_app
from memcollect.testing import FaultyBackend

TOKEN = "s3cret-token"


class Api:
    """A synchronous face on httpx.AsyncClient + ASGITransport, for readable tests."""

    def __init__(self, app: Any, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.headers = headers or {}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://test", headers=self.headers
            ) as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(call())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


@pytest.fixture
def collector(
    make_collector: Callable[..., mc.MemoryCollector], tmp_path: Path
) -> mc.MemoryCollector:
    return make_collector(f"sqlite:///{tmp_path}/api.db")


@pytest.fixture
def api(collector: mc.MemoryCollector) -> Api:
    return Api(create_app(collector, token=""))


def test_post_one_then_read_it_back(api: Api, collector: mc.MemoryCollector) -> None:
    response = api.post(
        "/v1/memories",
        json={"category": "bug", "content": "Login fails on Safari 17", "tags": ["auth"]},
    )
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 1 and body["rejected"] == [] and body["stored"] is False
    (memory_id,) = body["ids"]
    # Read-your-writes: found even before it is stored.
    got = api.get(f"/v1/memories/{memory_id}").json()
    assert got["content"] == "Login fails on Safari 17" and got["priority"] == "high"
    assert collector.flush(5)
    hits = api.get("/v1/search", params={"q": "safari", "tags": "auth"}).json()
    assert [h["id"] for h in hits] == [memory_id]
    assert api.get("/v1/search", params={"q": "safari", "tags": "other"}).json() == []
    assert api.get("/v1/memories", params={"category": "bug"}).json()[0]["id"] == memory_id
    assert api.get("/v1/counts").json() == {"total": 1, "by_category": {"bug": 1}}


def test_sync_answers_once_stored(api: Api, collector: mc.MemoryCollector) -> None:
    items = [{"category": "note", "content": f"synced {i}"} for i in range(50)]
    body = api.post("/v1/memories", params={"sync": "true"}, json=items).json()
    assert body["stored"] is True and body["accepted"] == 50
    assert api.get("/v1/counts").json()["total"] == 50  # no flush: already in the store
    stats = collector.stats()
    assert stats.accepted == 50 and stats.stored == 50 and stats.queue_depth == 0


def test_sync_reports_store_trouble_for_the_client_to_act_on(
    make_collector: Callable[..., mc.MemoryCollector],
) -> None:
    from memcollect.backends.memory import MemoryBackend

    store = FaultyBackend(
        MemoryBackend("memory://"), poison=lambda m: m.content.startswith("poison")
    )
    api = Api(create_app(make_collector(store), token=""))
    store.go_down()
    down = api.post("/v1/memories", params={"sync": "1"}, json={"category": "bug", "content": "x"})
    assert down.status_code == 503 and down.headers["Retry-After"] == "1"
    store.come_back()
    refused = api.post(
        "/v1/memories", params={"sync": "1"}, json={"category": "bug", "content": "poison pill"}
    )
    assert refused.status_code == 422 and "refused" in refused.json()["error"]
    assert store.count() == 0


def test_invalid_items_are_named_and_the_valid_ones_kept(
    api: Api, collector: mc.MemoryCollector
) -> None:
    items = [
        {"category": "bug", "content": "good one"},
        {"category": "Not A Slug", "content": "bad category"},
        {"category": "bug", "content": ""},
        7,
        {"category": "bug", "content": "good two", "priority": "urgent"},
        {"category": "bug", "content": "good three", "metadata": {"n": 1}},
        {"category": "bug", "content": "too big", "metadata": {"n": 2**64}},
    ]
    response = api.post("/v1/memories", json=items)
    assert response.status_code == 422
    body = response.json()
    rejected = {r["index"]: r["error"] for r in body["rejected"]}
    assert set(rejected) == {1, 2, 3, 4, 6}
    assert "category" in rejected[1]
    assert "content" in rejected[2]
    assert "JSON object" in rejected[3]
    assert "priority" in rejected[4]
    assert "64 bits" in rejected[6]
    assert body["accepted"] == 2 and "5 of 7" in body["error"]
    assert collector.flush(5)
    stored = sorted(m.content for m in collector.recent(10))
    assert stored == ["good one", "good three"]
    assert sorted(body["ids"]) == sorted(m.id for m in collector.recent(10))


def test_ids_sent_by_the_client_make_resends_idempotent(
    api: Api, collector: mc.MemoryCollector
) -> None:
    record = {
        "id": mc.new_id(),
        "created_at": 1_700_000_000.5,
        "category": "error",
        "content": "sent twice",
    }
    for _ in range(3):
        assert api.post("/v1/memories", json=[record, record]).json()["ids"] == [record["id"]] * 2
    assert collector.flush(5)
    assert collector.count() == 1
    stored = collector.get(str(record["id"]))
    assert stored is not None and stored.created_at == 1_700_000_000.5
    bad = api.post("/v1/memories", json={**record, "id": "not-an-id"})
    assert bad.status_code == 422 and "id" in bad.json()["rejected"][0]["error"]
    bad = api.post("/v1/memories", json={**record, "id": mc.new_id(), "created_at": 1.7e12})
    assert "created_at" in bad.json()["rejected"][0]["error"]


def test_malformed_and_oversized_bodies(collector: mc.MemoryCollector) -> None:
    api = Api(create_app(collector, token="", max_body_bytes=10_000, max_batch=5))
    response = api.post("/v1/memories", content=b"{not json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    response = api.post("/v1/memories", json=[])
    assert response.status_code == 422 and "no memories" in response.json()["error"]
    response = api.post("/v1/memories", content=b"x" * 10_001)
    assert response.status_code == 413 and "10000 bytes" in response.json()["error"]
    six = [{"category": "note", "content": "n"}] * 6
    response = api.post("/v1/memories", json=six)
    assert response.status_code == 422 and "limit of 5" in response.json()["error"]
    # A small gzip body that inflates past the limit is refused, not inflated.
    bomb = gzip.compress(b"[" + b" " * 1_000_000 + b"]")
    response = api.post("/v1/memories", content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    response = api.post(
        "/v1/memories", content=b"\x1f\x8bnot gzip", headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 422 and "gzip" in response.json()["error"]
    good = gzip.compress(json.dumps([{"category": "note", "content": "zipped"}]).encode())
    response = api.post("/v1/memories", content=good, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 202
    response = api.post("/v1/memories", content=b"{}", headers={"Content-Encoding": "br"})
    assert response.status_code == 422 and "br" in response.json()["error"]
    assert collector.stats().accepted == 1  # nothing of the refused bodies was collected


def test_bad_parameters_name_the_parameter(api: Api) -> None:
    response = api.get("/v1/search", params={"limit": 0})
    assert response.status_code == 422 and "limit" in response.json()["error"]
    # Any text is a query of its words: an unclosed quote is no error.
    response = api.get("/v1/search", params={"q": '"unclosed'})
    assert response.status_code == 200 and response.json() == []
    response = api.get("/v1/memories", params={"category": "Bad Slug"})
    assert response.status_code == 422 and "category" in response.json()["error"]
    response = api.get("/v1/memories/01nosuchid0000000000000000")
    assert response.status_code == 404 and "no memory" in response.json()["error"]
    assert api.get("/v2/nothing").status_code == 404


def test_auth_guards_everything_but_healthz(collector: mc.MemoryCollector) -> None:
    app = create_app(collector, token=TOKEN)
    anonymous, wrong = Api(app), Api(app, {"Authorization": "Bearer nope"})
    bearer = Api(app, {"Authorization": f"Bearer {TOKEN}"})
    basic_credentials = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    basic = Api(app, {"Authorization": f"Basic {basic_credentials}"})
    for path in ("/v1/stats", "/v1/counts", "/metrics", "/readyz", "/", "/openapi.json"):
        assert anonymous.get(path).status_code == 401, path
        assert wrong.get(path).status_code == 401, path
        assert bearer.get(path).status_code == 200, path
        assert basic.get(path).status_code == 200, path
    refused = anonymous.post("/v1/memories", json={"category": "bug", "content": "x"})
    assert refused.status_code == 401 and "MEMCOLLECT_TOKEN" in refused.json()["error"]
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    # The dashboard asks the browser for the token as a Basic password.
    assert anonymous.get("/").headers["WWW-Authenticate"].startswith("Basic")
    assert anonymous.get("/healthz").json() == {"status": "alive"}
    assert collector.stats().accepted == 0
    spec = bearer.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "basic"}


def test_token_comes_from_the_environment(
    collector: mc.MemoryCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMCOLLECT_TOKEN", TOKEN)
    app = create_app(collector)
    assert Api(app).get("/v1/stats").status_code == 401
    assert Api(app, {"Authorization": f"Bearer {TOKEN}"}).get("/v1/stats").status_code == 200


def test_errors_never_carry_a_stack_trace(
    make_collector: Callable[..., mc.MemoryCollector],
) -> None:
    api = Api(create_app(make_collector("memory://"), token=""))
    app = api.app

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    response = api.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error: the server log has the details"}
    assert "secret" not in response.text and "Traceback" not in response.text


def test_readyz_and_stats_follow_the_backend(
    make_collector: Callable[..., mc.MemoryCollector],
) -> None:
    from memcollect.backends.memory import MemoryBackend

    store = FaultyBackend(MemoryBackend("memory://"))
    collector = make_collector(store, max_retries=2)
    api = Api(create_app(collector, token=""))
    assert api.get("/readyz").status_code == 200
    store.go_down()
    api.post("/v1/memories", json={"category": "bug", "content": "during outage"})
    assert not collector.flush(0.5)
    response = api.get("/readyz")
    assert response.status_code == 503 and response.json()["status"] == "failing"
    stats = api.get("/v1/stats").json()
    assert stats["health"]["status"] == "failing" and stats["stats"]["accepted"] == 1
    store.come_back()
    assert collector.flush(10)
    assert api.get("/readyz").status_code == 200


def test_metrics_expose_the_collector(api: Api, collector: mc.MemoryCollector) -> None:
    api.post("/v1/memories", json=[{"category": "note", "content": f"m{i}"} for i in range(3)])
    assert collector.flush(5)
    response = api.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    lines = set(response.text.splitlines())
    assert "memcollect_accepted_total 3.0" in lines
    assert "memcollect_stored_total 3.0" in lines
    assert "memcollect_health 0.0" in lines
    assert "memcollect_pending_embeddings 0.0" in lines
    assert "memcollect_storer_restarts_total 0.0" in lines
    assert any(line.startswith('memcollect_batch_write_seconds{quantile="0.5"}') for line in lines)


def test_dead_letter_endpoints(api: Api, collector: mc.MemoryCollector) -> None:
    poison = {
        "memory": mc.Memory(
            mc.new_id(), "bug", "refused", {}, "high", (), None, None, None, 1.7e9
        ).to_dict(),
        "error": "PermanentBackendError: bad",
        "failed_at": 1.7e9,
    }
    assert api.post("/v1/dead-letters", json=[poison]).status_code == 204
    letters = api.get("/v1/dead-letters").json()
    assert [d["memory"]["content"] for d in letters] == ["refused"]
    assert api.post("/v1/dead-letters/retry").json() == {"queued": 1}
    assert collector.flush(5)
    assert api.get("/v1/dead-letters").json() == []
    assert collector.count() == 1
    api.post("/v1/dead-letters", json=[poison])
    api.post("/v1/dead-letters/remove", json={"ids": [poison["memory"]["id"]]})  # type: ignore[index]
    assert api.get("/v1/dead-letters").json() == []


def test_delete_endpoint_takes_ids_or_filters(api: Api, collector: mc.MemoryCollector) -> None:
    posted = api.post(
        "/v1/memories",
        json=[
            {"category": "bug", "content": "Login fails", "session": "s-42"},
            {"category": "bug", "content": "Signup fails", "session": "s-42", "tags": ["x"]},
            {"category": "note", "content": "Kept", "session": "s-7"},
        ],
    ).json()
    first, _, kept = posted["ids"]
    # Still queued: the delete stores what came before it, then deletes.
    deleted = api.post("/v1/delete", json={"ids": [first]})
    assert deleted.status_code == 200 and deleted.json() == {"deleted": 1}
    assert api.get(f"/v1/memories/{first}").status_code == 404
    by_filters = api.post("/v1/delete", json={"session": "s-42", "tags": ["x"]})
    assert by_filters.json() == {"deleted": 1}
    assert [m["id"] for m in api.get("/v1/memories").json()] == [kept]
    refused = api.post("/v1/delete", json={})
    assert refused.status_code == 422 and "needs ids or a filter" in refused.json()["error"]
    unknown = api.post("/v1/delete", json={"id": first})
    assert unknown.status_code == 422 and collector.count() == 1
    assert "memcollect_deleted_total 2.0" in api.get("/metrics").text


def test_dashboard_is_one_self_contained_page(api: Api) -> None:
    response = api.get("/")
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    # Nothing is fetched from outside this server: no external URLs in the page...
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    # ...and the browser is told so.
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    for endpoint in ("/v1/stats", "/v1/history", "/v1/counts", "/v1/search", "/v1/memories",
                     "/v1/report", "/v1/dead-letters"):  # fmt: skip
        assert endpoint in html


def test_hundreds_of_concurrent_posts_all_land(collector: mc.MemoryCollector) -> None:
    app = create_app(collector, token="")

    async def main() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            responses = await asyncio.gather(
                *(
                    client.post("/v1/memories", json={"category": "note", "content": f"c{i}"})
                    for i in range(300)
                )
            )
        return [r.json()["ids"][0] for r in responses]

    ids = asyncio.run(main())
    assert len(set(ids)) == 300
    assert collector.flush(10)
    assert collector.count() == 300


def test_export_pages(api: Api) -> None:
    api.post(
        "/v1/memories",
        params={"sync": "true"},
        json=[{"category": "note", "content": f"e{i}"} for i in range(7)],
    )
    first = api.get("/v1/export", params={"limit": 5}).json()
    rest = api.get("/v1/export", params={"limit": 5, "after": first[-1]["id"]}).json()
    assert len(first) == 5 and len(rest) == 2
    assert sorted(m["content"] for m in first + rest) == [f"e{i}" for i in range(7)]


def test_an_app_that_builds_its_collector_flushes_it_at_shutdown(tmp_path: Path) -> None:
    app = create_app(
        token="",
        backend=f"sqlite:///{tmp_path}/owned.db",
        data_dir=str(tmp_path / "d"),
        durability="memory",
        batch_timeout=60.0,
        batch_size=100_000,
    )

    async def main() -> int:
        # The app's lifespan, as a server runs it: startup, requests, shutdown.
        async with app.router.lifespan_context(app):
            items = [{"category": "note", "content": f"owned {i}"} for i in range(20)]
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.post("/v1/memories", json=items)
                return response.status_code

    assert asyncio.run(main()) == 202
    # No batch had closed (size and timeout far away): shutdown stored them.
    with mc.MemoryCollector(f"sqlite:///{tmp_path}/owned.db", data_dir=str(tmp_path / "e")) as c:
        assert c.count() == 20


def test_lookup_reads_many_ids_in_the_order_asked_and_bounds_how_many(
    api: Api, collector: mc.MemoryCollector
) -> None:
    ids = collector.collect_batch([{"category": "note", "content": f"n {i}"} for i in range(5)])
    assert collector.flush()
    response = api.post("/v1/lookup", json={"ids": [ids[4], "01unknown", ids[0], ids[4]]})
    assert response.status_code == 200
    assert [m["id"] for m in response.json()] == [ids[4], ids[0]]
    too_many = api.post("/v1/lookup", json={"ids": ["x"] * 1001})
    assert too_many.status_code == 422 and "1000" in too_many.text


def test_dead_letters_must_be_valid_memories(api: Api, collector: mc.MemoryCollector) -> None:
    """A dead letter may be queued again as a memory: one that could not be is refused."""
    good = mc.Memory(mc.new_id(), "bug", "fine", {}, "high", (), None, None, None, 1.7e9)
    bad_records = [
        good.to_dict() | {"id": "x"},
        good.to_dict() | {"category": "Bad!"},
        good.to_dict() | {"content": "nul \x00 inside"},
    ]
    for record in bad_records:
        letter = {"memory": record, "error": "E", "failed_at": 1.7e9}
        response = api.post("/v1/dead-letters", json=[letter])
        assert response.status_code == 422, record
        error = response.json()["error"]
        assert "dead letter 0: " in error or "$[0].memory." in error, error
    assert api.get("/v1/dead-letters").json() == []
    # Kept by an older server that did not check: retry leaves it where it is.
    collector.backend.add_dead_letters(
        [DeadLetter(msgspec.structs.replace(good, category="Bad!"), "E", 1.7e9)]
    )
    assert api.post("/v1/dead-letters/retry").json() == {"queued": 0}
    assert collector.flush(5) and collector.count() == 0
    assert len(api.get("/v1/dead-letters").json()) == 1


def test_nesting_is_bounded_at_32_levels_and_deeper_is_a_4xx(api: Api) -> None:
    def nested(levels: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(levels - 1):
            value = {"a": value}
        return value

    ok = api.post("/v1/memories", json={"category": "note", "content": "c", "metadata": nested(32)})
    assert ok.status_code == 202
    deeper = api.post(
        "/v1/memories", json={"category": "note", "content": "c", "metadata": nested(33)}
    )
    assert deeper.status_code == 422 and "32 levels" in deeper.text
    thousands = '{"category": "note", "content": "c", "metadata": ' + '{"a": ' * 5000
    thousands += "1" + "}" * 5001
    response = api.post("/v1/memories", content=thousands.encode())
    assert response.status_code == 422 and "nested too deeply" in response.json()["error"]
    with pytest.raises(mc.ValidationError, match="32 levels"):
        mc.validate.check_metadata(nested(33))
    assert mc.validate.check_metadata(nested(32))


def test_every_member_of_a_gzip_body_is_read(api: Api, collector: mc.MemoryCollector) -> None:
    first = gzip.compress(b'[{"category": "note", "content": "one"},')
    second = gzip.compress(b'{"category": "note", "content": "two"}]')
    response = api.post(
        "/v1/memories", content=first + second, headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 202, response.text
    assert collector.flush(5)
    assert sorted(m.content for m in collector.recent()) == ["one", "two"]
    cut = gzip.compress(b'[{"category": "note", "content": "three"}]')[:-12]
    response = api.post("/v1/memories", content=cut, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 422 and "cut short" in response.json()["error"]
