"""benchmarks/bench_taxonomy.py --quick: zero-shot, HyTE-H and the twin trained with the taxonomy recipe for two
steps on the animals fixture, every measurement and comparison written (the numbers mean nothing)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
ANIMALS = REPO / "tests" / "data" / "fixtures" / "animals.jsonl"


@pytest.mark.slow
def test_quick_mode_measures_every_model_and_comparison(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    script = REPO / "benchmarks" / "bench_taxonomy.py"
    argv = [sys.executable, str(script), "--quick", "--taxonomies", str(ANIMALS), "--out", str(out)]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    res = results["taxonomies"][str(ANIMALS)]
    for name in ("hyte_h", "twin"):
        (run,) = res["trained"][name]
        assert run["broader"] and run["broader_relation"] and run["faq_dev"]
        assert all(0.0 <= x <= 1.0 for x in run["broader"] + run["broader_relation"] + run["faq_dev"])
        assert math.isfinite(run["subsumption_f1"]) and math.isfinite(run["depth_spearman"])
    assert "broader_relation" not in res["zero_shot"]  # cosine: no radius, no relation search
    # Graph-kNN: the zero-shot model with the train split attached, on the same sets; synonym and faq-dev are
    # plain similarity (the zero-shot lists), no depth.
    graph = res["graph_knn"]
    assert len(graph["broader"]) == len(res["zero_shot"]["broader"]) > 0
    assert len(graph["narrower"]) == len(res["zero_shot"]["narrower"])
    assert all(0.0 <= x <= 1.0 for x in graph["broader"] + graph["narrower"])
    assert graph["synonym"] == res["zero_shot"]["synonym"] and graph["faq_dev"] == res["zero_shot"]["faq_dev"]
    assert 0.0 <= graph["subsumption_f1"] <= 1.0 and "depth_spearman" not in graph
    assert graph["settings"]["k"] == 20  # the defaults
    means = res["summary"]["means"]
    assert means["broader"]["graph_knn"] == pytest.approx(np.mean(graph["broader"]))
    assert "graph_knn" not in means["depth_spearman"]
    intervals = res["summary"]["intervals"]
    assert {
        "broader: hyte_h - twin",
        "faq_dev: twin - zero_shot",
        "broader: hyte_h relation - similarity",
        "broader: graph_knn - zero_shot",
        "broader: hyte_h - graph_knn",
        "broader: hyte_h relation - graph_knn",
        "broader: twin - graph_knn",
    } <= set(intervals)
    assert all(iv["low"] <= iv["high"] and iv["n_seeds"] == 1 for iv in intervals.values())
    report = (out / "report.md").read_text()
    assert "| broader_relation |" in report and "hyte_h - twin" in report
    assert "| graph-kNN |" in report and "graph_knn - zero_shot" in report

    # benchmarks/interpolate_taxonomy.py on the same runs: alpha 1 is the trained model (the same numbers);
    # alpha 0 is the start (identity direction layer, one radius for every text), where HyTE-H and the twin
    # both rank as the base's cosine does (at the runs' max_seq_length): the same numbers up to rounding.
    interp = tmp_path / "interpolate"
    argv = [
        sys.executable,
        str(REPO / "benchmarks" / "interpolate_taxonomy.py"),
        *("--taxonomies", str(ANIMALS), "--runs", str(out), "--part", "test", "--seeds", "1"),
        *("--alphas", "0", "0.5", "1", "--out", str(interp)),
    ]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    alphas = json.loads((interp / "interpolate.json").read_text())["alphas"]
    at = {a: alphas[a]["taxonomies"][str(ANIMALS)]["trained"] for a in ("0.0", "1.0")}
    for name in ("hyte_h", "twin"):
        assert at["1.0"][name] == res["trained"][name], name
    for metric in ("faq_dev", "synonym", "broader", "narrower"):
        hyte_h, twin = (np.mean(at["0.0"][name][0][metric]) for name in ("hyte_h", "twin"))
        assert hyte_h == pytest.approx(twin, abs=2e-3), metric
    # The rebuilt start is the recipe's initialisation (identity direction layer, zero radius weights), not the
    # trained head: after two steps the trained head differs from it.
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch
    from interpolate_taxonomy import interpolated_model

    run = out / ANIMALS.stem / "hyte_h-42"
    start, trained = interpolated_model(run, 0.0).head, interpolated_model(run, 1.0).head
    assert torch.equal(start.direction.weight, torch.eye(start.direction.weight.shape[0]))
    assert not start.radius.weight.any() and not start.radius.bias.any()
    assert not torch.equal(trained.direction.weight, start.direction.weight)
    assert "| 0.5 | hyte_h |" in (interp / "interpolate.md").read_text()


def test_interpolate_state_walks_from_start_to_end() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch
    from interpolate_taxonomy import interpolate_state

    start = {"w": torch.zeros(2, 3), "steps": torch.tensor(1), "b": torch.ones(2, dtype=torch.float64)}
    end = {
        "w": torch.full((2, 3), 4.0),
        "steps": torch.tensor(7),
        "b": torch.full((2,), 3.0, dtype=torch.float64),
    }
    half = interpolate_state(start, end, 0.25)
    assert torch.equal(half["w"], torch.full((2, 3), 1.0)) and torch.equal(
        half["b"], torch.full((2,), 1.5).double()
    )
    assert half["steps"].item() == 7  # not floating point: the trained value
    assert all(torch.equal(interpolate_state(start, end, 1.0)[k], end[k]) for k in end)
    assert all(
        torch.equal(interpolate_state(start, end, 0.0)[k].float(), start[k].float()) for k in ("w", "b")
    )
    with pytest.raises(ValueError, match=r"only in the trained one \['extra'\]"):
        interpolate_state(start, {**end, "extra": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match=r"w: start \(2, 3\), trained \(3, 2\)"):
        interpolate_state(start, {**end, "w": torch.zeros(3, 2)}, 0.5)


def test_graph_subsumption_scores_are_the_candidates_share_of_the_votes() -> None:
    """A <- B <- C, A <- D (cosine in the plane); the child sits between B and C: with k = 2 its neighbours C
    and B vote for themselves and their ancestors; a candidate's score is its vote over their total weight."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch

    from lorentz_rag.eval.subsumption import graph_subsumption_scores
    from lorentz_rag.search.graph_knn import ConceptGraph, GraphKnnSettings

    def unit(deg: float) -> list[float]:
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]

    ids = ["A", "B", "C", "D"]
    graph = ConceptGraph(
        ids,
        ids,
        ["a", "b", "c", "d"],
        torch.tensor([0, 1, 2, 3]),
        torch.tensor([unit(90), unit(0), unit(10), unit(-60)]),
        [[], [0], [1], [0]],
        similarity="cosine",
        curvature=None,
        settings=GraphKnnSettings(k=2, temperature=0.5, hop_discount=0.5),
    )

    class Model:
        def encode(self, texts: list[str], prompt_type: str, **_: object) -> torch.Tensor:
            assert prompt_type == "query"
            return torch.tensor([unit(6.0) for _ in texts])

    rows = [{"child": "X", "child_name": "x", "candidate": c} for c in ("A", "B", "C", "D", "gone")]
    scores = graph_subsumption_scores(Model(), graph, rows)
    s_b, s_c = math.cos(math.radians(6)), math.cos(math.radians(4))
    w_b, w_c = math.exp((s_b - s_c) / 0.5), 1.0
    total = w_b + w_c
    hand = [(0.25 * w_c + 0.5 * w_b) / total, (0.5 * w_c + w_b) / total, w_c / total, 0.0, 0.0]
    assert scores.tolist() == pytest.approx(hand, rel=1e-6)


