"""A memcollect server as the store: `http://host:8765` (or https://), over httpx.

The collector in front keeps its retries, spool and failover; this backend only speaks HTTP.
Batches are sent with keep-alive, gzip and the token; ids travel with the records, so a batch
sent twice is stored once.
"""

from __future__ import annotations

import gzip
import os
import threading
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import msgspec

from ..errors import (
    MemcollectError,
    PermanentBackendError,
    TransientBackendError,
    ValidationError,
)
from ..groups import Group, GroupDetail, GroupQuery
from ..model import Memory
from ..query import Hit
from ..report import Report, Summary
from ..retry import ErrorKind
from ..wire import LOOKUP_MAX_IDS, Counts, IngestResult
from .base import Backend, DeadLetter, SearchQuery

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised by users without the extra
    raise ImportError("the http:// backend needs httpx: pip install 'memcollect[remote]'") from exc

__all__ = ["RemoteBackend"]

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_memory = msgspec.json.Decoder(Memory)
_memories = msgspec.json.Decoder(list[Memory])
_letters = msgspec.json.Decoder(list[DeadLetter])
_hits = msgspec.json.Decoder(list[Hit])
_groups = msgspec.json.Decoder(list[Group])
_group_detail = msgspec.json.Decoder(GroupDetail)
_report = msgspec.json.Decoder(Report)
_any: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
_GZIP_FROM = 2048
_PARAMS = {"timeout", "sync", "gzip"}
_NO = ("0", "false", "no", "off")


# The server's own answer types (`wire` needs only msgspec).
_counts = msgspec.json.Decoder(Counts)
_ingested = msgspec.json.Decoder(IngestResult)


