"""benchmarks/tune_graph_knn.py on a small synthetic taxonomy with a hashing model: the tune grid, the choice,
the report through the library's search, the results files and the resumable embedding cache."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from lorentz_rag.search.graph_knn import GraphKnnSettings

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "eval"))
from eval_fake_models import HashingModel  # noqa: E402


def _script():
    spec = importlib.util.spec_from_file_location("tune_graph_knn", REPO / "benchmarks" / "tune_graph_knn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _taxonomy(path: Path) -> Path:
    """A tree of 1 + 5 + 25 + 125 concepts: names and definitions that share words along each branch."""
    rows = [{"id": "r", "name": "root thing", "definition": "the root of everything"}]
    for a in range(5):
        rows.append({"id": f"a{a}", "name": f"group {a}", "definition": f"kind {a} thing", "parents": ["r"]})
        for b in range(5):
            rows.append(
                {
                    "id": f"a{a}b{b}",
                    "name": f"group {a} sub {b}",
                    "parents": [f"a{a}"],
                    "definition": f"kind {a} thing of sort {b}",
                    "synonyms": [f"sort {a}{b}"],
                }
            )
            for c in range(5):
                rows.append(
                    {
                        "id": f"a{a}b{b}c{c}",
                        "name": f"group {a} sub {b} leaf {c}",
                        "parents": [f"a{a}b{b}"],
                        "definition": f"kind {a} thing of sort {b} type {c}",
                    }
                )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_tune_then_report_writes_the_chosen_settings(tmp_path: Path) -> None:
    bench = _script()
    bench.GRID = {"k": (2, 5), "temperature": (0.05,), "hop_discount": (0.5, 0.9), "graph_weight": (0.5, 1.0)}
    taxonomy = _taxonomy(tmp_path / "tree.jsonl")
    model = HashingModel(16, hyperbolic=False)
    out, results = tmp_path / "runs", tmp_path / "results"
    tuned = bench.tune(str(taxonomy), out, model)
    assert len(tuned["grid"]) == 8 and tuned["queries"] > 0
    cached = list((out / "tree" / "emb").glob("chunk-*.pt"))
    assert cached
    calls = len(model.calls)
    res = bench.report([str(taxonomy)], out, model, results, "cmd")
    # Everything the report needs was encoded by the tune phase or is a report query: no concept text again.
    assert all(kind == "query" for kind, _ in model.calls[calls:])
    best = max(tuned["grid"], key=lambda r: r["ndcg@10"])
    assert res["chosen"] == GraphKnnSettings(**best["settings"]).to_dict()
    written = json.loads((results / "graph_knn.json").read_text())
    row = written["taxonomies"][str(taxonomy)]
    assert 0.0 <= row["report"]["graph_knn"] <= 100.0 and 0.0 <= row["report"]["zero_shot"] <= 100.0
    assert {"date", "commit", "nproc", "cpu", "load_average"} <= set(written["machine"])
    assert "Chosen" in (results / "graph_knn.md").read_text()
