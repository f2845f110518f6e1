"""benchmarks/peers/hit/score_hit.py on a small synthetic tree: HiT's outputs written the way run_hit.py writes
them (random points on HiT's Poincaré ball), scored with the zero-shot packaged all-MiniLM-L6-v2 as S. Checks
the files, the ranges and grids, the S + HiT row against an independent recomputation (geoopt's distance,
``mix_scores``, pytrec_eval), a tune half without judged queries, ``--no-s-mix``, and the closed-form
distance against geoopt's."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from lorentz_rag.data.beir import document_text, load_beir
from lorentz_rag.data.taxonomy_sets import taxonomy_build_command
from lorentz_rag.eval.retrieval import compute_metrics
from lorentz_rag.geometry.relation import mix_scores

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
from test_tune_graph_knn import _taxonomy  # noqa: E402

#: geoopt scripts its math with torch.jit.script, which recent torch deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

HIT = REPO / "benchmarks" / "peers" / "hit"
DIM = 8  # HiT's curvature is 1 / dim
#: The closed form against geoopt with a float64 curvature (relative): both are float64 throughout.
EXACT_TOLERANCE = 1e-9
#: Against geoopt as HiT builds it (its curvature a float32 parameter), points at most 0.9 of the radius.
HIT_GEOOPT_TOLERANCE = 1e-6


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def s_model() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lorentz_rag

    return lorentz_rag.load_model("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hit_sets")
    out = root / "sets"
    taxonomy_build_command(str(_taxonomy(root / "tree.jsonl")), str(out), held_out_fraction=0.25)
    return out


def _ball_points(n: int, c: float, top: float, seed: int) -> np.ndarray:
    """``n`` random points of the Poincaré ball of curvature ``c``, norms uniform up to ``top`` x the radius."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * (top / np.sqrt(c)) * rng.uniform(0.0, 1.0, (n, 1))


def _hit_outputs(sets: Path, out: Path) -> Path:
    """``points.npy``, ``texts.json`` and ``run.json`` as run_hit.py writes them (its own text collection and
    geoopt check), with random points in place of a trained HiT."""
    run_hit = _load("run_hit", HIT / "run_hit.py")
    concepts = {str(r["id"]): r for r in run_hit.read_jsonl(sets / "train.jsonl.gz")}
    collected = run_hit.collect_texts(sets, concepts, ["name", "text"])
    c = 1.0 / DIM
    points = _ball_points(len(collected["texts"]), c, 0.9, seed=0).astype(np.float32)
    model = SimpleNamespace(manifold=SimpleNamespace(c=c))
    out.mkdir(parents=True)
    np.save(out / "points.npy", points)
    (out / "texts.json").write_text(json.dumps(collected["texts"]) + "\n", encoding="utf-8")
    run = {
        "command": "python benchmarks/peers/hit/run_hit.py --sets SETS --out OUT",
        "options": {
            "batch_size": 32,
            "negatives": "hard",
            "max_minutes": 0.0,
            "subsumption_fields": ["name", "text"],
        },
        "versions": {k: "synthetic" for k in run_hit.VERSIONED},
        "machine": {"torch_threads": 1},
        "data": {"triplets": 0},
        "training": {"steps": 0, "train_seconds": 0.0, "epochs_done": 0.0, "curvature": c, "embed_dim": DIM},
        "encoding": {"texts": len(collected["texts"]), "counts": collected["counts"]},
        "geoopt_check": run_hit.geoopt_check(model, points),
    }
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    return out


def _in_range(value: float | None) -> bool:
    return value is not None and 0.0 <= value <= 100.0


