"""A Report rendered as Markdown, or as one HTML page that needs nothing else to be read."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Report, ReportGroup, Tally

__all__ = ["html_page", "markdown"]

# Contents are shown up to this many characters in a table cell.
_SHOWN = 160


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def _day(seconds: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def _change(now: int, before: int) -> str:
    if before == 0:
        return "new" if now else "-"
    return f"{(now - before) / before:+.0%}"


def _sections(report: Report) -> list[tuple[str, str, list[ReportGroup]]]:
    s = report.summary
    return [
        ("top", "What recurred most", s.top),
        ("new", "New in the period", s.new),
        ("rising", "Rising against the period before", s.rising),
    ]


def _breakdowns(report: Report) -> list[tuple[str, list[Tally]]]:
    s = report.summary
    return [("category", s.by_category), ("project", s.by_project), ("agent", s.by_agent)]


# --- Markdown ------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return _short(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")


def markdown(report: Report) -> str:
    """The report as Markdown: a heading per section, a table per list."""
    s = report.summary
    out = [
        f"# memcollect report: {_when(report.since)} to {_when(report.until)}",
        "",
        f"Store `{report.backend}`, made {_when(report.generated_at)}.",
        "",
        f"- **{s.total}** memories in the period, {s.total_before} in the period before "
        f"({_change(s.total, s.total_before)}), in {s.groups} groups, {s.new_groups} of them new.",
        f"- Health: **{report.health.status}**"
        + (f" ({'; '.join(report.health.reasons)})" if report.health.reasons else "")
        + ".",
        f"- Dead letters kept: **{report.dead_letters}**.",
        "",
    ]
    for _, title, groups in _sections(report):
        out += [f"## {title}", ""]
        if not groups:
            out += ["None.", ""]
            continue
        out += [
            "| in period | before | change | category | priority | last seen | what "
            "| fingerprint |",
            "|---:|---:|---:|---|---|---|---|---|",
        ]
        for rg in groups:
            g = rg.group
            out.append(
                f"| {g.in_period} | {g.before_period} | {_change(g.in_period, g.before_period)} "
                f"| {g.category} | {g.priority} | {_when(g.last_seen)} "
                f"| {_md_cell(g.representative.content)} | `{g.fingerprint}` |"
            )
        out.append("")
    for name, tallies in _breakdowns(report):
        out += [f"## By {name}", ""]
        if not tallies:
            out += [f"No memory names a {name}.", ""]
            continue
        out += [f"| {name} | in period | before | change |", "|---|---:|---:|---:|"]
        out += [f"| {_md_cell(t.name)} | {t.count} | {t.before} | {_change(t.count, t.before)} |"
                for t in tallies]  # fmt: skip
        out.append("")
    out += ["## Per day", "", "| day (UTC) | memories |", "|---|---:|"]
    out += [f"| {_day(d)} | {n} |" for d, n in s.daily if d >= report.since - 86400]
    out += ["", "## Dead letters", ""]
    if not report.dead_letter_samples:
        out += ["None.", ""]
    else:
        out += ["| failed | category | what | error |", "|---|---|---|---|"]
        out += [f"| {_when(dl.failed_at)} | {dl.memory.category} | {_md_cell(dl.memory.content)} "
                f"| {_md_cell(dl.error)} |" for dl in report.dead_letter_samples]  # fmt: skip
        out += ["", "Queue them again with `memcollect dead-letters --retry`.", ""]
    st = report.stats
    out += [
        "## The collector",
        "",
        f"Up {st.uptime_s:.0f} s: {st.accepted} accepted, {st.stored} stored, "
        f"{st.dead_lettered} dead-lettered, {st.dropped} dropped, {st.queue_depth} queued; "
        f"circuit {st.circuit}.",
        "",
    ]
    return "\n".join(out)


# --- HTML ----------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:16px;color:#1d2433}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#5b6475}.cards{display:grid;gap:12px;margin:16px 0;
grid-template-columns:repeat(auto-fill,minmax(150px,1fr))}
.card{border:1px solid #d9dee8;border-radius:8px;padding:10px 14px}
.card strong{display:block;font-size:22px}.ok{color:#18794e}.degraded{color:#a35200}
.failing{color:#c62828}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceff4;vertical-align:top}
th{font-weight:600;color:#5b6475}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.what{word-break:break-word}code{font-size:12px;color:#5b6475}
.wrap{overflow-x:auto}svg{display:block}svg.days{width:100%;height:90px}
@media (max-width:640px){.wide{display:none}.groups th{display:none}
.groups tr{display:flex;flex-wrap:wrap;align-items:center;gap:0 10px;padding:6px 0;
border-bottom:1px solid #eceff4}.groups td{border:0;padding:2px 0}
.groups td.what{order:-1;flex-basis:100%;font-weight:500}
.groups td[data-label]::after{content:" " attr(data-label);color:#5b6475}}
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _bars(
    series: list[tuple[float, int]], since: float, width: int, height: int, css: str = ""
) -> str:
    """An SVG bar per day: the period before in grey, the period itself in blue."""
    if not series:
        return ""
    top = max(n for _, n in series) or 1
    step = width / len(series)
    bars = []
    for i, (day, n) in enumerate(series):
        h = max(1.0, (height - 2) * n / top) if n else 0.0
        color = "#3b6fd8" if day + 86400 > since else "#b8c0cf"
        bars.append(
            f'<rect x="{i * step + 0.5:.1f}" y="{height - h:.1f}" width="{max(step - 1, 1):.1f}" '
            f'height="{h:.1f}" fill="{color}"><title>{_day(day)}: {n}</title></rect>'
        )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'preserveAspectRatio="none" class="{css}" aria-label="memories per day">'
        f"{''.join(bars)}</svg>"
    )


def _group_table(groups: list[ReportGroup], since: float) -> str:
    if not groups:
        return '<p class="muted">None.</p>'
    rows = []
    for rg in groups:
        g = rg.group
        rows.append(
            f'<tr><td class="n" data-label="in period">{g.in_period}</td>'
            f'<td class="n wide">{g.before_period}</td>'
            f'<td class="n">{_change(g.in_period, g.before_period)}</td>'
            f"<td>{_bars(rg.daily, since, 90, 22)}</td><td>{_esc(g.category)}</td>"
            f'<td class="wide">{_esc(g.priority)}</td><td class="wide">{_when(g.last_seen)}</td>'
            f'<td class="what">{_esc(_short(g.representative.content))}</td>'
            f'<td class="wide"><code>{_esc(g.fingerprint)}</code></td></tr>'
        )
    return (
        '<div class="wrap"><table class="groups"><tr><th>in period</th><th class="wide">before'
        '</th><th>change</th><th>per day</th><th>category</th><th class="wide">priority</th>'
        '<th class="wide">last seen</th><th>what</th>'
        f'<th class="wide">fingerprint</th></tr>{"".join(rows)}</table></div>'
    )


def _tally_table(name: str, tallies: list[Tally]) -> str:
    if not tallies:
        return f'<p class="muted">No memory names a {name}.</p>'
    top = max(t.count for t in tallies) or 1
    rows = "".join(
        f'<tr><td>{_esc(t.name)}</td><td class="n">{t.count}</td><td class="n">{t.before}</td>'
        f'<td class="n">{_change(t.count, t.before)}</td>'
        '<td class="wide"><svg width="160" height="10">'
        f'<rect width="{160 * t.count / top:.1f}" height="10" fill="#3b6fd8"/></svg></td></tr>'
        for t in tallies
    )
    return (
        f'<div class="wrap"><table><tr><th>{name}</th><th>in period</th><th>before</th>'
        f'<th>change</th><th class="wide"></th></tr>{rows}</table></div>'
    )


def html_page(report: Report) -> str:
    """The report as one HTML page: inline styles and SVG charts, no script, no network."""
    s, health, st = report.summary, report.health, report.stats
    reasons = "".join(f"<li>{_esc(r)}</li>" for r in health.reasons)
    cards = [
        (f"{s.total}", f"memories in the period ({_change(s.total, s.total_before)})", ""),
        (f"{s.groups}", "groups seen in the period", ""),
        (f"{s.new_groups}", "of them new", ""),
        (health.status, "health", health.status),
        (f"{report.dead_letters}", "dead letters kept", ""),
    ]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>memcollect report {_day(report.since)} to {_day(report.until)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>memcollect report: {_when(report.since)} to {_when(report.until)}</h1>",
        f'<div class="muted">Store <code>{_esc(report.backend)}</code>, made '
        f"{_when(report.generated_at)}.</div>",
        '<div class="cards">'
        + "".join(
            f'<div class="card"><strong class="{cls}">{_esc(big)}</strong>{_esc(small)}</div>'
            for big, small, cls in cards
        )
        + "</div>",
        f"{'<ul>' + reasons + '</ul>' if reasons else ''}",
        "<h2>Memories per day</h2>",
        '<div class="wrap">' + _bars(s.daily, report.since, 720, 90, "days") + "</div>",
        '<div class="muted">Grey: the period before; blue: this period (UTC days).</div>',
    ]
    for key, title, groups in _sections(report):
        parts += [f'<h2 id="{key}">{title}</h2>', _group_table(groups, report.since)]
    for name, tallies in _breakdowns(report):
        parts += [f"<h2>By {name}</h2>", _tally_table(name, tallies)]
    parts.append("<h2>Dead letters</h2>")
    if report.dead_letter_samples:
        rows = "".join(
            f"<tr><td>{_when(dl.failed_at)}</td><td>{_esc(dl.memory.category)}</td>"
            f'<td class="what">{_esc(_short(dl.memory.content))}</td>'
            f'<td class="what">{_esc(_short(dl.error))}</td></tr>'
            for dl in report.dead_letter_samples
        )
        parts.append(
            '<div class="wrap"><table><tr><th>failed</th><th>category</th><th>what</th>'
            f"<th>error</th></tr>{rows}</table></div>"
            "<p class=muted>Queue them again with <code>memcollect dead-letters --retry</code>."
            "</p>"
        )
    else:
        parts.append('<p class="muted">None.</p>')
    parts += [
        "<h2>The collector</h2>",
        f"<p>Up {st.uptime_s:.0f} s: {st.accepted} accepted, {st.stored} stored, "
        f"{st.dead_lettered} dead-lettered, {st.dropped} dropped, {st.queue_depth} queued; "
        f"circuit {_esc(st.circuit)}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)
