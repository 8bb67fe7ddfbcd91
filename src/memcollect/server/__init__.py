"""The memcollect server: a collector over HTTP, with metrics and a live dashboard.

Needs the server extra (`pip install 'memcollect[server]'`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import memcollect.server` needs no FastAPI until the app is asked for.
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
