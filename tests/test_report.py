"""Reports: a period in review on every store, rendered as Markdown, HTML and JSON, from the
API, the command line and over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import httpx
import msgspec
import pytest
from click.testing import CliRunner

import memcollect as mc
from memcollect.cli import cli

from .services import sqlite_server

Make = Callable[..., mc.MemoryCollector]
DAY = 86400.0


def old(now: float, days_ago: float, category: str, content: str, **labels: str) -> mc.Memory:
    return mc.Memory(
        mc.new_id(), category, content, {}, "medium", (), labels.get("project"),
        labels.get("agent"), None, now - days_ago * DAY,
    )  # fmt: skip


def fill(c: mc.MemoryCollector) -> float:
    """Three weeks of memories: a regular that doubled, one that faded, and this week's new."""
    now = time.time()
    c.collect_memories(
        [old(now, 20, "bug", "Checkout fails for order 1")]  # before both periods
        + [
            old(now, 10 - i, "bug", f"Checkout fails for order {i}", project="shop")
            for i in range(2)
        ]  # the week before: 2
        + [old(now, 9, "error", "Disk full on db-1", agent="ops") for _ in range(3)]
        + [
            old(now, 3 + i / 2, "bug", f"Checkout fails for order {9 + i}", project="shop")
            for i in range(4)
        ]  # this week: 4
    )
    for i in range(5):
        c.collect("error", f"Timeout after {i * 10} ms calling the <b>payments</b> API",
                  project="shop", agent="checkout")  # fmt: skip
    c.collect("feedback", "Users love | the new search", agent="support")
    assert c.flush(30)
    return now


def test_a_report_reviews_the_period_on_every_store(make_collector: Make, store_url: str) -> None:
    c = make_collector(store_url)
    fill(c)
    report = c.report(since="7d")
    s = report.summary
    assert (s.total, s.total_before) == (10, 5)
    assert abs((report.until - report.since) - 7 * DAY) < 60
    assert [(g.group.category, g.group.in_period) for g in s.top] == [
        ("error", 5),
        ("bug", 4),
        ("feedback", 1),
    ]
    # New: first seen this week. Rising: seen before, more this week than the week before.
    assert {g.group.category for g in s.new} == {"error", "feedback"}
    assert (s.groups, s.new_groups) == (3, 2)
    assert [(g.group.category, g.group.in_period, g.group.before_period) for g in s.rising] == [
        ("bug", 4, 2)
    ]
    by = {t.name: (t.count, t.before) for t in s.by_category}
    assert by == {"error": (5, 3), "bug": (4, 2), "feedback": (1, 0)}
    assert [(t.name, t.count, t.before) for t in s.by_project] == [("shop", 9, 2)]
    assert {t.name: (t.count, t.before) for t in s.by_agent} == {
        "checkout": (5, 0), "support": (1, 0), "ops": (0, 3),
    }  # fmt: skip
    # Days cover both periods, UTC midnights, and hold every memory of them.
    days = [d for d, _ in s.daily]
    assert days == sorted(days) and all(d % DAY == 0 for d in days)
    assert days[-1] - days[0] in (13 * DAY, 14 * DAY)
    assert sum(n for _, n in s.daily) == 15
    for rg in s.top:
        assert sum(n for d, n in rg.daily) >= rg.group.in_period
    assert report.health.status == "ok" and report.dead_letters == 0
    assert report.stats.stored >= 10
    # Filters narrow it.
    shop = c.report(since="7d", project="shop", limit=1).summary
    assert (shop.total, len(shop.top)) == (9, 1) and shop.top[0].group.in_period == 5


def test_the_renderings_say_the_same_and_escape_what_they_show(make_collector: Make) -> None:
    c = make_collector("memory://")
    fill(c)
    report = c.report(since="7d", until=time.time() + 1)
    assert msgspec.json.decode(report.to_json(), type=mc.Report) == report

    md = report.to_markdown()
    headings = ["## What recurred most", "## New in the period", "## Rising against"]
    headings += ["## By category", "## By project", "## By agent", "## Dead letters"]
    for heading in headings:
        assert heading in md
    assert "Users love \\| the new search" in md  # a pipe would split the table's row
    assert "**10** memories in the period, 5 in the period before (+100%)" in md

    page = report.to_html()
    tags: list[str] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            tags.append(tag)
            for name, value in attrs:
                # Self-contained: nothing is fetched from anywhere.
                assert name not in ("src", "href") or (value or "").startswith("#"), (name, value)

    Tags().feed(page)
    assert "script" not in tags and "b" not in tags  # the memory's "<b>" is text, not markup
    assert "&lt;b&gt;payments&lt;/b&gt;" in page
    assert tags.count("svg") >= 1 + len(report.summary.top) and "table" in tags