def _recomputed(sets: Path, hit: Path, relation: str, part: str, lam: float, w: float, model: Any) -> float:
    """Mean nDCG@10 x 100 of S + HiT on one half, computed apart from the script: geoopt's distance and
    norm for HiT's score, the model's cosine for S, ``mix_scores`` (S itself at ``w = 0``), pytrec_eval."""
    from geoopt.manifolds import PoincareBall

    texts = json.loads((hit / "texts.json").read_text(encoding="utf-8"))
    points = torch.from_numpy(np.load(hit / "points.npy").astype(np.float64))
    row = {t: i for i, t in enumerate(texts)}
    data = load_beir(sets / "eval" / relation, part)
    query_ids = list(data.queries)
    doc_ids = list(data.corpus)
    q_texts = [data.queries[q] for q in query_ids]
    d_texts = [document_text(data.corpus[d]) for d in doc_ids]
    ball = PoincareBall(c=torch.tensor(1.0 / DIM, dtype=torch.float64))
    q, x = points[[row[t] for t in q_texts]], points[[row[t] for t in d_texts]]
    dist = ball.dist(q[:, None, :], x[None, :, :])
    qn, xn = ball.dist0(q)[:, None], ball.dist0(x)[None, :]
    h = -(dist + lam * (xn - qn)) if relation == "broader" else -(dist + lam * (qn - xn))
    sq = torch.nn.functional.normalize(model.encode(q_texts, prompt_type="query").double(), dim=-1)
    sd = torch.nn.functional.normalize(model.encode(d_texts, prompt_type="document").double(), dim=-1)
    s = sq @ sd.T
    scores = mix_scores(s, h, w) if w > 0 else s
    top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :10]
    ranked = {qid: [doc_ids[p] for p in r] for qid, r in zip(query_ids, top.tolist())}
    return 100.0 * compute_metrics(data.qrels, ranked)["ndcg@10"]


def test_scores_hit_and_s_plus_hit(tmp_path: Path, sets: Path, s_model: Any) -> None:
    score = _load("score_hit", HIT / "score_hit.py")
    score.load_s_model = lambda: s_model
    hit = _hit_outputs(sets, tmp_path / "hit")
    score.main(["--sets", str(sets), "--points", str(hit), "--out", str(tmp_path / "out")])

    result = json.loads((tmp_path / "out" / "hit_scores.json").read_text(encoding="utf-8"))
    text = (tmp_path / "out" / "hit_scores.md").read_text(encoding="utf-8")
    assert "| broader | S + HiT |" in text and "| narrower | S |" in text
    assert result["distance_check"]["pairs"] == 64
    assert result["similarity_channel"]["model"] == "all-MiniLM-L6-v2"
    assert result["similarity_channel"]["similarity"] == "cosine"

    lambdas = set(score.BASE_GRID)
    for key, entry in result["retrieval"].items():
        relation, documents = key.split("/")
        assert entry["tune"]["queries"] > 0 and entry["report"]["queries"] > 0, key
        assert entry["lambda"] in lambdas or entry["lambda"] in dict(entry["tune_grid"]), key
        assert 0.0 <= entry["lambda"] <= score.MAX_LAMBDA
        assert _in_range(entry["tune"]["ndcg@10"]) and _in_range(entry["report"]["ndcg@10"])
        assert all(_in_range(v) for v in entry["report"]["per_query"].values())
        assert len(entry["report"]["per_query"]) == entry["report"]["queries"]
        if documents == "name":  # the names diagnostic has no S rows
            assert "with_similarity" not in entry
            continue
        rows = entry["with_similarity"]
        s, mixed = rows["S"], rows["S + HiT"]
        assert mixed["w"] in score.WEIGHTS and mixed["lambda"] == entry["lambda"]
        grid = dict(mixed["tune_grid"])
        assert sorted(grid) == list(score.WEIGHTS)
        assert all(_in_range(v) for v in grid.values())
        # The choice: the best tune mean, ties to the smaller w; w = 0 is S exactly.
        best = max(grid.values())
        assert mixed["w"] == min(w for w, v in grid.items() if v == best)
        assert mixed["tune"]["ndcg@10"] == grid[mixed["w"]]
        assert grid[0.0] == s["tune"]["ndcg@10"]
        assert mixed["tune"]["ndcg@10"] >= s["tune"]["ndcg@10"]
        for row in (s, mixed):
            assert _in_range(row["report"]["ndcg@10"])
            assert set(row["report"]["per_query"]) == set(entry["report"]["per_query"])
            assert all(_in_range(v) for v in row["report"]["per_query"].values())
        diff = mixed["report_minus_S"]
        assert diff["n_queries"] == entry["report"]["queries"]
        assert diff["low"] <= diff["mean"] <= diff["high"]
        gaps = [mixed["report"]["per_query"][q] - v for q, v in s["report"]["per_query"].items()]
        assert diff["mean"] == pytest.approx(float(np.mean(gaps)), abs=1e-9)
        # The same numbers again, apart from the script.
        lam, w = mixed["lambda"], mixed["w"]
        assert _recomputed(sets, hit, relation, "tune", lam, 0.0, s_model) == pytest.approx(
            s["tune"]["ndcg@10"], abs=1e-9
        )
        assert _recomputed(sets, hit, relation, "report", lam, w, s_model) == pytest.approx(
            mixed["report"]["ndcg@10"], abs=1e-9
        )

    for key, entry in result["subsumption"].items():
        assert entry["lambda"] in lambdas or entry["lambda"] > max(lambdas), key
        for name in ("f1", "validation_f1", "precision", "recall", "f1_lambda0"):
            assert 0.0 <= entry[name] <= 1.0, (key, name)


