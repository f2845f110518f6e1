"""The exact hyperbolic vector index: equal to brute force (also far from the origin), HNSW recall, I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from eval_fake_models import HashingModel, random_hyperboloid

from lorentz_rag import cli
from lorentz_rag.data.beir import read_corpus
from lorentz_rag.eval import index as index_module
from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.eval.retrieval import exact_search
from lorentz_rag.geometry import lorentz


def _brute_force(q32: torch.Tensor, x32: torch.Tensor, k: int, similarity: str, c: float | None):
    """Element-wise float64 scores of every pair, stable sort (ties to the earlier document)."""
    if similarity == "cosine":
        qn = torch.nn.functional.normalize(q32.double(), dim=-1)
        xn = torch.nn.functional.normalize(x32.double(), dim=-1)
        xn = torch.nn.functional.normalize(xn.float().double(), dim=-1)  # the index stores float32 units
        qn = torch.nn.functional.normalize(qn, dim=-1)
        s = (qn.unsqueeze(1) * xn.unsqueeze(0)).sum(-1)
    else:
        q64 = lorentz.lift(q32[:, 1:].double(), c)
        x64 = lorentz.lift(x32[:, 1:].double(), c)
        if similarity == "geodesic":
            s = -lorentz.geodesic_distance(q64.unsqueeze(1), x64.unsqueeze(0), c)
        else:
            s = lorentz.inner(q64.unsqueeze(1), x64.unsqueeze(0)) + 1.0 / c
    top = torch.sort(s, dim=1, descending=True, stable=True)
    return top.values[:, :k], top.indices[:, :k]


def _record_fetches(index):
    fetches = []
    search = index._faiss_search

    def recording(queries, fetch):
        fetches.append(fetch)
        return search(queries, fetch)

    index._faiss_search = recording
    return fetches


def _far_cluster(n_docs=400, n_queries=30, d=24, c=1.0, seed=0):
    """Points near one point at x0 ~ 1e3 (radius ~7.6): many near-ties, plus exact duplicates."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.normalize(torch.randn(d, generator=g, dtype=torch.float64), dim=0) * 7.6
    tangents = base + 1e-3 * torch.randn(n_docs, d, generator=g, dtype=torch.float64)
    docs = lorentz.expmap0(tangents, c).float()
    docs = torch.cat([docs, docs[:25], docs[100:110]])  # duplicates -> ties broken by document order
    q_tangents = base + 1e-3 * torch.randn(n_queries, d, generator=g, dtype=torch.float64)
    queries = torch.cat([lorentz.expmap0(q_tangents, c).float(), docs[3:8]])
    return docs, queries


@pytest.mark.parametrize("similarity", ["geodesic", "lorentz_inner"])
def test_flat_equals_brute_force_far_from_the_origin(similarity):
    docs, queries = _far_cluster()
    assert docs[:, 0].min() > 900  # x0 ~ 1e3
    index = VectorIndex.from_embeddings(
        [f"d{i}" for i in range(len(docs))], docs, similarity=similarity, curvature=1.0
    )
    fetches = _record_fetches(index)
    scores, pos = index.search_embeddings(queries, 10)
    # float32 cannot certify these near-ties: the fetch is extended (here up to the whole corpus).
    assert fetches[0] == 26 and fetches[-1] == len(docs)
    ref_scores, ref_pos = _brute_force(queries, docs, 10, similarity, 1.0)
    assert torch.equal(pos, ref_pos)
    # lorentz_inner: the index evaluates <q, x>_L + 1/c as -2 sinh^2(d/2), the reference in the inner-
    # product form, which cancels at x0 ~ 1e3 (absolute error ~1e6 * eps).
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-8)
    if similarity == "geodesic":
        # The same element-wise float64 formula on tensors of other shapes: torch's vectorised sinh and the
        # scalar one that ends each loop (and each thread's chunk) can differ in the last bit.
        torch.testing.assert_close(scores, ref_scores, rtol=1e-12, atol=1e-12)
    assert scores.dtype == torch.float64 and pos.dtype == torch.int64
    # The float32 inner products alone cannot rank these points: FAISS's own order differs somewhere.
    raw = index.faiss_index.search(
        lorentz.ip_query(lorentz.lift(queries[:, 1:].double(), 1.0)).float().numpy(), 10
    )[1]
    assert not np.array_equal(raw, ref_pos.numpy())
    # A query equal to a duplicated document finds all its copies first, in document order.
    dup_rows = pos[-5:-2]  # queries docs[3], docs[4], docs[5] (each also at position 400 + i)
    for i, row in zip((3, 4, 5), dup_rows.tolist()):
        assert row[:2] == [i, 400 + i]


@pytest.mark.parametrize("similarity", ["geodesic", "lorentz_inner", "cosine"])
def test_flat_equals_brute_force_random(similarity):
    docs = random_hyperboloid(3000, 16, c=0.5, radius=3.0, seed=1).float()
    queries = random_hyperboloid(50, 16, c=0.5, radius=3.0, seed=2).float()
    c = None if similarity == "cosine" else 0.5
    index = VectorIndex.from_embeddings(
        [str(i) for i in range(len(docs))], docs, similarity=similarity, curvature=c
    )
    fetches = _record_fetches(index)
    scores, pos = index.search_embeddings(queries, 20)
    assert fetches == [40]  # certified in one round
    ref_scores, ref_pos = _brute_force(queries, docs, 20, similarity, c)
    assert torch.equal(pos, ref_pos)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-12)
    if similarity == "geodesic":  # the evaluation's blocked search agrees too
        _, eval_pos = exact_search(queries, docs, 20, "geodesic", 0.5)
        assert torch.equal(pos, eval_pos)


