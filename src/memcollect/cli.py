"""The `memcollect` command: run the demo, add, recall and inspect memories."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

try:
    import click
    from rich import box
    from rich.console import Console, Group, RenderableType
    from rich.padding import Padding
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table
    from rich.text import Text

    HAVE_CLI = True
except ImportError:  # pragma: no cover - exercised by users without the extra
    HAVE_CLI = False

import msgspec

from .collector import MemoryCollector
from .config import load_config
from .errors import MemcollectError, ValidationError
from .model import Memory
from .validate import make_memory

_TIME_HELP = (
    "Only memories {} this time: an age (30m, 2h, 7d), an ISO date or time "
    "(2026-11-25, 2026-11-25T14:00:00+00:00; local time without an offset) or epoch seconds."
)
# Below this many columns, memories are listed one under another instead of in a table.
_WIDE_TABLE = 100

_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _point_in_time(value: str | None, option: str) -> float | None:
    """Epoch seconds for a --since/--until value (see _TIME_HELP), or a one-line error."""
    if value is None:
        return None
    text = value.strip()
    unit = _AGE_UNITS.get(text[-1:].lower())
    try:
        if unit is not None and text[:-1]:
            return time.time() - float(text[:-1]) * unit
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValidationError(
            f"{option} {value!r} is not a time: give an age (30m, 2h, 7d), an ISO date or "
            "time (2026-11-25T14:00:00), or epoch seconds"
        ) from None


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
        from .backends.sqlite import parse_sqlite_url

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

    def _table(memories: list[Memory], title: str) -> RenderableType:
        this_year = time.localtime().tm_year

        def created(m: Memory) -> str:
            when = time.localtime(m.created_at)
            return time.strftime("%m-%d %H:%M" if when.tm_year == this_year else "%Y-%m-%d", when)

        if not memories:
            return Text(f"{title}: no memories", style="dim")
        # Memories are shown as Text, never as markup: "list[int]" or "[/]" in a bug report
        # must print as written.
        if console.width < _WIDE_TABLE:
            # Too narrow for columns beside the content: a header line per memory, then the
            # content indented below it, as wide as the terminal.
            lines: list[RenderableType] = [Text(title, style="bold")]
            for m in memories:
                header = f"  {m.category}  {m.priority}  {created(m)}"
                header += f"  {m.agent}" if m.agent else ""
                lines.append(Text.assemble((m.id, "cyan"), header))
                lines.append(Padding(Text(m.content, overflow="fold"), (0, 0, 0, 4), expand=False))
            return Group(*lines)
        table = Table(title=Text(title), box=box.SIMPLE_HEAD)
        # An id is copied into `memcollect get`: it must stay on one line.
        table.add_column("id", no_wrap=True)
        table.add_column("category", no_wrap=True)
        table.add_column("priority", no_wrap=True)
        table.add_column("created", no_wrap=True)
        table.add_column("content", overflow="fold", ratio=1)
        with_agent = any(m.agent for m in memories)
        if with_agent:
            table.add_column("agent", overflow="fold")
        for m in memories:
            row = [m.id, m.category, m.priority, created(m), m.content]
            row += [m.agent or ""] if with_agent else []
            table.add_row(*(Text(cell) for cell in row))
        return table

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
            click.option("--category"),
            click.option(
                "--tag", "tags", multiple=True, help="A tag the memories hold (repeatable)."
            ),
            click.option("--project"),
            click.option("--agent"),
            click.option("--session"),
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
        with _errors(), _collector(backend, data_dir, existing=True) as collector:
            for bound in ("since", "until"):
                filters[bound] = _point_in_time(filters[bound], f"--{bound}")
            hits = collector.search(query, tags=list(tags), **filters)
        if as_json:
            for memory in hits:
                click.echo(json.dumps(memory.to_dict(), ensure_ascii=False))
        else:
            console.print(_table(hits, f'search "{query}"'))

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
    @click.option("--category")
    @click.option("--limit", default=20, show_default=True)
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
            with Live(console=console, auto_refresh=False) as live:
                try:
                    while True:
                        view = _stats_view(collector, previous)
                        previous = (time.monotonic(), collector.count())
                        live.update(view, refresh=True)
                        time.sleep(interval)
                except KeyboardInterrupt:
                    pass

    def _stats_snapshot(collector: MemoryCollector) -> dict[str, Any]:
        by_category = collector.count_by_category()
        snapshot: dict[str, Any] = {"total": sum(by_category.values()), "by_category": by_category}
        if collector.backend.supports_semantic:
            snapshot["pending_embeddings"] = collector.stats().pending_embeddings
        server = _server_stats(collector)
        if server is not None:
            snapshot["server"] = server
        return snapshot

    def _server_stats(collector: MemoryCollector) -> dict[str, Any] | None:
        from .backends.remote import RemoteBackend

        store = collector.backend
        if not isinstance(store, RemoteBackend):
            return None
        return store.server_stats()

    def _stats_view(collector: MemoryCollector, previous: tuple[float, int] | None) -> Any:
        from rich.console import Group

        by_category = collector.count_by_category()
        total = sum(by_category.values())
        title = f"stored memories in {collector.backend.url}"
        # As wide as its title: a URL wrapped inside a narrow two-column table is unreadable.
        table = Table(title=Text(title), min_width=min(len(title), console.width))
        table.add_column("category")
        table.add_column("count", justify="right")
        for memory_category, n in sorted(by_category.items(), key=lambda kv: -kv[1]):
            table.add_row(memory_category, f"{n:,}")
        table.add_row("[bold]all[/]", f"[bold]{total:,}[/]")
        parts: list[Any] = [table]
        if collector.backend.supports_semantic:
            parts.append(f"waiting to embed: {collector.stats().pending_embeddings:,}")
        if previous is not None:
            elapsed = max(time.monotonic() - previous[0], 1e-9)
            parts.append(f"stored {max(total - previous[1], 0) / elapsed:,.0f}/s")
        server = _server_stats(collector)
        if server is not None:
            parts.append(_stats_table(server["stats"]))
            health = server["health"]
            parts.append(
                f"server health: [bold]{health['status']}[/] {'; '.join(health['reasons'])}"
            )
        return Group(*parts)

    @cli.command("export")
    @_store_options
    @click.argument("output", type=click.File("w", encoding="utf-8"), default="-")
    @click.option("--category", help="Only this category.")
    def export_memories(
        backend: str | None, data_dir: str | None, output: Any, category: str | None
    ) -> None:
        """Write every stored memory as JSON lines (oldest first) to OUTPUT (default stdout)."""
        encoder = msgspec.json.Encoder()
        written = 0
        with _errors(), _collector(backend, data_dir, existing=True) as collector:
            store = collector.backend
            total = collector.count(category)
            with _progress(output) as progress:
                task = progress.add_task("export", total=total)
                after: str | None = None
                while True:
                    page = store.scan(after, 1000)
                    if not page:
                        break
                    after = page[-1].id
                    lines = [encoder.encode(m) for m in page if category in (None, m.category)]
                    if lines:
                        output.write(b"\n".join(lines).decode() + "\n")
                    written += len(lines)
                    progress.update(task, completed=written)
        click.echo(f"exported {written:,} memories", err=True)

    @cli.command("import")
    @_store_options
    @click.argument("source", type=click.File("rb"), default="-")
    def import_memories(backend: str | None, data_dir: str | None, source: Any) -> None:
        """Store memories from JSON lines (as export writes them); ids are kept, so importing
        the same file twice stores each memory once."""
        from .validate import memory_from_record

        imported, skipped, first_error = 0, 0, ""
        size = _size_of(source)
        with _errors(), _collector(backend, data_dir, durability="memory") as collector:
            max_bytes = collector.config.max_content_bytes
            with _progress(None) as progress:
                task = progress.add_task("import", total=size)
                batch: list[Memory] = []
                for number, line in enumerate(source, 1):
                    progress.advance(task, len(line))
                    if not line.strip():
                        continue
                    try:
                        batch.append(memory_from_record(msgspec.json.decode(line), max_bytes))
                    except (msgspec.DecodeError, MemcollectError) as exc:
                        skipped += 1
                        first_error = first_error or f"line {number}: {exc}"
                        continue
                    if len(batch) >= 1000:
                        imported += len(collector.collect_checked(batch))
                        batch = []
                imported += len(collector.collect_checked(batch))
                if not collector.flush(timeout=None):
                    raise click.ClickException("the memories could not be stored")
        click.echo(f"imported {imported:,} memories", err=True)
        if skipped:
            raise click.ClickException(f"skipped {skipped} invalid lines (first: {first_error})")

    def _size_of(stream: Any) -> int | None:
        import os

        try:
            return os.fstat(stream.fileno()).st_size or None
        except (OSError, ValueError, AttributeError):
            return None

    def _progress(output: Any) -> Progress:
        # On stderr, so that `export > file` and pipes get only the JSON lines.
        quiet = output is not None and getattr(output, "name", "") == "<stdout>"
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(stderr=True, quiet=quiet or not sys.stderr.isatty()),
        )

    @cli.command("dead-letters")
    @_store_options
    @click.option("--retry", is_flag=True, help="Queue them all again and store them.")
    @click.option("--limit", default=50, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
    def dead_letters(
        backend: str | None, data_dir: str | None, retry: bool, limit: int, as_json: bool
    ) -> None:
        """List the memories the store refused for good, or --retry them."""
        with _errors(), _collector(backend, data_dir, existing=True) as collector:
            if retry:
                queued = collector.retry_dead_letters()
                collector.flush(timeout=60)
                again = collector.stats().dead_lettered
                click.echo(f"queued {queued} dead letters again; {again} were refused again")
                if again:
                    raise SystemExit(1)
                return
            letters = collector.dead_letters(limit)
        if as_json:
            for letter in letters:
                click.echo(json.dumps(msgspec.to_builtins(letter), ensure_ascii=False))
            return
        table = Table(title=f"dead letters ({len(letters)} shown)")
        table.add_column("id", no_wrap=True)
        for column in ("category", "failed", "error", "content"):
            table.add_column(column, overflow="fold")
        for letter in letters:
            failed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter.failed_at))
            m = letter.memory
            row = (m.id, m.category, failed, letter.error, m.content[:200])
            table.add_row(*(Text(cell) for cell in row))
        console.print(table)

    @cli.command()
    @_store_options
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
    @click.option("--port", default=8765, show_default=True, type=int)
    @click.option("--max-body-bytes", default=8 << 20, show_default=True, type=int)
    @click.option("--max-batch", default=5000, show_default=True, type=int)
    @click.option("--log-level", default="info", show_default=True)
    def serve(
        *,
        backend: str | None,
        data_dir: str | None,
        host: str,
        port: int,
        max_body_bytes: int,
        max_batch: int,
        log_level: str,
    ) -> None:
        """Run the memcollect server: the HTTP API, /metrics and the dashboard at /.

        Set MEMCOLLECT_TOKEN to require `Authorization: Bearer <token>` (never on the command
        line, where other users can read it).
        """
        try:
            from .server.app import serve as run_server
        except ImportError:
            raise click.ClickException(
                "the server needs the server extra: pip install 'memcollect[server]'"
            ) from None
        fields: dict[str, Any] = {}
        if backend:
            fields["backend"] = backend
        if data_dir:
            fields["data_dir"] = data_dir
        with _errors():
            from .config import load_config

            load_config(**fields)  # a bad setting fails here, in one line, not in the server
            import logging

            for handler in logging.getLogger("memcollect").handlers:
                handler.setLevel(logging.WARNING)  # a server's warnings are for its log
            if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(
                "MEMCOLLECT_TOKEN"
            ):
                console.print(
                    f"[yellow]warning:[/] serving on {host} without MEMCOLLECT_TOKEN: anyone "
                    "who reaches this port can read and write memories",
                    highlight=False,
                )
            run_server(
                host,
                port,
                log_level=log_level,
                max_body_bytes=max_body_bytes,
                max_batch=max_batch,
                **fields,
            )

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
        if stats.get("pending_embeddings"):
            table.add_row("waiting to embed", f"{stats['pending_embeddings']:,}")
        if stats.get("deleted"):
            table.add_row("deleted", f"{stats['deleted']:,}")
        return table
