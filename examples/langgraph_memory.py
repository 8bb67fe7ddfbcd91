"""A LangGraph graph that remembers across runs, through memcollect (no LLM, no network).

Run: .venv/bin/python examples/langgraph_memory.py   (needs the langgraph extra)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore

import memcollect as mc
from memcollect.integrations.langgraph import MemcollectStore


class State(TypedDict, total=False):
    report: str
    recalled: list[str]
    answer: str


def recall(state: State, *, store: BaseStore) -> State:
    """Look for reports like this one, by their words and meaning, with scores."""
    hits = store.search(("support", "reports"), query=state["report"], limit=3)
    return {"recalled": [hit.value["text"] for hit in hits if (hit.score or 0) >= 0.5]}


def answer(state: State, *, store: BaseStore) -> State:
    """Say whether it was seen before, and remember it for the next run."""
    seen = state.get("recalled") or []
    key = f"report-{len(store.search(('support', 'reports'), limit=100)) + 1}"
    store.put(("support", "reports"), key, {"text": state["report"]})
    return {"answer": f"seen before: {seen[0]}" if seen else "new problem, noted"}


def build(store: BaseStore):  # type: ignore[no-untyped-def]
    graph = StateGraph(State)
    graph.add_node("recall", recall)
    graph.add_node("answer", answer)
    graph.add_edge(START, "recall")
    graph.add_edge("recall", "answer")
    graph.add_edge("answer", END)
    return graph.compile(store=store)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'memories.db'}"
        reports = ["Checkout times out on Safari", "checkout timing out in Safari again"]
        for run, report in enumerate(reports, start=1):
            # Each run is a new process in real life: a new collector on the same store.
            with mc.MemoryCollector(url, data_dir=str(Path(tmp) / f"run{run}")) as collector:
                result = build(MemcollectStore(collector)).invoke({"report": report})
                print(f"run {run}: {result['answer']}")


if __name__ == "__main__":
    main()
