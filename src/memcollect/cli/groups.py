"""`memcollect groups`: what keeps happening, and one group's members."""

from __future__ import annotations

import json
import time

import click
import msgspec
from rich import box
from rich.console import Group as RichGroup
from rich.console import RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ..groups import GROUP_ORDERS, Group
from .common import (
    _TIME_HELP,
    _WIDE_TABLE,
    _collector,
    _errors,
    _store_options,
    cli,
    console,
)
from .render import _table


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def _groups_table(groups: list[Group], title: str, period: bool) -> RenderableType:
    if not groups:
        return Text(f"{title}: no groups", style="dim")
    if console.width < _WIDE_TABLE:
        # A header line per group, then what it is, indented, as wide as the terminal.
        lines: list[RenderableType] = [Text(title, style="bold")]
        for g in groups:
            count = f"{g.count}x" + (f" ({g.in_period} in period)" if period else "")
            header = f"  {count}  {g.category}  {g.priority}  last {_when(g.last_seen)}"
            lines.append(Text.assemble((g.fingerprint, "cyan"), header))
            lines.append(Padding(Text(g.representative.content, overflow="fold"), (0, 0, 0, 4)))
        return RichGroup(*lines)
    table = Table(title=Text(title), box=box.SIMPLE_HEAD)
    table.add_column("count", justify="right", no_wrap=True)
    if period:
        table.add_column("in period", justify="right", no_wrap=True)
    table.add_column("category", no_wrap=True)
    table.add_column("priority", no_wrap=True)
    table.add_column("last seen", no_wrap=True)
    table.add_column("first seen", no_wrap=True)
    table.add_column("what", overflow="fold", ratio=1)
    # Copied into `memcollect groups FINGERPRINT`: one line.
    table.add_column("fingerprint", no_wrap=True)
    for g in groups:
        counts = [str(g.count), *([str(g.in_period)] if period else [])]
        seen = [_when(g.last_seen), _when(g.first_seen)]
        row = [*counts, g.category, g.priority, *seen, g.representative.content, g.fingerprint]
        table.add_row(*(Text(cell) for cell in row))
    return table


@cli.command()
@_store_options
@click.argument("fingerprint", required=False)
@click.option("--category", help="Only this category.")
@click.option("--project", help="Only memories of this project.")
@click.option("--agent", help="Only memories of this agent.")
@click.option("--since", help=_TIME_HELP.format("from"))
@click.option("--until", help=_TIME_HELP.format("before"))
@click.option(
    "--order",
    type=click.Choice(GROUP_ORDERS),
    default="count",
    show_default=True,
    help="Most memories, newest occurrence, first seen in the period, or most growth "
    "against the period before.",
)
@click.option("--limit", default=20, show_default=True, help="Most groups (or members) to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def groups(
    backend: str | None,
    data_dir: str | None,
    fingerprint: str | None,
    as_json: bool,
    limit: int,
    **filters: str | None,
) -> None:
    """Show what keeps happening: memories grouped by fingerprint; with a FINGERPRINT, that
    group's newest memories and its count per day."""
    with _errors(), _collector(backend, data_dir, existing=True) as collector:
        if fingerprint is not None:
            detail = collector.group(fingerprint, limit=limit)
            if detail is None:
                raise click.ClickException(f"no stored memory has the fingerprint {fingerprint!r}")
            if as_json:
                click.echo(json.dumps(msgspec.to_builtins(detail), ensure_ascii=False))
                return
            console.print(_groups_table([detail.group], "group", period=False))
            days = ", ".join(
                f"{time.strftime('%m-%d', time.gmtime(d))}: {n}" for d, n in detail.daily[-14:]
            )
            console.print(Text(f"per day (UTC): {days}"))
            console.print(_table(detail.members, "newest members"))
            return
        found = collector.groups(limit=limit, **filters)  # type: ignore[arg-type]
    if as_json:
        for group in found:
            click.echo(json.dumps(msgspec.to_builtins(group), ensure_ascii=False))
        return
    period = (
        filters["since"] is not None or filters["until"] is not None or filters["order"] == "rising"
    )
    console.print(_groups_table(found, f"groups by {filters['order']}", period))


@cli.command()
@_store_options
@click.option("--since", default="7d", show_default=True, help=_TIME_HELP.format("from"))
@click.option("--until", help=_TIME_HELP.format("before"))
@click.option("--category", help="Only this category.")
@click.option("--project", help="Only memories of this project.")
@click.option("--agent", help="Only memories of this agent.")
@click.option("--limit", default=10, show_default=True, help="Most groups per list.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["md", "html", "json"]),
    default="md",
    show_default=True,
    help="Markdown, one self-contained HTML page with charts, or JSON.",
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="Write it to this file, not stdout."
)
def report(
    backend: str | None,
    data_dir: str | None,
    fmt: str,
    output: str | None,
    limit: int,
    **filters: str | None,
) -> None:
    """Write a report of a period: what recurred most, what is new, what is rising, by
    category, project and agent, dead letters and the collector's health."""
    with _errors(), _collector(backend, data_dir, existing=True) as collector:
        found = collector.report(limit=limit, **filters)
    text = {"md": found.to_markdown, "html": found.to_html, "json": found.to_json}[fmt]()
    if output is None:
        click.echo(text)
        return
    try:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write the report to {output}: {exc.strerror}") from None
    click.echo(f"report written to {output}", err=True)
