"""benchmarks/bench_recipe_model.py on a small tree with the packaged MiniLM, a hierarchy channel and the train
split carried: the re-worded corpus links to no concept by id or text, every row is measured on both corpora,
subsumption F1 for every scorer with its weight chosen on validation, and the table is written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from lorentz_rag.data.beir import load_beir
from lorentz_rag.data.taxonomy_sets import taxonomy_build_command
from lorentz_rag.models import load_model, packaged_minilm_path
from lorentz_rag.models.hierarchy_channel import HierarchyChannel, HierarchyChannelConfig
from lorentz_rag.search.graph_knn import ConceptGraph

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
from test_tune_graph_knn import _taxonomy  # noqa: E402


def _script():
    spec = importlib.util.spec_from_file_location(
        "bench_recipe_model", REPO / "benchmarks" / "bench_recipe_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_on_both_corpora_and_the_table(tmp_path: Path) -> None:
    bench = _script()
    sets = tmp_path / "sets"
    taxonomy_build_command(str(_taxonomy(tmp_path / "tree.jsonl")), str(sets), held_out_fraction=0.2)
    model = load_model(str(packaged_minilm_path()))
    torch.manual_seed(0)
    model.attach_hierarchy_channel(
        HierarchyChannel(
            HierarchyChannelConfig(
                input_dim=model.embedding_dim, dim=8, graph_weights={"broader": 0.3, "narrower": 0.3}
            )
        )
    )
    model.attach_concept_graph(ConceptGraph.from_taxonomy(model, sets / "train.jsonl.gz"))
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "results" / "free_text"
    bench.main(
        [
            *("--model", str(tmp_path / "model"), "--sets", str(sets), "--out", str(out)),
            *("--split", "test", "--work", str(tmp_path / "corpora")),
        ]
    )  # the tree is small: narrower judges too few queries for each half
    result = json.loads(out.with_suffix(".json").read_text())
    graph_ids = set(model.concept_graph.concept_ids)
    for relation in ("broader", "narrower"):
        free = load_beir(tmp_path / "corpora" / relation, "test")
        # No document keeps its concept's id or text, and the judgments follow the new ids.
        assert not set(free.corpus) & graph_ids
        assert all(": " in doc["text"] for doc in free.corpus.values())
        assert {d for rel in free.qrels.values() for d in rel} <= set(free.corpus)
        means = result["results"][relation]["mean"]
        assert set(means) == {f"{c} | {r}" for c in ("concepts", "free text") for r in bench.ROWS}
        # Plain similarity cannot use the graph: both corpora are scored, each in [0, 100].
        assert all(0.0 <= v <= 100.0 for v in means.values())
    for setting in ("hard", "random"):
        res = result["subsumption"][setting]
        assert set(res) == set(bench.SUBSUMPTION_ROWS) and res["graph-kNN + H"]["v"] in bench.WEIGHTS
        assert all(0.0 <= r["f1"] <= 1.0 for r in res.values())
    md = out.with_suffix(".md").read_text()
    assert "| graph-kNN + H |" in md and "free text - concepts" in md
