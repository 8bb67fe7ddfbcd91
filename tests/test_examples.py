"""Every example runs as a script and shows what it claims."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

EXPECTED = {
    "basic.py": [
        "read back before storing: Login fails on Safari 17 after a password reset",
        "stored: 3",
        "search 'safari login': Login fails on Safari 17 after a password reset | priority high",
        "newest first: ['decision', 'feedback', 'bug']",
        "accepted 3, stored 3, dropped 0",
        "health: ok",
    ],
    "service_manager.py": [
        "started: {'async_memory_collector': True}",
        "flushed: 5",
        "operations 5, success rate 100%",
        "collector health: healthy",
        "in the store: [('architecture', 1), ('bug', 1), ('error', 1), ('feedback', 1), "
        "('performance', 1)]",
    ],
    "async_high_rate.py": [
        "accepted 10000 memories in",
        "all stored: True",
        "event loop kept running: True",
    ],
    "web_errors.py": [
        "GET /: 200",
        "GET /checkout: 500",
        "recorded: ZeroDivisionError in /checkout: division by zero",
        "with traceback: True",
        "priority: critical",
    ],
    "forget.py": [
        "deleted the leak: 1",
        "key still on disk: False",
        "deleted session s-42: 2",
        "left: ['Keep memories 90 days']",
        "older than 90 days: 0",
    ],
    "langgraph_memory.py": [
        "run 1: new problem, noted",
        "run 2: seen before: Checkout times out on Safari",
    ],
    "recall.py": [
        "seen before: True",
        "closest: Login fails on Safari 17 after password reset: session cookie is dropped",
        "what we decided: Safari drops SameSite=None cookies without Secure: always set Secure",
    ],
}


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_output(name: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMCOLLECT_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for expected in EXPECTED[name]:
        assert any(line.startswith(expected) for line in lines), (expected, lines)
    assert not list(tmp_path.iterdir()), "an example left files behind"
