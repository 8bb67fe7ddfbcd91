"""Commands that move or mind the store: export, import, dead letters, serve, recover, config."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click
import msgspec
from rich.table import Table
from rich.text import Text

from ..errors import MemcollectError
from ..model import Memory
from .common import _collector, _errors, _store_options, cli, console
from .render import _builtins, _progress, _size_of


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
    from ..validate import memory_from_record

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


@cli.command("dead-letters")
@_store_options
@click.option("--retry", is_flag=True, help="Queue them all again and store them.")
@click.option("--limit", default=50, show_default=True, help="Most to list.")
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
@click.option("--http", is_flag=True, help="Serve streamable HTTP instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (--http).")
@click.option("--port", default=8766, show_default=True, type=int, help="Port (--http).")
def mcp(*, backend: str | None, data_dir: str | None, http: bool, host: str, port: int) -> None:
    """Serve the Model Context Protocol: tools to remember, recall, get, forget and more.

    Over stdio by default, which MCP clients launch; over streamable HTTP at /mcp with
    --http, where MEMCOLLECT_TOKEN, if set, is required as a Bearer token.
    """
    try:
        from ..integrations.mcp import serve_mcp
    except ImportError:
        raise click.ClickException(
            "the MCP server needs the mcp extra: pip install 'memcollect[mcp]'"
        ) from None
    fields = _store_fields(backend, data_dir)
    token = os.environ.get("MEMCOLLECT_TOKEN", "")
    if http and host not in ("127.0.0.1", "localhost", "::1") and not token:
        raise click.ClickException(
            f"serving MCP on {host} needs MEMCOLLECT_TOKEN: without it anyone who reaches "
            "the port could read and delete memories"
        )
    with _errors():
        from ..collector import MemoryCollector

        if http:
            _check_port(host, port)
        # A long-running server keeps the spool (the default durability), as `serve` does.
        with MemoryCollector(**fields) as collector:
            serve_mcp(collector, http=http, host=host, port=port, token=token)


@cli.command()
@_store_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--max-body-bytes",
    default=8 << 20,
    show_default=True,
    type=int,
    help="Largest request body, also after gzip inflation.",
)
@click.option(
    "--max-batch", default=5000, show_default=True, type=int, help="Most memories a request holds."
)
@click.option(
    "--log-level", default="info", show_default=True, help="The access and error log's level."
)
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
        from ..server.app import serve as run_server
    except ImportError:
        raise click.ClickException(
            "the server needs the server extra: pip install 'memcollect[server]'"
        ) from None
    fields = _store_fields(backend, data_dir)
    with _errors():
        from ..config import load_config

        load_config(**fields)  # a bad setting fails here, in one line, not in the server
        _check_port(host, port)
        import logging

        for handler in logging.getLogger("memcollect").handlers:
            handler.setLevel(logging.WARNING)  # a server's warnings are for its log
        if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get("MEMCOLLECT_TOKEN"):
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


def _check_port(host: str, port: int) -> None:
    """Refuse in one line an address this process cannot listen on (uvicorn would log it
    after starting up, and with an errno)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise click.ClickException(
            f"--host {host} is not an address to listen on ({exc}): use an address of this "
            "machine, such as 127.0.0.1 or 0.0.0.0"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): stop what serves "
                "there, or choose another --port"
            ) from None


@cli.command()
@_store_options
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to store it in.")
def recover(backend: str | None, data_dir: str | None, timeout: float) -> None:
    """Store what stopped processes left in the spool of a data directory."""
    with _errors():
        from ..config import load_config
        from ..spool_files import has_segments
        from ..spooling import spool_root

        spool = spool_root(load_config(**_store_fields(backend, data_dir)))
        if not has_segments(spool):
            # Nothing left: no collector, so no store is made where none was.
            click.echo(f"nothing to recover: no spool segments in {spool}")
            return
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
    from ..config import load_config

    fields = _store_fields(backend, data_dir)
    with _errors():
        config = load_config(**fields)
    click.echo(json.dumps({"backend_url": config.backend_url} | _builtins(config), indent=2))


def _store_fields(backend: str | None, data_dir: str | None) -> dict[str, Any]:
    """The collector fields the --backend and --data-dir options name."""
    fields: dict[str, Any] = {}
    if backend:
        fields["backend"] = backend
    if data_dir:
        fields["data_dir"] = data_dir
    return fields
