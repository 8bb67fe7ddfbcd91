"""The README and the docs site: they build, their code runs, their links lead somewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from .conftest import ROOT

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
# A code block runs when the line before its fence says so; the marker shows nowhere.
RUNNABLE = re.compile(r"^<!-- runnable -->\n```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def runnable_blocks(path: Path) -> list[str]:
    """The code blocks of a Markdown file that are marked as runnable."""
    return RUNNABLE.findall(path.read_text(encoding="utf-8"))


BLOCKS = [
    pytest.param(code, id=f"{path.name}-{index}")
    for path in [ROOT / "README.md", *PAGES]
    for index, code in enumerate(runnable_blocks(path))
]


def test_runnable_blocks_are_found() -> None:
    # The README's quickstart and most pages' first example are marked: if the marker
    # stopped matching, the test below would pass on nothing.
    assert len(runnable_blocks(ROOT / "README.md")) >= 1
    assert len(BLOCKS) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("code", BLOCKS)
def test_runnable_block_runs(code: str, tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MEMCOLLECT_") or key == "MEMCOLLECT_CACHE_DIR"
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_readme_fits_in_a_few_screens() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8")) < 12_000


def test_readme_links_lead_to_files() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    local = [t for t in MARKDOWN_LINK.findall(text) if not urlsplit(t).scheme]
    assert local, "the README links to the docs"
    for target in local:
        path = urlsplit(target).path
        if path:
            assert (ROOT / unquote(path)).exists(), f"README links to missing {target}"


def test_license_is_mit_as_pyproject_says() -> None:
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        for name in ("href", "src"):
            value = found.get(name)
            if value and tag in ("a", "img", "link", "script"):
                self.targets.append(value)


def _parse(page: Path) -> _Links:
    links = _Links()
    links.feed(page.read_text(encoding="utf-8"))
    return links


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


@pytest.mark.slow
def test_site_has_no_broken_internal_link(site: Path) -> None:
    # The 404 page is served from any path, so its links are absolute to the site's root.
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    parsed = {page: _parse(page) for page in pages}
    checked = 0
    for page, links in parsed.items():
        for target in links.targets:
            parts = urlsplit(target)
            if parts.scheme or target.startswith(("//", "mailto:")):
                continue
            if parts.path:
                resolved = (page.parent / unquote(parts.path)).resolve()
                if resolved.is_dir():
                    resolved = resolved / "index.html"
                assert resolved.exists(), f"{page.relative_to(site)} links to missing {target}"
            else:
                resolved = page
            if parts.fragment and resolved.suffix == ".html":
                ids = parsed[resolved].ids if resolved in parsed else _parse(resolved).ids
                assert parts.fragment in ids, f"{page.relative_to(site)}: no #{parts.fragment}"
            checked += 1
    assert checked > 200


@pytest.mark.slow
def test_generated_references_match_the_code(site: Path) -> None:
    import click

    from memcollect.cli import cli
    from memcollect.config import Config

    config_page = (site / "configuration" / "index.html").read_text(encoding="utf-8")
    for field in Config.__struct_fields__:
        assert f"MEMCOLLECT_{field.upper()}" in config_page, field
    cli_page = (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert isinstance(cli, click.Group)
    for name, command in cli.commands.items():
        assert f"memcollect {name}" in cli_page, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.opts[0] in cli_page, (name, param.opts)
    http_page = (site / "server" / "index.html").read_text(encoding="utf-8")
    for path in ("/v1/memories", "/v1/search/scored", "/v1/delete", "/metrics"):
        assert f"{path}</code>" in http_page, path
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    for name in ("search_scored", "collect_async", "FaultyBackend", "MemcollectStore"):
        assert name in reference, name
    bench_page = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert bench_page.count("<svg") >= 2
    assert "bench/results-locomo.json" in bench_page


def test_readme_headline_figures_are_the_results_files() -> None:
    import json

    readme = (ROOT / "README.md").read_text(encoding="utf-8")

    def results(name: str) -> dict[str, object]:
        data: dict[str, object] = json.loads((ROOT / "bench" / name).read_text(encoding="utf-8"))
        return data

    collect = results("results.json")
    memory, spool = collect["latency_memory"], collect["latency_spool"]
    assert isinstance(memory, dict) and isinstance(spool, dict)
    locomo = results("results-locomo.json")["results"]
    million = results("results-million.json")
    mem0 = results("results-mem0.json")
    assert isinstance(locomo, dict) and isinstance(million, dict)
    expected = [
        f"**{memory['p50_us']:.1f} µs** in RAM",
        f"**{spool['p50_us']:.1f} µs** durable",
        f"`QueueHandler` {memory['queuehandler_p50_us']:.1f} µs ({memory['speedup_p50']:.1f}x",
        f"persist-queue {spool['persistqueue_p50_us']:.1f} µs ({spool['speedup_p50']:.0f}x",
        f"hybrid **{locomo['hybrid']['recall@10']:.3f}**",
        f"text {locomo['text']['recall@10']:.3f}",
        f"same embedding model: {locomo['mem0 (same model)']['recall@10']:.3f}",
        f"SQLite p50 **{million['sqlite']['p50_ms']:.1f} ms**, "
        f"p99 {million['sqlite']['p99_ms']:.0f}",
        f"PostgreSQL p50 {million['postgresql']['p50_ms']:.1f} ms, "
        f"p99 {million['postgresql']['p99_ms']:.0f} ms",
        f"**{mem0['collect_p50_us']:.1f} µs**",
        f"`add(infer=False)` {mem0['mem0_add_p50_ms']:.1f} ms",
    ]
    for figure in expected:
        assert figure in readme, figure
