"""Running an ASGI app with uvicorn until SIGTERM or SIGINT, then returning (exit 0)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["run_until_stopped", "server_config"]


def run_until_stopped(app: Any, host: str, port: int, log_level: str, **options: Any) -> None:
    """Serve `app` on host:port; return after a graceful shutdown on SIGTERM or SIGINT, so
    that the caller can close what it opened."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGTERM after its graceful shutdown, so the process would end
            # "killed by SIGTERM"; a shutdown that stored everything is a success: exit 0.
            with super().capture_signals():
                try:
                    yield
                finally:
                    captured = getattr(self, "_captured_signals", None)
                    if isinstance(captured, list):
                        captured.clear()

    GracefulServer(server_config(app, host, port, log_level, **options)).run()


def server_config(app: Any, host: str, port: int, log_level: str, **options: Any) -> Any:
    """uvicorn's configuration for `app`, with the dashboard's polling kept out of the access
    log (a line a second per open tab would bury the requests worth reading)."""
    import logging

    import uvicorn

    from .history import quiet_polling

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, server_header=False, **options
    )
    access = logging.getLogger("uvicorn.access")
    if quiet_polling not in access.filters:
        access.addFilter(quiet_polling)
    return config
