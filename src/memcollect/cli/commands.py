"""The everyday commands: demo, add, get, search, delete, recent, stats."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any

import click
import msgspec
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ..errors import ValidationError
from ..validate import make_memory
from .common import (
    _collector,
    _errors,
    _filter_options,
    _point_in_time,
    _store_options,
    cli,
    console,
)
from .render import _stats_snapshot, _stats_table, _stats_view, _table


@cli.command()
@_store_options
@click.option("--count", default=5000, show_default=True, help="Memories to collect.")
def demo(backend: str | None, data_dir: str | None, count: int) -> None:
    """Simulate agents collecting memories, then show stats and a few recalls."""
    from ..demo import AGENTS, run_agents

    with _errors(), _collector(backend, data_dir, profile="production") as collector:
        console.print(
            f"[bold]memcollect demo[/] — {len(AGENTS)} agent threads and one asyncio agent "
            f"collect {count} memories into [cyan]{collector.backend.url}[/]"
        )
        start_stored = collector.stats().stored
        started = time.perf_counter()
        sent = run_agents(collector, count)
        accepted_in = time.perf_counter() - started
        with Progress(
            TextColumn("storing"), BarColumn(), MofNCompleteColumn(), console=console
        ) as progress:
            task = progress.add_task("store", total=sent)
            while True:
                done = collector.stats().stored - start_stored
                progress.update(task, completed=min(done, sent))
                if done >= sent or collector.flush(timeout=0.05):
                    progress.update(task, completed=sent)
                    break
        stats = collector.stats()
        console.print(
            f"accepted {sent} in {accepted_in * 1000:.0f} ms "
            f"({sent / accepted_in:,.0f}/s across threads); "
            f"stored {stats.stored - start_stored}"
        )
        console.print(_stats_table(stats.to_dict()))
        for query, category in (
            ("safari login", "bug"),
            ("timeout payments", None),
            ("slow query", "performance"),
        ):
            hits = collector.search(query, category=category, limit=3)
            where = f" in {category}" if category else ""
            console.print(_table(hits, f'search "{query}"{where}'))
        console.print(f"health: [bold]{collector.health().status}[/]")
        same_store = f" --backend {backend}" if backend else ""
        same_store += f" --data-dir {data_dir}" if data_dir else ""
        console.print(
            f"see them live and search: [bold]memcollect serve{same_store}[/], "
            "then open http://127.0.0.1:8765",
            highlight=False,
        )


@cli.command()
@_store_options
@click.argument("category")
@click.argument("content")
@click.option("--priority", help="low, medium, high or critical.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--project", help="The project it belongs to.")
@click.option("--agent", help="The agent that recorded it.")
@click.option("--session", help="The session it belongs to.")
@click.option("--metadata", help="A JSON object.")
def add(
    backend: str | None,
    data_dir: str | None,
    category: str,
    content: str,
    metadata: str | None,
    **labels: Any,
) -> None:
    """Store one memory and print its id."""
    try:
        meta = json.loads(metadata) if metadata else None
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"--metadata is not valid JSON: {exc}") from None
    with _errors(), _collector(backend, data_dir) as collector:
        memory = make_memory(
            category, content, meta, labels["priority"], labels["tags"], labels["project"],
            labels["agent"], labels["session"], collector.config.max_content_bytes,
        )  # fmt: skip
        try:
            # Stored before the command returns, or not at all: nothing is left behind.
            collector.store_now([memory])
        except ValidationError:
            raise
        except Exception as exc:  # noqa: BLE001 - said in one line, nothing kept
            raise click.ClickException(
                f"the memory was not stored ({exc}); nothing was kept: run the command "
                "again once the store is reachable"
            ) from None
    click.echo(memory.id)


@cli.command()
@_store_options
@click.argument("memory_id")
def get(backend: str | None, data_dir: str | None, memory_id: str) -> None:
    """Print one memory as JSON."""
    with _errors(), _collector(backend, data_dir, existing=True) as collector:
        memory = collector.get(memory_id)
    if memory is None:
        raise click.ClickException(f"no memory with id {memory_id!r}")
    click.echo(json.dumps(memory.to_dict(), ensure_ascii=False, indent=2))


@cli.command()
@_store_options
@click.argument("query", default="")
@_filter_options
@click.option(
    "--mode",
    type=click.Choice(["text", "semantic", "hybrid"]),
    default=None,
    help="By words, by meaning, or both (semantic and hybrid need ?semantic=1); "
    "by default hybrid where the store has embeddings, else text.",
)
@click.option("--limit", default=10, show_default=True, help="Most memories to show.")
@click.option(
    "--collapse", is_flag=True, help="One memory per group, with how many matches share it."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def search(
    backend: str | None,
    data_dir: str | None,
    query: str,
    tags: tuple[str, ...],
    *,
    as_json: bool,
    collapse: bool,
    **filters: Any,
) -> None:
    """Search stored memories."""
    with _errors(), _collector(backend, data_dir, existing=True) as collector:
        for bound in ("since", "until"):
            filters[bound] = _point_in_time(filters[bound], f"--{bound}")
        hits = collector.search_scored(query, tags=list(tags), collapse=collapse, **filters)
    if as_json:
        for hit in hits:
            extra = {"fingerprint": hit.fingerprint, "matches": hit.matches} if collapse else {}
            click.echo(json.dumps(hit.memory.to_dict() | extra, ensure_ascii=False))
        return
    shown = [
        msgspec.structs.replace(h.memory, content=f"({h.matches}x) {h.memory.content}")
        if collapse else h.memory
        for h in hits
    ]  # fmt: skip
    console.print(_table(shown, f'search "{query}"' + (", one per group" if collapse else "")))


@cli.command()
@_store_options
@click.argument("ids", nargs=-1)
@_filter_options
@click.option("--yes", is_flag=True, help="Delete by filters without asking.")
def delete(
    backend: str | None,
    data_dir: str | None,
    ids: tuple[str, ...],
    tags: tuple[str, ...],
    yes: bool,
    **filters: Any,
) -> None:
    """Delete memories for good: by id, every memory matching the filters, or both."""
    chosen = {k: v for k, v in filters.items() if v is not None}
    if tags:
        chosen["tags"] = list(tags)
    if not ids and not chosen:
        raise click.UsageError("give the ids to delete, or a filter (--session, --tag, ...)")
    if chosen and not ids and not yes:
        which = ", ".join(f"{k}={v}" for k, v in chosen.items())
        click.confirm(f"delete every memory with {which}?", abort=True)
    with _errors(), _collector(backend, data_dir, existing=True) as collector:
        for bound in ("since", "until"):
            if bound in chosen:
                chosen[bound] = _point_in_time(chosen[bound], f"--{bound}")
        deleted = collector.delete(list(ids) if ids else None, **chosen)
    click.echo(f"deleted {deleted} {'memory' if deleted == 1 else 'memories'}")


@cli.command()
@_store_options
@click.option("--category", help="Only this category.")
@click.option("--limit", default=20, show_default=True, help="Most memories to show.")
def recent(backend: str | None, data_dir: str | None, category: str | None, limit: int) -> None:
    """Show the newest stored memories."""
    with _errors(), _collector(backend, data_dir, existing=True) as collector:
        console.print(_table(collector.recent(limit, category), "recent memories"))


@cli.command()
@_store_options
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(
    backend: str | None, data_dir: str | None, watch: bool, interval: float, as_json: bool
) -> None:
    """Show what is stored, per category (and a server's own stats for http:// stores)."""
    from rich.live import Live

    with _errors(), _collector(backend, data_dir, existing=True) as collector:
        if as_json:
            click.echo(json.dumps(_stats_snapshot(collector), indent=2))
            return
        if not watch:
            console.print(_stats_view(collector, None))
            return
        previous: tuple[float, int] | None = None
        # Ctrl-C ends the loop between refreshes: as a KeyboardInterrupt it could land inside
        # a read holding a lock, which closing the collector would then wait for forever.
        stop = threading.Event()
        interrupted = signal.signal(signal.SIGINT, lambda *_: stop.set())
        # A live view redraws a terminal in place; piped or logged, nothing would show until
        # the end, so there each refresh is printed in turn.
        with ExitStack() as stack:
            stack.callback(signal.signal, signal.SIGINT, interrupted)
            show: Callable[[Any], None] = console.print
            if console.is_terminal:
                live = stack.enter_context(Live(console=console, auto_refresh=False))
                show = partial(live.update, refresh=True)
            while not stop.is_set():
                view = _stats_view(collector, previous)
                previous = (time.monotonic(), collector.count())
                show(view)
                stop.wait(interval)