class RemoteBackend(Backend):
    """Stores memories in a memcollect server (`memcollect serve`).

    URL: `http://host:port`, optionally `http://:TOKEN@host:port` (else $MEMCOLLECT_TOKEN),
    `?timeout=10` (seconds per request), `?sync=0` (a batch counts as stored once the server
    has it in its spool, rather than once it is in the server's store) and `?gzip=1` or
    `?gzip=0` (by default on, except to a loopback address).
    """

    name: ClassVar[str] = "remote"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValidationError(f"backend {url!r} names no host: use http://host:8765")
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(params) - _PARAMS
        if unknown:
            raise ValidationError(
                f"unknown option {sorted(unknown)[0]!r} in {url!r}: use timeout, sync or gzip"
            )
        try:
            self.timeout = float(params.get("timeout", 10))
        except ValueError:
            raise ValidationError(f"timeout in {url!r} must be seconds") from None
        self.sync = params.get("sync", "1").lower() not in _NO
        # Whether the server's store has embeddings is its business: it answers 422 if not.
        self.supports_semantic = True
        # Compression pays across a network and only costs CPU on this machine's loopback.
        loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
        self.gzip = params.get("gzip", "0" if loopback else "1").lower() not in _NO
        token = parts.password or os.environ.get("MEMCOLLECT_TOKEN", "")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        # The URL as shown in stats and logs: never the token.
        self.url = self.base
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()
        self._closed = False

    @property
    def _client(self) -> httpx.Client:
        # One client per thread: the worker keeps its connection alive between batches, and
        # readers on other threads never wait behind a batch in flight.
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            if self._closed:
                raise TransientBackendError(f"the backend for {self.base} is closed")
            client = httpx.Client(
                base_url=self.base,
                headers=self._headers,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 5)),
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _request(
        self, method: str, path: str, *, write: bool = False, **kwargs: Any
    ) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TransientBackendError(
                f"memcollect server {self.base} unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        if response.status_code < 400:
            return response
        raise _error_for(response, self.base, write)

    def _decode(self, decoder: msgspec.json.Decoder[T], response: httpx.Response) -> T:
        try:
            return decoder.decode(response.content)
        except msgspec.DecodeError as exc:  # msgspec's ValidationError too
            raise TransientBackendError(
                f"{self.base} did not answer as a memcollect server ({exc}): check the backend URL"
            ) from None

    # --- writes (the worker) ---------------------------------------------------------------

    def write_batch(self, batch: Sequence[Memory]) -> None:
        """Send a batch; the server keeps ids, so sending it again stores nothing twice."""
        body = _encoder.encode(batch)
        headers = {"Content-Type": "application/json"}
        if self.gzip and len(body) >= _GZIP_FROM:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        params = {"sync": "true"} if self.sync else None
        response = self._request(
            "POST", "/v1/memories", write=True, content=body, headers=headers, params=params
        )
        # Any web server answers 200 to a POST it ignores: only a memcollect server's count of
        # what it accepted means the batch is safe, else it is kept and sent again.
        accepted = self._decode(_ingested, response).accepted
        if accepted != len(batch):
            raise TransientBackendError(
                f"memcollect server {self.base} accepted {accepted} of {len(batch)} memories"
            )

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep dead letters in the server's store, where its operators look for them."""
        self._post_json("/v1/dead-letters", list(letters))

    def remove_dead_letters(self, ids: Sequence[str]) -> None:
        """Forget dead letters on the server."""
        self._post_json("/v1/dead-letters/remove", {"ids": list(ids)})

    def delete(self, ids: Sequence[str]) -> None:
        """Delete memories on the server (from its store, fallback and dead letters)."""
        self._post_json("/v1/delete", {"ids": list(ids)})

    def _post_json(self, path: str, payload: Any) -> None:
        self._request(
            "POST",
            path,
            write=True,
            content=_encoder.encode(payload),
            headers={"Content-Type": "application/json"},
        )

    # --- reads -----------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory | None:
        """One memory by id."""
        try:
            response = self._request("GET", f"/v1/memories/{memory_id}")
        except _NotFound:
            return None
        return self._decode(_memory, response)

    def get_many(self, ids: Sequence[str]) -> list[Memory]:
        """The memories with these ids, in the order asked; ids not stored are left out."""
        found: list[Memory] = []
        for start in range(0, len(ids), LOOKUP_MAX_IDS):
            response = self._request(
                "POST",
                "/v1/lookup",
                content=_encoder.encode({"ids": list(ids[start : start + LOOKUP_MAX_IDS])}),
                headers={"Content-Type": "application/json"},
            )
            page: list[Memory] = self._decode(_memories, response)
            found += page
        return found

    def recent(self, limit: int, category: str | None = None) -> list[Memory]:
        """The newest memories first."""
        params: dict[str, Any] = {"limit": limit}
        if category is not None:
            params["category"] = category
        return self._decode(_memories, self._request("GET", "/v1/memories", params=params))

    def count(self, category: str | None = None) -> int:
        """How many memories are stored."""
        counts = self._counts()
        return counts.total if category is None else counts.by_category.get(category, 0)

    def count_by_category(self) -> dict[str, int]:
        """How many memories are stored, per category."""
        return self._counts().by_category

    def _counts(self) -> Counts:
        return self._decode(_counts, self._request("GET", "/v1/counts"))

    def default_mode(self) -> str:
        """The server's store decides (hybrid where it has embeddings)."""
        return "default"

    def search(self, query: SearchQuery) -> list[Memory]:
        """Memories matching the text and filters, best first, as the server ranks them."""
        return self._decode(_memories, self._request("GET", "/v1/search", params=_params(query)))

    def search_hits(self, query: SearchQuery) -> list[Hit]:
        """search(), each hit with the score and the way the server's store found it."""
        response = self._request("GET", "/v1/search/scored", params=_params(query))
        return self._decode(_hits, response)

    def groups(self, query: GroupQuery) -> list[Group]:
        """The server's groups, as its store keeps them."""
        params = _group_params(query, [("order", query.order)])
        return self._decode(_groups, self._request("GET", "/v1/groups", params=params))

    def group(
        self, fingerprint: str, limit: int = 20, before: str | None = None
    ) -> GroupDetail | None:
        """One of the server's groups, with a page of its members."""
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        try:
            response = self._request(
                "GET", f"/v1/groups/{quote(fingerprint, safe='')}", params=params
            )
        except _NotFound:
            return None
        return self._decode(_group_detail, response)

    def summary(self, query: GroupQuery) -> Summary:
        """The summary part of the server's report for the period."""
        response = self._request("GET", "/v1/report", params=_group_params(query, []))
        return self._decode(_report, response).summary

    def scan(self, after: str | None, limit: int) -> list[Memory]:
        """The server's memories in id order, after the id `after`."""
        params: dict[str, Any] = {"limit": min(limit, 1000)}
        if after is not None:
            params["after"] = after
        return self._decode(_memories, self._request("GET", "/v1/export", params=params))

    def server_stats(self) -> dict[str, Any]:
        """The server collector's stats and health, as JSON builtins."""
        body: dict[str, Any] = self._decode(_any, self._request("GET", "/v1/stats"))
        return body

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The server's dead letters, oldest first."""
        response = self._request("GET", "/v1/dead-letters", params={"limit": min(limit, 1000)})
        return self._decode(_letters, response)

    # --- lifecycle -------------------------------------------------------------------------

    def classify(self, exc: BaseException) -> ErrorKind | None:
        """Transport trouble and 5xx are transient; a 4xx on a batch is the batch's fault."""
        if isinstance(exc, httpx.TransportError):
            return "transient"
        return super().classify(exc)

    def after_fork(self) -> None:
        """Forget the parent's connections; the child opens its own."""
        self._local = threading.local()
        self._clients = []
        self._clients_lock = threading.Lock()

    def close(self) -> None:
        """Close every connection."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
            self._closed = True
        for client in clients:
            client.close()
        self._local = threading.local()


class _NotFound(PermanentBackendError):
    pass


def _error_for(response: httpx.Response, base: str, write: bool) -> MemcollectError:
    status = response.status_code
    try:
        detail = str(msgspec.json.decode(response.content).get("error", ""))
    except (msgspec.DecodeError, AttributeError):
        detail = response.text[:200]
    message = f"memcollect server {base} answered {status}: {detail}"
    if status == 404:
        return _NotFound(message)
    if status == 422 and not write:
        return ValidationError(detail)
    if status in (401, 403):
        # A wrong token is fixed by a person, not by dropping the data: keep retrying.
        return TransientBackendError(
            f"{message} (set MEMCOLLECT_TOKEN, or the URL's password, to the server's token)"
        )
    if status in (408, 429) or status >= 500:
        return TransientBackendError(message, retry_after=_retry_after(response))
    return PermanentBackendError(message)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _params(query: SearchQuery) -> list[tuple[str, Any]]:
    """A search's query string for the server."""
    params: list[tuple[str, Any]] = [("q", query.text), ("limit", query.limit)]
    if query.mode != "default":
        params.append(("mode", query.mode))
    for key in ("category", "project", "agent", "session", "since", "until"):
        value = getattr(query, key)
        if value is not None:
            params.append((key, _param(key, value)))
    params.extend(("tags", tag) for tag in query.tags)
    return params


def _group_params(query: GroupQuery, params: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    params = [*params, ("limit", query.limit)]
    for key in ("category", "project", "agent", "since", "until"):
        value = getattr(query, key)
        if value is not None:
            params.append((key, _param(key, value)))
    return params


def _param(key: str, value: Any) -> Any:
    """A query parameter as the server takes it: times as epoch seconds to the microsecond."""
    return f"{value:.6f}" if key in ("since", "until") else value
