"""The `memcollect` command, through click's runner and as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from memcollect.cli import cli
from memcollect.cli.common import console

from .conftest import run_cli, wait_for


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


def test_lists_keep_ids_whole_and_text_as_written_at_any_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path)]
    long_content = "Checkout hangs on Firefox " + "while the payment form loads " * 6
    ids = [
        runner.invoke(cli, ["add", *args, "bug", long_content, "--agent", "qa"]).output.strip(),
        runner.invoke(cli, ["add", *args, "error", "Timeout calling payments"]).output.strip(),
        # Brackets are text, not markup for the terminal.
        runner.invoke(cli, ["add", *args, "bug", "list[int] fails [/] in [bold]x"]).output.strip(),
    ]
    for width in (60, 80, 140):
        monkeypatch.setattr(console, "width", width)
        output = runner.invoke(cli, ["recent", *args]).output
        lines = output.splitlines()
        assert all(len(line) <= width for line in lines), output
        # Every id stays on one line, so it can be copied into `memcollect get`.
        assert all(any(i in line for line in lines) for i in ids), output
        flat = " ".join(" ".join(line.split()) for line in lines)
        assert "while the payment form loads" in flat and "Timeout calling payments" in flat
        assert "list[int] fails [/] in [bold]x" in flat
        assert ("agent" in output) == (width >= 100) and "qa" in output
    empty = runner.invoke(cli, ["search", *args, "nothing-like-this"]).output
    assert 'search "nothing-like-this": no memories' in empty


def test_delete_by_id_or_by_filters_after_asking(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path)]
    ids = [
        runner.invoke(cli, ["add", *args, "note", f"note {i}", "--session", "s-42"]).output.strip()
        for i in range(3)
    ]
    assert runner.invoke(cli, ["delete", *args, ids[0]]).output == "deleted 1 memory\n"
    asked = runner.invoke(cli, ["delete", *args, "--session", "s-42"], input="n\n")
    assert "delete every memory with session=s-42?" in asked.output and asked.exit_code == 1
    assert runner.invoke(cli, ["get", *args, ids[1]]).exit_code == 0  # not deleted
    answered = runner.invoke(cli, ["delete", *args, "--session", "s-42"], input="y\n")
    assert answered.output.endswith("deleted 2 memories\n")
    assert runner.invoke(cli, ["get", *args, ids[1]]).exit_code != 0
    nothing = runner.invoke(cli, ["delete", *args])
    assert nothing.exit_code == 2 and "give the ids to delete, or a filter" in nothing.output


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["add", "--data-dir", str(tmp_path), "Not A Slug", "x"])
    assert result.exit_code != 0
    assert "Error: category 'Not A Slug' is not a lowercase slug" in result.output
    assert "Traceback" not in result.output
    # Any text is a query of its words: an unbalanced quote is no error.
    quoted = runner.invoke(cli, ["search", "--data-dir", str(tmp_path), '"unbalanced'])
    assert quoted.exit_code == 0, quoted.output
    bad = runner.invoke(cli, ["search", "--data-dir", str(tmp_path), "x", "--since", "7x"])
    assert bad.exit_code != 0 and "--since '7x' is not a time" in bad.output
    assert "Traceback" not in bad.output


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


def test_export_then_import_round_trips_and_is_idempotent(tmp_path: Path) -> None:
    runner = CliRunner()
    source = ["--data-dir", str(tmp_path / "a")]
    for i in range(30):
        category = "bug" if i % 3 == 0 else "note"
        runner.invoke(cli, ["add", *source, category, f"exported memory {i}", "--tag", f"t{i}"])
    dump = tmp_path / "dump.jsonl"
    exported = runner.invoke(cli, ["export", *source, str(dump)])
    assert exported.exit_code == 0, exported.output
    assert "exported 30 memories" in exported.output
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert [r["id"] for r in lines] == sorted(r["id"] for r in lines)  # oldest first
    only_bugs = runner.invoke(cli, ["export", *source, "--category", "bug"])
    assert len([x for x in only_bugs.stdout.splitlines() if x.startswith("{")]) == 10

    target = ["--data-dir", str(tmp_path / "b")]
    for _ in range(2):  # importing twice stores each memory once: ids are kept
        imported = runner.invoke(cli, ["import", *target, str(dump)])
        assert imported.exit_code == 0, imported.output
        assert "imported 30 memories" in imported.output
    again = runner.invoke(cli, ["export", *target, "-"])
    assert sorted(x for x in again.stdout.splitlines() if x.startswith("{")) == sorted(
        dump.read_text().splitlines()
    )


def test_import_names_bad_lines_and_keeps_the_good_ones(tmp_path: Path) -> None:
    dump = tmp_path / "mixed.jsonl"
    dump.write_text(
        '{"category": "note", "content": "fine"}\n'
        "not json\n"
        '{"category": "Bad Slug", "content": "x"}\n'
        "\n"
        '{"category": "bug", "content": "also fine"}\n'
    )
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path / "d")]
    result = runner.invoke(cli, ["import", *args, str(dump)])
    assert result.exit_code == 1
    assert "imported 2 memories" in result.output
    assert "skipped 2 invalid lines (first: line 2:" in result.output
    stats = runner.invoke(cli, ["stats", *args, "--json"])
    assert json.loads(stats.output)["total"] == 2


def test_dead_letters_list_and_retry(tmp_path: Path) -> None:
    import memcollect as mc
    from memcollect.backends.base import DeadLetter

    store = f"sqlite:///{tmp_path}/dl.db"
    with mc.MemoryCollector(store, data_dir=str(tmp_path / "d")) as c:
        poison = mc.Memory(
            mc.new_id(), "bug", "refused once", {}, "high", (), None, None, None, 1.7e9
        )
        error = "PermanentBackendError: bad row [int]"
        c.backend.add_dead_letters([DeadLetter(poison, error, 1.7e9)])
    runner = CliRunner()
    args = ["--backend", store, "--data-dir", str(tmp_path / "d")]
    listed = runner.invoke(cli, ["dead-letters", *args, "--json"])
    assert listed.exit_code == 0, listed.output
    (letter,) = [json.loads(line) for line in listed.output.splitlines()]
    assert letter["memory"]["content"] == "refused once" and "bad row" in letter["error"]
    table = runner.invoke(cli, ["dead-letters", *args])
    # The table folds long cells to the terminal's width: check words, not whole cells.
    assert "1 shown" in table.output and "refused" in table.output and "bad" in table.output
    assert "[int]" in table.output and poison.id in table.output  # as written, on one line
    retried = runner.invoke(cli, ["dead-letters", *args, "--retry"])
    assert retried.exit_code == 0, retried.output
    assert "queued 1 dead letters again; 0 were refused again" in retried.output
    assert runner.invoke(cli, ["dead-letters", *args, "--json"]).output == ""
    got = runner.invoke(cli, ["get", *args, poison.id])
    assert json.loads(got.output)["content"] == "refused once"


def test_stats_shows_counts_and_json(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path)]
    for content in ("one", "two"):
        runner.invoke(cli, ["add", *args, "feedback", content])
    table = runner.invoke(cli, ["stats", *args])
    assert table.exit_code == 0 and "feedback" in table.output
    body = json.loads(runner.invoke(cli, ["stats", *args, "--json"]).output)
    assert body == {"total": 2, "by_category": {"feedback": 2}}


def test_stats_says_how_many_memories_wait_for_their_embedding(tmp_path: Path) -> None:
    from .test_semantic import require_semantic

    require_semantic()
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # never embeds: the count cannot move
    runner = CliRunner()
    args = [
        "--data-dir",
        str(tmp_path),
        "--backend",
        f"sqlite:///{tmp_path}/s.db?semantic=1&model={broken}",
    ]
    for content in ("one", "two"):
        assert runner.invoke(cli, ["add", *args, "feedback", content]).exit_code == 0
    table = runner.invoke(cli, ["stats", *args])
    assert table.exit_code == 0 and "waiting to embed: 2" in table.output
    body = json.loads(runner.invoke(cli, ["stats", *args, "--json"]).output)
    assert body == {"total": 2, "by_category": {"feedback": 2}, "pending_embeddings": 2}


def test_every_command_takes_backend_and_data_dir() -> None:
    for name, command in cli.commands.items():
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert {"--backend", "--data-dir"} <= options, name
    expected = {"demo", "add", "get", "search", "recent", "stats", "export", "import"}
    expected |= {"dead-letters", "recover", "serve", "config"}
    assert expected <= set(cli.commands)


def test_stats_watch_refreshes_until_interrupted(tmp_path: Path) -> None:
    import signal
    import threading

    env = dict(os.environ, MEMCOLLECT_DATA_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    exe = [sys.executable, "-m", "memcollect"]
    subprocess.run([*exe, "add", "qa", "watched"], env=env, check=True, timeout=60)
    watch = subprocess.Popen(
        [*exe, "stats", "--watch", "--interval", "0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert watch.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout or ()), daemon=True)
    reader.start()

    def shown(row: str) -> bool:
        return row in [" ".join(line.strip().strip("│ ").split()) for line in list(lines)]

    assert wait_for(lambda: shown("all │ 1"), 60), "".join(lines)  # a first view
    subprocess.run([*exe, "add", "qa", "watched again"], env=env, check=True, timeout=60)
    # A later refresh counts the memory added while watching.
    assert wait_for(lambda: shown("all │ 2") and shown("qa │ 2"), 60), "".join(lines)
    watch.send_signal(signal.SIGINT)
    assert watch.wait(timeout=60) == 0
    reader.join(30)
    assert watch.stderr is not None
    err = watch.stderr.read()
    watch.stderr.close()
    watch.stdout.close()
    assert "Traceback" not in err
    assert "stored" in "".join(lines) and "/s" in "".join(lines)  # a refreshed view's rate


def test_search_takes_every_filter_of_the_api(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path)]
    ids = {}

    def labels(agent: str, session: str) -> list[str]:
        return ["--agent", agent, "--session", session]

    for agent, session in [("qa", "s-1"), ("qa", "s-2"), ("perf", "s-1")]:
        added = runner.invoke(
            cli,
            ["add", *args, "bug", f"timeout in {agent} {session}", *labels(agent, session)],
        )
        assert added.exit_code == 0, added.output
        ids[agent, session] = added.output.strip()

    def found(*options: str) -> set[str]:
        result = runner.invoke(cli, ["search", *args, "timeout", "--json", *options])
        assert result.exit_code == 0, result.output
        return {json.loads(line)["id"] for line in result.output.splitlines()}

    assert found("--agent", "qa") == {ids["qa", "s-1"], ids["qa", "s-2"]}
    assert found("--session", "s-1", "--agent", "perf") == {ids["perf", "s-1"]}
    assert found("--since", "1h") == set(ids.values())
    assert found("--since", "2000-01-01", "--until", "2000-01-02") == set()
    assert found("--until", str(time.time() + 60)) == set(ids.values())
    bad = runner.invoke(cli, ["search", *args, "timeout", "--since", "yesterday"])
    assert bad.exit_code != 0 and "--since 'yesterday' is not a time" in bad.output
    semantic = runner.invoke(cli, ["search", *args, "timeout", "--mode", "semantic"])
    assert semantic.exit_code != 0 and "semantic=1" in semantic.output
    assert "Traceback" not in bad.output + semantic.output


def unreachable_postgres() -> str:
    from .services import free_port

    return f"postgresql://postgres@127.0.0.1:{free_port()}/test"


@pytest.mark.parametrize("command", [["stats"], ["search", "login"], ["recent"], ["get", "x"]])
def test_an_unreachable_store_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, command: list[str]
) -> None:
    result = run_cli(*command, "--backend", unreachable_postgres(), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "is unreachable" in lines[0] and "127.0.0.1" in lines[0]


def test_a_failed_add_leaves_nothing_behind_for_the_next_command(tmp_path: Path) -> None:
    failed = run_cli("add", "bug", "lost?", "--backend", unreachable_postgres(), cwd=tmp_path)
    assert failed.returncode == 1 and "nothing was kept" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / ".memcollect").exists()
    added = run_cli("add", "note", "only me", "--backend", "sqlite:///m.db", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    import sqlite3

    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("SELECT content FROM memories").fetchall() == [("only me",)]


def test_read_commands_create_no_store(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    for command in (["search", "x"], ["stats"], ["recent"], ["export"], ["dead-letters"]):
        result = run_cli(*command, "--backend", f"sqlite:///{missing}", cwd=tmp_path)
        assert result.returncode == 1, (command, result.stderr)
        assert "there is no memcollect store at" in result.stderr
    result = run_cli("stats", "--data-dir", str(tmp_path / "nonexistent"), cwd=tmp_path)
    assert result.returncode == 1 and "there is no memcollect store" in result.stderr
    assert not (tmp_path / "no").exists() and not (tmp_path / "nonexistent").exists()
    assert not (tmp_path / ".memcollect").exists()


def test_recover_with_nothing_left_says_so_and_makes_no_store(tmp_path: Path) -> None:
    data = tmp_path / "never-used"
    result = CliRunner().invoke(cli, ["recover", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"nothing to recover: no spool segments in {data / 'spool'}"
    assert not data.exists()