def test_k_larger_than_the_corpus_and_single_query():
    docs = random_hyperboloid(7, 4, seed=3).float()
    index = VectorIndex.from_embeddings(list("abcdefg"), docs, similarity="geodesic", curvature=1.0)
    scores, pos = index.search_embeddings(docs[2], 50)
    assert pos.shape == (1, 7) and pos[0, 0].item() == 2 and scores[0, 0].item() == 0.0
    assert sorted(pos[0].tolist()) == list(range(7))


def test_save_load_round_trip(tmp_path):
    docs = random_hyperboloid(500, 8, c=2.0, seed=4).float()
    queries = random_hyperboloid(20, 8, c=2.0, seed=5).float()
    ids = [f"doc-{i}" for i in range(500)]
    for kind in ("flat", "hnsw"):
        index = VectorIndex.from_embeddings(
            ids, docs, similarity="geodesic", curvature=2.0, kind=kind, model_path="/m"
        )
        before = index.search_embeddings(queries, 10)
        index.save(tmp_path / kind)
        loaded = VectorIndex.load(tmp_path / kind)
        after = loaded.search_embeddings(queries, 10)
        assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
        assert loaded.doc_ids == ids and loaded.curvature == 2.0 and loaded.kind == kind
        assert loaded.model_path == "/m" and loaded.similarity == "geodesic"
    with pytest.raises(FileNotFoundError, match=r"index\.json"):
        VectorIndex.load(tmp_path / "missing")


def test_hnsw_recall():
    docs = random_hyperboloid(5000, 32, radius=2.0, seed=6).float()
    queries = random_hyperboloid(200, 32, radius=2.0, seed=7).float()
    ids = [str(i) for i in range(len(docs))]
    hnsw = VectorIndex.from_embeddings(
        ids, docs, similarity="geodesic", curvature=1.0, kind="hnsw", ef_search=64
    )
    _, pos = hnsw.search_embeddings(queries, 10)
    _, ref = _brute_force(queries, docs, 10, "geodesic", 1.0)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos.tolist(), ref.tolist())])
    assert recall >= 0.9, recall
    # Whatever HNSW finds is re-scored exactly: each returned score is the true -d(q, x).
    scores, pos = hnsw.search_embeddings(queries[:5], 10)
    x = lorentz.lift(docs[pos].double()[..., 1:], 1.0)
    true = -lorentz.geodesic_distance(lorentz.lift(queries[:5, 1:].double(), 1.0).unsqueeze(1), x, 1.0)
    torch.testing.assert_close(scores, true, rtol=0, atol=1e-12)


def test_from_model_and_text_search():
    model = HashingModel(16)
    texts = [f"document number {i} about topic {i % 7}" for i in range(60)]
    index = VectorIndex.from_model(model, [f"d{i}" for i in range(60)], texts)
    assert model.calls[-1] == ("document", 60)
    hits = index.search(model, ["document number 5 about topic 5", "topic 3"], k=3)
    assert model.calls[-1] == ("query", 2)
    assert len(hits) == 2 and all(len(h) == 3 for h in hits)
    q = model.encode(["document number 5 about topic 5"], prompt_type="query")
    d = model.encode(texts, prompt_type="document")
    _, ref = _brute_force(q, d, 3, "geodesic", 1.0)
    assert [doc for doc, _ in hits[0]] == [f"d{i}" for i in ref[0].tolist()]
    with pytest.raises(ValueError, match="curvature"):
        index.search(HashingModel(16, c=2.0), ["x"], k=1)


def test_cli_index_build_and_search(tmp_path, monkeypatch, capsys):
    model = HashingModel(16)
    monkeypatch.setattr(index_module, "load_model", lambda path: model)
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"_id": f"id{i}", "title": f"T{i}", "text": f"body text {i}"} for i in range(30)]
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert (
        cli.main(
            [
                "index",
                "build",
                "--model",
                str(tmp_path),
                "--corpus",
                str(corpus),
                "--out",
                str(tmp_path / "ix"),
            ]
        )
        == 0
    )
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["n_docs"] == 30 and meta["model_path"] == str(tmp_path.resolve())
    capsys.readouterr()
    assert cli.main(["search", "--index", str(tmp_path / "ix"), "T7 body text 7", "-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert "query: T7 body text 7" in printed
    hits = VectorIndex.load(tmp_path / "ix").search(model, ["T7 body text 7"], 2)[0]
    assert hits[0][0] == "id7" and hits[0][0] in printed.splitlines()[1]


def test_read_corpus_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: duplicate document id"):
        read_corpus(bad)
    bad.write_text('{"_id": "a"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_corpus(bad)
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"_id": "a", "title": "T", "text": " x "}\n')
    assert read_corpus(ok) == (["a"], ["T  x"])
