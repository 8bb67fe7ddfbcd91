"""A user's `mypy --strict` sees memcollect's types (py.typed ships with the package)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

USER_CODE = """
import memcollect as mc
from memcollect.logging import MemoryHandler
from memcollect.testing import FakeClock, memory_collector

def remember(c: mc.MemoryCollector) -> str:
    return c.collect("bug", "Login fails on Safari", tags=["auth"], priority="high")

def strongest(c: mc.MemoryCollector) -> float:
    hits: list[mc.Hit] = c.search_scored("safari login", min_score=0.2)
    return max((hit.score for hit in hits), default=0.0)

clock = FakeClock()
with memory_collector(clock=clock) as c:
    handler = MemoryHandler(c)
    stats: mc.Stats = c.stats()
    print(remember(c), strongest(c), stats.accepted, handler.dropped)
"""

WRONG = """
import memcollect as mc

def remember(c: mc.MemoryCollector) -> int:
    return c.collect("bug", 42)
"""


@pytest.mark.timeout(300)
def test_mypy_strict_checks_user_code_against_memcollects_types(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text(USER_CODE)
    bad.write_text(WRONG)

    def mypy(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
            capture_output=True, text=True, cwd=tmp_path, timeout=280, check=False,
        )  # fmt: skip

    checked = mypy(good)
    assert checked.returncode == 0, checked.stdout
    # Not Any: wrong types are caught, in both directions.
    caught = mypy(bad)
    assert caught.returncode == 1
    assert (
        'Argument 2 to "collect" of "MemoryCollector" has incompatible type "int"' in caught.stdout
    )
    assert 'Incompatible return value type (got "str", expected "int")' in caught.stdout


def test_import_memcollect_loads_none_of_the_extras() -> None:
    """The integrations are imported when used, never by `import memcollect`."""
    probe = (
        "import sys, memcollect\n"
        "heavy = ['mcp', 'langgraph', 'structlog', 'fastapi', 'httpx', 'numpy', 'click', "
        "'rich', 'psycopg', 'opentelemetry', 'memcollect.integrations', 'asyncio', "
        "'subprocess']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.strip() == "[]"