def test_a_report_counts_dead_letters_and_says_health(make_collector: Make, tmp_path: Path) -> None:
    c = make_collector(f"sqlite:///{tmp_path}/dl.db")
    c.collect("bug", "kept")
    assert c.flush(30)
    letter = mc.DeadLetter(
        mc.Memory(mc.new_id(), "bug", "refused one", {}, "high", (), None, None, None, 1.0),
        "the store refused it",
        time.time(),
    )
    c.backend.add_dead_letters([letter])
    report = c.report(since="1d")
    assert report.dead_letters == 1
    assert report.dead_letter_samples[0].memory.content == "refused one"
    assert "refused one" in report.to_markdown() and "refused one" in report.to_html()


def test_bad_periods_are_one_sentence(make_collector: Make) -> None:
    c = make_collector("memory://")
    with pytest.raises(mc.ValidationError, match="since '7x' is not a time"):
        c.report(since="7x")
    with pytest.raises(mc.ValidationError, match="a report needs a period"):
        c.report(since=None)
    c.collect("bug", "kept")
    assert c.flush(30)
    empty = c.report(since="1d", until="2d")  # until before since: an empty period
    assert empty.since == empty.until and empty.summary.total == 0


def test_the_command_line_writes_each_format(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    with mc.MemoryCollector(url, data_dir=str(tmp_path / "spool")) as c:
        fill(c)
    runner = CliRunner()
    args = ["report", "--backend", url, "--data-dir", str(tmp_path / "spool")]
    md = runner.invoke(cli, args)
    assert md.exit_code == 0, md.output
    assert "# memcollect report" in md.output and "Checkout fails" in md.output
    out = tmp_path / "week.html"
    written = runner.invoke(cli, [*args, "--format", "html", "--output", str(out)])
    assert written.exit_code == 0, written.output
    assert out.read_text().startswith("<!doctype html>")
    as_json = runner.invoke(cli, [*args, "--format", "json", "--since", "30d", "--limit", "1"])
    body = json.loads(as_json.output)
    assert body["summary"]["total"] == 16 and len(body["summary"]["top"]) == 1
    bad = runner.invoke(cli, [*args, "--since", "7x"])
    assert bad.exit_code != 0 and "since '7x' is not a time" in bad.output
    assert "Traceback" not in bad.output
    collapsed = runner.invoke(cli, ["search", "Checkout", "--collapse", "--json", *args[1:]])
    lines = [json.loads(line) for line in collapsed.output.splitlines()]
    assert [line["matches"] for line in lines] == [7], collapsed.output
    nowhere = runner.invoke(cli, [*args, "--output", str(tmp_path / "no" / "such" / "r.md")])
    assert nowhere.exit_code != 0 and "cannot write the report to" in nowhere.output


def test_the_server_answers_each_format(tmp_path: Path) -> None:
    with sqlite_server(tmp_path) as server:
        with mc.MemoryCollector(server.url, data_dir=str(tmp_path / "client")) as c:
            fill(c)
        base = f"{server.url}/v1/report"
        body = httpx.get(base, params={"since": "7d"}).json()
        assert body["summary"]["total"] == 10
        md = httpx.get(base, params={"format": "md"})
        assert md.headers["content-type"].startswith("text/markdown")
        assert "## What recurred most" in md.text
        page = httpx.get(base, params={"format": "html", "since": "2d"})
        assert page.headers["content-type"].startswith("text/html")
        assert "<svg" in page.text
        bad = httpx.get(base, params={"since": "7x"})
        assert bad.status_code == 422 and "since" in bad.json()["error"]
        one = httpx.get(f"{server.url}/v1/search/scored", params={"q": "Checkout", "collapse": 1})
        assert [(h["matches"], len(h["fingerprint"])) for h in one.json()] == [(7, 16)]
        spec = httpx.get(f"{server.url}/openapi.json").json()
        content = spec["paths"]["/v1/report"]["get"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/markdown", "text/html"}
