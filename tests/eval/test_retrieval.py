"""BEIR retrieval evaluation: hand-computed metrics, an independent re-implementation, blocked search."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch
from eval_fake_models import HashingModel, random_hyperboloid

from lorentz_rag import cli
from lorentz_rag.data.beir import document_text, write_beir
from lorentz_rag.eval import retrieval as retrieval_module
from lorentz_rag.eval.retrieval import (
    METRIC_KEYS,
    compute_metrics,
    evaluate_beir,
    exact_search,
    pairwise_scores,
)
from lorentz_rag.geometry import lorentz


class LookupModel:
    """Returns fixed hyperboloid points for known texts (tangent vectors at the origin, c = 1)."""

    is_hyperbolic = True

    def __init__(self, tangents: dict[str, tuple[float, float]]) -> None:
        self.tangents = tangents
        self.settings = SimpleNamespace(
            model_type="lookup", similarity="geodesic", query_prefix="", document_prefix=""
        )
        self.embedding_dim = 3
        self.seen: list[tuple[str, list[str]]] = []

    def curvature(self) -> torch.Tensor:
        return torch.tensor(1.0)

    def encode(self, texts, prompt_type=None, batch_size=32, **_):
        self.seen.append((prompt_type, list(texts)))
        v = torch.tensor([self.tangents[t] for t in texts], dtype=torch.float64)
        return lorentz.expmap0(v, 1.0).float()


def _five_doc_case(tmp_path):
    # Documents on one geodesic through the origin (tangent (r, 0)); q1 sits at r = 1 on it, q2 at (0, 1)
    # on an orthogonal one. Along a geodesic d = |r - r'|; across orthogonal ones cosh d = cosh r cosh r'.
    corpus = {
        "d1": {"title": "", "text": "one point one"},  # r = 1.1
        "d2": {"title": "Half", "text": "a half"},  # r = 0.5
        "d3": {"title": "", "text": " two and a half "},  # r = 2.5
        "d4": {"title": "", "text": "minus one"},  # r = -1
        "d5": {"title": "", "text": "exactly one"},  # r = 1.0
    }
    tangents = {
        "one point one": (1.1, 0.0),
        "Half a half": (0.5, 0.0),
        "two and a half": (2.5, 0.0),
        "minus one": (-1.0, 0.0),
        "exactly one": (1.0, 0.0),
        "query one": (1.0, 0.0),
        "query two": (0.0, 1.0),
    }
    queries = {"q1": "query one", "q2": "query two", "q3": "query without judgments"}
    qrels = {"q1": {"d2": 1}, "q2": {"d5": 1, "d3": 2}}
    folder = write_beir(tmp_path / "five", corpus, queries, qrels)
    return folder, LookupModel(tangents)


def test_five_documents_by_hand(tmp_path):
    folder, model = _five_doc_case(tmp_path)
    result = evaluate_beir(model, folder, top_k=100)
    # q1 ranking: d5 (0), d1 (0.1), d2 (0.5), d3 (1.5), d4 (2.0): the relevant d2 is 3rd.
    # q2 ranking by |r|: d2 (0.5), d4 = d5 (1.0, an exact tie: d4 first, by document order), d1, d3.
    # So for q2 d5 is 3rd and d3 (gain 2) 5th. trec_eval's own tie-break (by id, descending) would put d5
    # 2nd; the evaluation must keep document order.
    ndcg_q1 = (1 / math.log2(4)) / 1.0
    ndcg_q2 = (1 / math.log2(4) + 2 / math.log2(6)) / (2 / math.log2(2) + 1 / math.log2(3))
    expected = {
        "ndcg@10": (ndcg_q1 + ndcg_q2) / 2,
        "mrr@10": (1 / 3 + 1 / 3) / 2,
        "map@100": (1 / 3 + (1 / 3 + 2 / 5) / 2) / 2,
        "recall@1": 0.0,
        "recall@10": 1.0,
        "recall@100": 1.0,
    }
    assert set(result) == {*METRIC_KEYS, "meta"}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-12), key
    assert result["meta"]["n_queries"] == 2  # q3 has no qrels: excluded
    assert result["meta"]["n_docs"] == 5
    # Documents embedded as title + " " + text, stripped, with the document prompt; queries likewise.
    (doc_kind, doc_texts), (query_kind, query_texts) = model.seen
    assert doc_kind == "document" and query_kind == "query"
    assert doc_texts == ["one point one", "Half a half", "two and a half", "minus one", "exactly one"]
    assert query_texts == ["query one", "query two"]


def test_ties_go_to_the_earlier_document():
    points = random_hyperboloid(6, 4, seed=3)
    docs = torch.cat([points[1:], points[1:2], points[1:2]])  # positions 0, 5 and 6 are the same point
    scores, positions = exact_search(points[1:2], docs, 7, "geodesic", 1.0)
    assert positions[0, :3].tolist() == [0, 5, 6]
    assert scores[0, 0] == scores[0, 1] == scores[0, 2] > scores[0, 3]
    assert scores[0, 0].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("similarity", ["geodesic", "lorentz_inner", "cosine"])
def test_blocked_search_equals_unblocked(similarity):
    x = random_hyperboloid(300, 8, c=0.7, seed=1).float()
    x = torch.cat([x, x[:40]])  # exact duplicates: ties across blocks
    q = random_hyperboloid(23, 8, c=0.7, seed=2).float()
    q = torch.cat([q, x[5:8]])
    c = None if similarity == "cosine" else 0.7
    full_scores = pairwise_scores(q, x, similarity, c)
    assert full_scores.dtype == torch.float64
    reference = torch.sort(full_scores, dim=1, descending=True, stable=True)
    scores, pos = exact_search(q, x, 25, similarity, c, block_size=1000)  # one block: the same products
    assert torch.equal(pos, reference.indices[:, :25])
    assert torch.equal(scores, reference.values[:, :25])
    for block in (1, 7, 64):
        scores, pos = exact_search(q, x, 25, similarity, c, block_size=block)
        # A matrix product of another shape may round differently (~1e-16): documents whose scores agree
        # to that level may swap; everything else is identical.
        torch.testing.assert_close(scores, reference.values[:, :25], rtol=0, atol=1e-12)
        torch.testing.assert_close(full_scores.gather(1, pos), scores, rtol=0, atol=1e-12)
        assert all(len(set(row)) == 25 for row in pos.tolist())
        gaps = (reference.values[:, :25] - reference.values[:, 1:26]) > 1e-9
        for row, ref_row, gap_row in zip(pos.tolist(), reference.indices.tolist(), gaps.tolist()):
            for cut in (i + 1 for i, g in enumerate(gap_row) if g):
                assert set(row[:cut]) == set(ref_row[:cut]), (block, cut)


def test_pairwise_scores_match_the_definitions():
    x = random_hyperboloid(5, 3, c=2.0, seed=4)
    y = random_hyperboloid(4, 3, c=2.0, seed=5)
    geo = pairwise_scores(x, y, "geodesic", 2.0)
    inner = pairwise_scores(x, y, "lorentz_inner", 2.0)
    arg = (-2.0 * lorentz.pairwise_inner(x, y)).clamp_min(1.0)
    torch.testing.assert_close(geo, -torch.acosh(arg) / math.sqrt(2.0), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(inner, lorentz.pairwise_inner(x, y) + 0.5)
    with pytest.raises(ValueError, match="needs the curvature"):
        pairwise_scores(x, y, "geodesic", None)
    with pytest.raises(ValueError, match="unknown similarity"):
        pairwise_scores(x, y, "dot", 1.0)


def _reference_metrics(qrels, ranked):
    """A straightforward re-implementation of the BEIR metrics (no pytrec_eval)."""
    out = {key: [] for key in METRIC_KEYS}
    for qid, rel in qrels.items():
        run = ranked[qid]
        gains = [rel.get(d, 0) for d in run]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:10]))
        ideal = sorted(rel.values(), reverse=True)[:10]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        out["ndcg@10"].append(dcg / idcg if idcg else 0.0)
        first = next((i for i, g in enumerate(gains[:10]) if g > 0), None)
        out["mrr@10"].append(0.0 if first is None else 1.0 / (first + 1))
        n_rel = sum(1 for g in rel.values() if g > 0)
        hits, precisions = 0, []
        for i, g in enumerate(gains[:100]):
            if g > 0:
                hits += 1
                precisions.append(hits / (i + 1))
        out["map@100"].append(sum(precisions) / n_rel if n_rel else 0.0)
        for k in (1, 10, 100):
            found = sum(1 for g in gains[:k] if g > 0)
            out[f"recall@{k}"].append(found / n_rel if n_rel else 0.0)
    return {key: sum(v) / len(v) for key, v in out.items()}


def _random_beir(tmp_path, n_docs=150, n_queries=40, seed=0):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)]
    corpus = {
        f"doc{i}": {
            "title": rng.choice(["", "Title " + rng.choice(words)]),
            "text": " ".join(rng.sample(words, 6)),
        }
        for i in range(n_docs)
    }
    queries = {f"q{i}": " ".join(rng.sample(words, 3)) for i in range(n_queries)}
    qrels = {
        qid: {d: rng.choice([1, 1, 2]) for d in rng.sample(sorted(corpus), rng.randint(1, 4))}
        for qid in list(queries)[:-3]
    }
    return write_beir(tmp_path / "random", corpus, queries, qrels), corpus, queries, qrels


@pytest.mark.parametrize("hyperbolic", [True, False])
def test_matches_an_independent_implementation(tmp_path, hyperbolic):
    folder, corpus, queries, qrels = _random_beir(tmp_path)
    model = HashingModel(12, hyperbolic=hyperbolic)
    result = evaluate_beir(model, folder, top_k=100)
    # Independent route: full score matrix with the element-wise formulas, Python sort with an explicit
    # (score, document order) key.
    doc_ids = list(corpus)
    d = model.encode([document_text(corpus[i]) for i in doc_ids], prompt_type="document").double()
    q = model.encode([queries[i] for i in qrels], prompt_type="query").double()
    if hyperbolic:
        s = -lorentz.geodesic_distance(q.unsqueeze(1), d.unsqueeze(0), 1.0)
    else:
        s = torch.nn.functional.cosine_similarity(q.unsqueeze(1), d.unsqueeze(0), dim=-1)
    ranked = {
        qid: [doc_ids[j] for j in sorted(range(len(doc_ids)), key=lambda j, r=row: (-r[j], j))][:100]
        for qid, row in zip(qrels, s.tolist())
    }
    expected = _reference_metrics(qrels, ranked)
    assert result["meta"]["n_queries"] == len(qrels) == 37
    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-9), key
    assert 0.0 < result["recall@100"] <= 1.0 and result["ndcg@10"] > 0.0
    # Same code path without the model: compute_metrics on the reference ranking.
    assert compute_metrics(qrels, ranked) == pytest.approx(expected, abs=1e-9)


def test_top_k_limits_the_ranking(tmp_path):
    folder, *_ = _random_beir(tmp_path, n_docs=60, n_queries=10, seed=1)
    model = HashingModel(12)
    full = evaluate_beir(model, folder, top_k=100)
    with pytest.warns(UserWarning, match=r"top_k=10 ranks fewer documents than map@100, recall@100"):
        short = evaluate_beir(model, folder, top_k=10)
    for key in ("ndcg@10", "mrr@10", "recall@1", "recall@10"):
        assert short[key] == pytest.approx(full[key], abs=1e-12), key
    # recall@100 of a 10-document ranking would be recall@10 under another name: not reported.
    assert "recall@100" not in short and "map@100" not in short
    assert (
        short["meta"]["dropped_metrics"] == ["map@100", "recall@100"]
        and full["meta"]["dropped_metrics"] == []
    )
    # A corpus no larger than top_k is ranked completely, so every metric means what it says.
    small = evaluate_beir(model, _random_beir(tmp_path / "small", n_docs=8, n_queries=4, seed=1)[0], top_k=10)
    assert set(METRIC_KEYS) <= set(small)


def test_cli_eval_beir_writes_the_metrics(tmp_path, monkeypatch, capsys):
    folder, *_ = _random_beir(tmp_path, n_docs=40, n_queries=8, seed=2)
    model = HashingModel(12)
    monkeypatch.setattr(retrieval_module, "load_model", lambda path: model)
    out = tmp_path / "res" / "metrics.json"
    code = cli.main(
        [
            "eval",
            "beir",
            "--model",
            "some/model",
            "--data",
            str(folder),
            "--top_k",
            "40",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    written = json.loads(out.read_text())
    assert set(written) == {*METRIC_KEYS, "meta"}
    direct = evaluate_beir(model, folder, top_k=40)
    for key in METRIC_KEYS:
        assert written[key] == pytest.approx(direct[key], abs=1e-12)
    assert written["meta"]["model"] == "some/model" and written["meta"]["similarity"] == "geodesic"
    printed = capsys.readouterr().out
    assert "ndcg@10" in printed and f"{100 * direct['ndcg@10']:.2f}" in printed


def test_errors_name_the_problem(tmp_path):
    folder = write_beir(tmp_path / "nojudged", {"d": {"text": "x"}}, {"q": "y"}, {})
    with pytest.raises(ValueError, match="no query"):
        evaluate_beir(HashingModel(4), folder)
    with pytest.raises(ValueError, match="no ranking"):
        compute_metrics({"q": {"d": 1}}, {})


@pytest.mark.parametrize("hyperbolic", [True, False])
def test_faiss_search_gives_the_same_metrics(tmp_path, hyperbolic):
    folder, *_ = _random_beir(tmp_path, n_docs=120, n_queries=20, seed=3)
    model = HashingModel(12, hyperbolic=hyperbolic)
    exact = evaluate_beir(model, folder, top_k=100)
    flat = evaluate_beir(model, folder, top_k=100, search="faiss")
    assert flat["meta"]["search"] == "faiss"
    for key in METRIC_KEYS:
        assert flat[key] == pytest.approx(exact[key], abs=1e-12), key
    with pytest.raises(ValueError, match="search must be one of"):
        evaluate_beir(model, folder, search="annoy")