def test_the_combined_table_reads_every_committed_row() -> None:
    """``--table`` on the committed results: one table per taxonomy with the zero-shot, single-channel,
    graph-kNN, two-channel and (WordNet) HiT rows, each naming its source file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_taxonomy_table", REPO / "benchmarks" / "bench_taxonomy.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = REPO / "benchmarks" / "results"
    for taxonomy in ("wordnet", "icd10cm"):
        rows = {row: (cells, source) for row, cells, source in bench.combined_rows(results, taxonomy)}
        for row in ("zero-shot MiniLM (S)", "single-channel head recipe, HyTE-H", "graph-kNN", "H^64 alone"):
            assert row in rows, (taxonomy, row)
        assert "graph-kNN + H^64 (the recipe's model)" in rows
        assert all(len(cells) == len(bench.TABLE_COLUMNS) for cells, _ in rows.values())
        # S is untouched by the two-channel rows: their synonym and faq-dev cells are zero-shot's.
        assert rows["H^64 alone"][0][2:4] == rows["zero-shot MiniLM (S)"][0][2:4]
    wordnet = [row for row, _, _ in bench.combined_rows(results, "wordnet")]
    assert any(row.startswith("HiT") for row in wordnet) and any(row.startswith("S + HiT") for row in wordnet)
    text = bench.combined_table(results, ["wordnet"])
    assert text.startswith("# Every taxonomy row") and "`two_channel.json`" in text
