"""The `memcollect` command: run the demo, add, recall and inspect memories."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["cli", "main"]


def __getattr__(name: str) -> Any:
    # The click group, with every command on it; lazy, so that `main` can tell a missing
    # extra in one sentence instead of an ImportError.
    if name == "cli":
        from . import admin, commands, groups  # noqa: F401 - they add their commands to the group
        from .common import cli

        return cli
    raise AttributeError(name)


def main() -> None:
    """Entry point of the `memcollect` console script."""
    try:
        import click  # noqa: F401 - only to tell a missing extra from a bug
        import rich  # noqa: F401
    except ImportError:
        sys.stderr.write(
            "memcollect: the command line needs the cli extra: pip install 'memcollect[cli]'\n"
        )
        raise SystemExit(2) from None
    from . import admin, commands, groups  # noqa: F401 - they add their commands to the group
    from .common import cli

    cli()
