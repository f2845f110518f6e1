"""benchmarks/bench_vector_stores.py --quick: the whole benchmark (exactness, ANN recall, latency) end to end on
tiny data, so the committed results come from a script that runs; its exactness rows must all return the
reference's top 10."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_vector_stores.py"


@pytest.mark.slow
def test_quick_run_writes_exact_stores_and_every_recall(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, str(SCRIPT), "--quick", "--work", str(work), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "vector_stores.json").read_text())

    exact = result["exactness"]
    cases = {(r["corpus"], r["model"], r["backend"]) for r in exact}
    models = ("hyte_h", "hyte_fh", "twin_cosine", "twin_distance")
    assert {("faq-dev", m, b) for m in models for b in ("lancedb", "qdrant")} <= cases
    assert {("large", "hyte_h", "lancedb"), ("large", "hyte_h", "qdrant")} <= cases
    assert {r["similarity"] for r in exact} == {"geodesic", "cosine", "euclidean"}
    for row in exact:
        assert row["queries"] == 20 and row["docs"] == (100 if row["backend"] == "qdrant" else 300), row
        assert row["identical_top10"] == row["queries"], row
        # The store's float64 re-rank and the reference search evaluate the same formulas on candidate arrays
        # of other shapes (other summation orders, vectorised or scalar transcendentals), so the scores agree
        # to float64 rounding, not bit for bit; the top-10 ids must still be identical (above).
        assert row["max_abs_score_difference"] <= 1e-12, row

    probe = result["default_bound_probe"]  # the store's default R (HyTE-H's bound 10): slow but exact
    assert probe["max_radius"] == 10.0 and probe["identical_top10"] == probe["queries"] == 5

    recall = {(r["points"], r["index"], r["form"]): r["recall_at_10"] for r in result["ann_recall"]}
    for points in ("radii 1.5-2.5", "radii 6-10"):
        for index in ("FAISS HNSW", "LanceDB ivf_hnsw_sq", "LanceDB ivf_pq"):
            for form in ("raw", "reduced, R from the model's bound", "reduced, R from the documents"):
                assert 0.0 <= recall[(points, index, form)] <= 1.0
        # 300 points: an HNSW graph over the reduced form finds the exact top 10.
        assert recall[(points, "FAISS HNSW", "reduced, R from the documents")] >= 0.95
    large = [r for r in result["ann_recall"] if r["points"] == "radii 6-10"]
    assert all(6.0 <= r["radius_min"] <= r["radius_max"] <= 10.0 + 1e-6 for r in large)

    latency = {r["index"]: r for r in result["latency_per_1k_queries"]}
    assert {"FAISS folder, flat", "LanceDB, brute force", "Qdrant local mode (brute force)"} <= set(latency)
    assert all(r["seconds_per_1k_queries"] > 0 for r in latency.values())
    assert result["large_corpus"]["documents"] == 300
    assert result["load_average_1_5_15_min_before"] and "--quick" in result["command"]
    md = (out / "vector_stores.md").read_text()
    assert "| faq-dev | twin_distance | euclidean | 300 | 20 | 20/20 | 20/20 (first 100 documents) |" in md
    assert "## ANN recall@10" in md and "## Latency and memory per 1k queries" in md
