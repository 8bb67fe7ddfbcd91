"""What every command shares: the collector it opens, its options, its errors."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console

from ..collector import MemoryCollector
from ..config import load_config
from ..errors import MemcollectError, ValidationError
from ..query import point_in_time

_TIME_HELP = (
    "Only memories {} this time: an age (30m, 2h, 7d), an ISO date or time "
    "(2026-11-25, 2026-11-25T14:00:00+00:00; local time without an offset) or epoch seconds."
)
# Below this many columns, memories are listed one under another instead of in a table.
_WIDE_TABLE = 100


def _point_in_time(value: str | None, option: str) -> float | None:
    """Epoch seconds for a --since/--until value (see _TIME_HELP), or a one-line error."""
    return None if value is None else point_in_time(value, option)


console = Console()


def _collector(
    backend: str | None, data_dir: str | None, *, existing: bool = False, **fields: Any
) -> MemoryCollector:
    """A collector for one command. One-shot commands keep nothing on disk of their own
    (durability="memory" unless told): a spool left in the current directory would be
    stored by the next command run there, into whatever store that one names.
    existing=True (reads, deletes): the store must exist already; none is created."""
    if backend:
        fields["backend"] = backend
    if data_dir:
        fields["data_dir"] = data_dir
    fields.setdefault("durability", "memory")
    config = load_config(**fields)
    url = config.backend_url
    if url.startswith(("postgresql:", "postgres:")):
        # A command answers within seconds, even when the server cannot be reached.
        url = _with_defaults(url, pool_timeout="3", connect_timeout="3")
    if existing:
        _check_exists(url)
    return MemoryCollector(config.replace(backend=url))


def _with_defaults(url: str, **options: str) -> str:
    """The URL with these query options added where it does not set them."""
    missing = {k: v for k, v in options.items() if f"{k}=" not in url}
    if not missing:
        return url
    extra = "&".join(f"{k}={v}" for k, v in missing.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def _check_exists(url: str) -> None:
    """A one-line error when a file store does not exist (reading must not create it)."""
    from ..backends.sqlite import parse_sqlite_url

    if url.startswith("sqlite:"):
        path, _ = parse_sqlite_url(url)
        if path != ":memory:" and not os.path.isfile(path):
            raise ValidationError(
                f"there is no memcollect store at {path}: check --backend or --data-dir "
                "(nothing was created)"
            )
    elif url.startswith("mem0:"):
        path = url.split("?", 1)[0][len("mem0:///") :]
        if path and not os.path.isdir(path):
            raise ValidationError(
                f"there is no mem0 store at {path}: check --backend (nothing was created)"
            )


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except MemcollectError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise click.ClickException(f"{exc.strerror or exc}{where}") from None
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except Exception as exc:
        if os.environ.get("MEMCOLLECT_DEBUG"):
            raise
        # Never a traceback: one line, and the way to see more.
        raise click.ClickException(
            f"unexpected error ({type(exc).__name__}: {exc}); run again with "
            "MEMCOLLECT_DEBUG=1 for the traceback, and please report it"
        ) from None


backend_option = click.option(
    "--backend", envvar="MEMCOLLECT_BACKEND", help="Backend URL (default: SQLite in data dir)."
)


data_dir_option = click.option(
    "--data-dir", envvar="MEMCOLLECT_DATA_DIR", help="Data directory (default ./.memcollect)."
)


def _store_options(func: Callable[..., Any]) -> Callable[..., Any]:
    return backend_option(data_dir_option(func))


def _filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The filters of search() and delete(), as options."""
    options = [
        click.option("--category", help="Only this category."),
        click.option("--tag", "tags", multiple=True, help="A tag the memories hold (repeatable)."),
        click.option("--project", help="Only this project."),
        click.option("--agent", help="Only this agent."),
        click.option("--session", help="Only this session."),
        click.option("--since", help=_TIME_HELP.format("from")),
        click.option("--until", help=_TIME_HELP.format("before")),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group()
@click.version_option(package_name="memcollect")
def cli() -> None:
    """Collect memories for AI agents, store them durably, recall them by search."""
    # A command ends in one line that says what went wrong; the library's warnings on
    # the way there (retries, reconnects) would only repeat it. Errors still show.
    _log_errors_only()


def _log_errors_only() -> None:
    import logging

    library = logging.getLogger("memcollect")
    if not library.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("memcollect: %(message)s"))
        handler.setLevel(logging.ERROR)
        library.addHandler(handler)
