"""The `memcollect` command, through click's runner and as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from memcollect.cli import cli


def test_demo_collects_stores_and_recalls(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--data-dir", str(tmp_path), "--count", "400"])
    assert result.exit_code == 0, result.output
    assert "accepted 400" in result.output and "stored 400" in result.output
    assert 'search "safari login"' in result.output and "Safari" in result.output
    assert "health: ok" in result.output


def test_add_get_search_round_trip(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path)]
    added = runner.invoke(
        cli,
        [
            "add",
            *args,
            "bug",
            "Checkout hangs on Firefox",
            "--tag",
            "checkout",
            "--metadata",
            '{"build": 7}',
        ],
    )
    assert added.exit_code == 0, added.output
    memory_id = added.output.strip()
    got = runner.invoke(cli, ["get", *args, memory_id])
    record = json.loads(got.output)
    assert record["content"] == "Checkout hangs on Firefox"
    assert record["metadata"] == {"build": 7} and record["tags"] == ["checkout"]
    found = runner.invoke(cli, ["search", *args, "firefox", "--json"])
    assert [json.loads(line)["id"] for line in found.output.splitlines()] == [memory_id]


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["add", "--data-dir", str(tmp_path), "Not A Slug", "x"])
    assert result.exit_code != 0
    assert "Error: category 'Not A Slug' is not a lowercase slug" in result.output
    assert "Traceback" not in result.output
    bad = runner.invoke(cli, ["search", "--data-dir", str(tmp_path), '"unbalanced'])
    assert bad.exit_code != 0 and "not valid full-text syntax" in bad.output


def test_console_script_runs_as_a_process(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("memcollect")
    env = dict(os.environ, MEMCOLLECT_DATA_DIR=str(tmp_path))
    out = subprocess.run(
        [str(exe), "add", "note", "from a process"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert len(out.stdout.strip()) == 26
    stats = subprocess.run(
        [str(exe), "stats"], capture_output=True, text=True, env=env, check=True, timeout=60
    )
    assert "note" in stats.stdout and "1" in stats.stdout
