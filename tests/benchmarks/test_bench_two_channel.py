"""benchmarks/bench_two_channel.py on a small synthetic taxonomy with a hashing model: every row over two seeds
and both geometries, the tune-half decision, the paired intervals, subsumption F1 and the results table."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "eval"))
sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
from eval_fake_models import HashingModel  # noqa: E402
from test_tune_graph_knn import _taxonomy  # noqa: E402


def _script():
    spec = importlib.util.spec_from_file_location(
        "bench_two_channel", REPO / "benchmarks" / "bench_two_channel.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_row_over_seeds_and_the_table(tmp_path: Path) -> None:
    bench = _script()
    taxonomy = _taxonomy(tmp_path / "tree.jsonl")
    model = HashingModel(16, hyperbolic=False)
    args = argparse.Namespace(
        seeds=[0, 1],
        dims=[4],
        geometries=["lorentz", "euclidean"],
        steps=15,
        batch_size=16,
        max_children=400,
        hidden_dim=32,
        teacher_weight=0.5,
    )
    raw = bench.run_taxonomy(str(taxonomy), tmp_path / "runs", model, args, lambda msg: None)
    assert set(raw["runs"]) == {"H^4", "R^4"} and all(len(v) == 2 for v in raw["runs"].values())
    for records in raw["runs"].values():
        for r in records:
            assert r["broader"]["w_s"] in bench.WEIGHTS and r["broader"]["w_g"] in bench.WEIGHTS
            assert (
                np.isfinite(r["broader"]["h"]).all()
                and ((r["broader"]["h"] >= 0) & (r["broader"]["h"] <= 100)).all()
            )
    summary = bench._summarise(raw)
    broader = summary["rows"]["broader"]
    # The deterministic rows have sd 0; graph-kNN at weight 0 of the mixture is graph-kNN itself.
    # One value: mean_sd returns the literal 0.0 for its sd (deterministic by construction, no arithmetic).
    assert broader["graph-kNN"]["all"][1] == 0.0
    assert summary["tune"]["broader"]["graph-kNN + H^4"] >= summary["tune"]["broader"]["graph-kNN"] - 1e-9
    assert "H^4 - R^4 (alone)" in summary["comparisons"]["broader"]
    assert any(k.startswith("H^4 (name, hard)") for k in summary["subsumption"])
    meta = {
        "machine": {
            "date": "d",
            "commit": "c",
            "nproc": 2,
            "cpu": "x",
            "load_average": (0.0, 0.0, 0.0),
            "torch_threads": 1,
        },
        "command": "cmd",
        "seeds": [0, 1],
        "steps": 15,
        "batch_size": 16,
        "max_children": 400,
    }
    text = bench._markdown({"taxonomies": [summary]}, meta)
    assert "| graph-kNN + H^4 |" in text and "Best broader row on the tune half" in text
    # Runs made one taxonomy per process combine into one table.
    part = tmp_path / "part.json"
    part.write_text(json.dumps({**meta, "taxonomies": [summary]}, default=float))
    bench.main(["--combine", str(part), str(part), "--results", str(tmp_path), "--name", "both"])
    both = (tmp_path / "both.md").read_text()
    assert both.count("Best broader row on the tune half") == 2 and "- `cmd`: ended d" in both
