"""How the commands show memories and stats: tables, panels, progress."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import msgspec
from rich import box
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from ..collector import MemoryCollector
from ..model import Memory
from .common import _WIDE_TABLE, console


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
    from ..backends.remote import RemoteBackend

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
        parts.append(f"server health: [bold]{health['status']}[/] {'; '.join(health['reasons'])}")
    return Group(*parts)


def _size_of(stream: Any) -> int | None:

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


def _builtins(config: Any) -> dict[str, Any]:

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
