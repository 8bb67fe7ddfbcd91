"""The HTTP API: a MemoryCollector behind FastAPI, with auth, limits, metrics and a dashboard."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from ..collector import MemoryCollector
from .auth import TokenAuth
from .handlers import install_error_handlers, install_openapi
from .history import HISTORY_INTERVAL_S, History, Sampler
from .metrics import metrics_registry
from .routes import DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, ServerState, router
from .views import views

__all__ = ["DEFAULT_PORT", "create_app", "serve"]

DEFAULT_PORT = 8765


class _CollectorHolder:
    """The app's collector: the one given, or one it builds at startup and closes at
    shutdown."""

    def __init__(
        self, given: MemoryCollector | None, fields: dict[str, Any], history: History
    ) -> None:
        self.collector = given
        self.owned = given is None
        self.fields = fields
        self.history = history

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        """Build the collector at startup (if the app owns it); close it at shutdown."""
        if self.owned and (self.collector is None or self.collector.closed):
            self.collector = await run_in_threadpool(lambda: MemoryCollector(**self.fields))
        sampler = Sampler(self.history, lambda: self.current().stats())
        sampler.start()
        try:
            yield
        finally:
            sampler.stop()
            if self.owned and self.collector is not None:
                # Requests have finished by now: what they handed in is stored, or left in
                # the spool for the next start if the store stays down past the timeout.
                await run_in_threadpool(self.collector.close)

    def current(self) -> MemoryCollector:
        """The collector requests use."""
        found = self.collector
        if found is None or (self.owned and found.closed):
            # Before the lifespan: serve() opens the store here, and an app driven without
            # its lifespan (a test client) does on its first request.
            self.collector = found = MemoryCollector(**self.fields)
        return found


def create_app(
    collector: MemoryCollector | None = None,
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    history_interval: float = HISTORY_INTERVAL_S,
    **collector_fields: Any,
) -> FastAPI:
    """An ASGI app serving a collector; it builds (and closes) one from `collector_fields`
    unless given one. `token` defaults to $MEMCOLLECT_TOKEN; empty means no auth. The
    server samples its counters every `history_interval` seconds for the dashboard."""
    if token is None:
        token = os.environ.get("MEMCOLLECT_TOKEN", "")
    history = History(history_interval)
    holder = _CollectorHolder(collector, collector_fields, history)
    current = holder.current
    app = FastAPI(
        title="memcollect",
        summary="Collect memories for AI agents; recall them by search.",
        version=_version(),
        lifespan=holder.lifespan,
        docs_url=None,  # Swagger UI would load from a CDN; /openapi.json is served.
        redoc_url=None,
    )
    if token:
        app.add_middleware(TokenAuth, token=token)
    install_error_handlers(app)
    install_openapi(
        app,
        bool(token),
        lambda: current().config.max_content_bytes,
        lambda: current().backend.supports_semantic,
        max_batch,
    )
    app.state.memcollect = ServerState(
        current, metrics_registry(current), max_body_bytes, max_batch, history
    )
    app.include_router(router)
    app.include_router(views)
    return app


def _version() -> str:
    from .. import __version__

    return __version__


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    log_level: str = "info",
    **create_args: Any,
) -> None:
    """Run the server until SIGTERM or SIGINT, then flush and return."""
    from .running import run_until_stopped

    app = create_app(**create_args)
    # The store is opened now, not in the server's startup: one that cannot be opened is the
    # collector's one sentence to the caller, not a startup traceback. The startup uses this
    # collector, and the shutdown closes it.
    app.state.memcollect.collector()
    # Sockets the server keeps open for clients' keep-alive batches.
    run_until_stopped(app, host, port, log_level, timeout_keep_alive=30)
