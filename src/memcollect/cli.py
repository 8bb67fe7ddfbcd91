"""The `memcollect` command: run the demo, add, recall and inspect memories."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

try:
    import click
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    HAVE_CLI = True
except ImportError:  # pragma: no cover - exercised by users without the extra
    HAVE_CLI = False

from .collector import MemoryCollector
from .errors import MemcollectError
from .model import Memory


def main() -> None:
    """Entry point of the `memcollect` console script."""
    if not HAVE_CLI:
        sys.stderr.write(
            "memcollect: the command line needs the cli extra: pip install 'memcollect[cli]'\n"
        )
        raise SystemExit(2)
    cli()


if HAVE_CLI:
    console = Console()

    def _collector(backend: str | None, data_dir: str | None, **fields: Any) -> MemoryCollector:
        if backend:
            fields["backend"] = backend
        if data_dir:
            fields["data_dir"] = data_dir
        return MemoryCollector(**fields)

    @contextmanager
    def _errors() -> Iterator[None]:
        try:
            yield
        except MemcollectError as exc:
            raise click.ClickException(str(exc)) from None

    def _table(memories: list[Memory], title: str) -> Table:
        table = Table(title=title, show_lines=False)
        for column in ("id", "category", "priority", "content", "agent"):
            table.add_column(column, overflow="fold")
        for m in memories:
            table.add_row(m.id, m.category, m.priority, m.content, m.agent or "")
        return table

    backend_option = click.option(
        "--backend", envvar="MEMCOLLECT_BACKEND", help="Backend URL (default: SQLite in data dir)."
    )
    data_dir_option = click.option(
        "--data-dir", envvar="MEMCOLLECT_DATA_DIR", help="Data directory (default ./.memcollect)."
    )

    def _store_options(func: Callable[..., Any]) -> Callable[..., Any]:
        return backend_option(data_dir_option(func))

    @click.group()
    @click.version_option(package_name="memcollect")
    def cli() -> None:
        """Collect memories for AI agents, store them durably, recall them by search."""

    @cli.command()
    @_store_options
    @click.option("--count", default=5000, show_default=True, help="Memories to collect.")
    def demo(backend: str | None, data_dir: str | None, count: int) -> None:
        """Simulate agents collecting memories, then show stats and a few recalls."""
        from .demo import AGENTS, run_agents

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

    @cli.command()
    @_store_options
    @click.argument("category")
    @click.argument("content")
    @click.option("--priority", help="low, medium, high or critical.")
    @click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
    @click.option("--project")
    @click.option("--agent")
    @click.option("--session")
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
            memory_id = collector.collect(category, content, meta, **labels)
            if not collector.flush():
                raise click.ClickException("the memory could not be stored in time")
        click.echo(memory_id)

    @cli.command()
    @_store_options
    @click.argument("memory_id")
    def get(backend: str | None, data_dir: str | None, memory_id: str) -> None:
        """Print one memory as JSON."""
        with _errors(), _collector(backend, data_dir) as collector:
            memory = collector.get(memory_id)
        if memory is None:
            raise click.ClickException(f"no memory with id {memory_id!r}")
        click.echo(json.dumps(memory.to_dict(), ensure_ascii=False, indent=2))

    @cli.command()
    @_store_options
    @click.argument("query", default="")
    @click.option("--category")
    @click.option("--tag", "tags", multiple=True)
    @click.option("--project")
    @click.option("--limit", default=10, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
    def search(
        backend: str | None,
        data_dir: str | None,
        query: str,
        tags: tuple[str, ...],
        as_json: bool,
        **filters: Any,
    ) -> None:
        """Search stored memories."""
        with _errors(), _collector(backend, data_dir) as collector:
            hits = collector.search(query, tags=list(tags), **filters)
        if as_json:
            for memory in hits:
                click.echo(json.dumps(memory.to_dict(), ensure_ascii=False))
        else:
            console.print(_table(hits, f'search "{query}"'))

    @cli.command()
    @_store_options
    @click.option("--category")
    @click.option("--limit", default=20, show_default=True)
    def recent(backend: str | None, data_dir: str | None, category: str | None, limit: int) -> None:
        """Show the newest stored memories."""
        with _errors(), _collector(backend, data_dir) as collector:
            console.print(_table(collector.recent(limit, category), "recent memories"))

    @cli.command()
    @_store_options
    def stats(backend: str | None, data_dir: str | None) -> None:
        """Show what is stored."""
        with _errors(), _collector(backend, data_dir) as collector:
            table = Table(title="stored memories")
            table.add_column("category")
            table.add_column("count", justify="right")
            for memory_category, n in sorted(collector.count_by_category().items()):
                table.add_row(memory_category, f"{n:,}")
            table.add_row("[bold]all[/]", f"{collector.count():,}")
            console.print(table)

    @cli.command()
    @_store_options
    @click.option("--timeout", default=300.0, show_default=True, help="Seconds to store it in.")
    def recover(backend: str | None, data_dir: str | None, timeout: float) -> None:
        """Store what stopped processes left in the spool of a data directory."""
        with _errors(), _collector(backend, data_dir, durability="spool") as collector:
            found = collector.stats().spool_pending
            stored = collector.flush(timeout=timeout)
            stats = collector.stats()
        click.echo(
            f"recovered {stats.replayed} memories from the spool ({found} found) into "
            f"{collector.backend.url}; corrupt stretches skipped: {stats.corrupt_skipped}"
        )
        if not stored:
            raise click.ClickException(
                "not everything could be stored in time: the rest stays in the spool; "
                "run recover again once the store is reachable"
            )

    @cli.command("config")
    @_store_options
    def show_config(backend: str | None, data_dir: str | None) -> None:
        """Print the configuration in force (profile, file, environment)."""
        from .config import load_config

        fields: dict[str, Any] = {}
        if backend:
            fields["backend"] = backend
        if data_dir:
            fields["data_dir"] = data_dir
        with _errors():
            config = load_config(**fields)
        click.echo(json.dumps({"backend_url": config.backend_url} | _builtins(config), indent=2))

    def _builtins(config: Any) -> dict[str, Any]:
        import msgspec

        return msgspec.to_builtins(config)  # type: ignore[no-any-return]

    def _stats_table(stats: dict[str, Any]) -> Table:
        table = Table(title="collector stats")
        table.add_column("stat")
        table.add_column("value", justify="right")
        for key in ("accepted", "stored", "retried", "dead_lettered", "dropped", "batches"):
            table.add_row(key, f"{stats[key]:,}")
        for key in ("batch_write_latency", "accept_to_stored_latency"):
            lat = stats[key]
            table.add_row(key, f"p50 {lat['p50_ms']:.2f} ms · p99 {lat['p99_ms']:.2f} ms")
        table.add_row("throughput", f"{stats['throughput_per_s']:,.0f}/s")
        return table