def test_a_tune_half_without_judged_queries(tmp_path: Path, sets: Path, s_model: Any) -> None:
    """Documented: no choice is made; lambda = 0 (HiT's distance alone) and w = 0 (S alone)."""
    score = _load("score_hit", HIT / "score_hit.py")
    score.load_s_model = lambda: s_model
    emptied = tmp_path / "sets"
    shutil.copytree(sets, emptied)
    (emptied / "eval" / "narrower" / "qrels" / "tune.tsv").write_text(
        "query-id\tcorpus-id\tscore\n", encoding="utf-8"
    )
    hit = _hit_outputs(sets, tmp_path / "hit")
    score.main(["--sets", str(emptied), "--points", str(hit), "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "hit_scores.json").read_text(encoding="utf-8"))
    entry = result["retrieval"]["narrower/definition"]
    # Exact by construction: with no tune query nothing is chosen, so lambda and w are the literal defaults, and
    # S + HiT at w = 0 ranks by S itself (the same numbers), so its per-query gaps are 0 and their mean is 0.
    assert entry["tune"] == {"queries": 0, "ndcg@10": None} and entry["lambda"] == 0.0
    assert entry["tune_grid"] == [] and not entry["lambda_at_zero"]
    mixed, s = entry["with_similarity"]["S + HiT"], entry["with_similarity"]["S"]
    assert mixed["w"] == 0.0 and mixed["tune_grid"] == [] and mixed["tune"]["ndcg@10"] is None
    assert s["tune"]["ndcg@10"] is None
    assert mixed["report"]["per_query"] == s["report"]["per_query"] and _in_range(s["report"]["ndcg@10"])
    assert mixed["report_minus_S"]["mean"] == 0.0
    assert "| narrower | S + HiT | 0 | 0 | - |" in (tmp_path / "out" / "hit_scores.md").read_text()


def test_no_s_mix_skips_the_similarity_channel(tmp_path: Path, sets: Path) -> None:
    score = _load("score_hit", HIT / "score_hit.py")

    def refuse() -> None:
        raise AssertionError("--no-s-mix must not load the similarity model")

    score.load_s_model = refuse
    hit = _hit_outputs(sets, tmp_path / "hit")
    score.main(["--sets", str(sets), "--points", str(hit), "--no-s-mix"])
    result = json.loads((hit / "hit_scores.json").read_text(encoding="utf-8"))
    assert result["similarity_channel"] is None
    assert all("with_similarity" not in e for e in result["retrieval"].values())
    assert "S + HiT" not in (hit / "hit_scores.md").read_text(encoding="utf-8")


def test_closed_form_distance_agrees_with_geoopt() -> None:
    """Relative gaps: within EXACT_TOLERANCE of geoopt with a float64 curvature up to 0.999 of the radius, and
    within HIT_GEOOPT_TOLERANCE of geoopt as HiT builds it (float32 curvature) up to 0.9 of the radius."""
    from geoopt.manifolds import PoincareBall

    score = _load("score_hit", HIT / "score_hit.py")
    c = 1.0 / DIM
    ball = score.Ball(c)
    for top, reference, tolerance in (
        (0.999, PoincareBall(c=torch.tensor(c, dtype=torch.float64)), EXACT_TOLERANCE),
        (0.9, PoincareBall(c=c), HIT_GEOOPT_TOLERANCE),
    ):
        a = torch.from_numpy(_ball_points(40, c, top, seed=1))
        b = torch.from_numpy(_ball_points(30, c, top, seed=2))
        ref = reference.dist(a[:, None, :], b[None, :, :])
        assert ((ball.pairwise(a, b) - ref).abs() / ref).max() < tolerance
        ref_rows = reference.dist(a[:30], b)
        assert ((ball.rowwise(a[:30], b) - ref_rows).abs() / ref_rows).max() < tolerance
        ref0 = reference.dist0(a)
        assert ((ball.norm(a) - ref0).abs() / ref0).max() < tolerance
    with pytest.raises(ValueError, match="outside the Poincaré ball"):
        ball.norm(torch.full((1, DIM), 2.0))
