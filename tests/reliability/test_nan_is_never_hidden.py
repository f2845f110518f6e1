"""NaN embeddings are refused, never scored as ties (which used to give nDCG@10 11.36)."""

from __future__ import annotations

import pytest
import torch

from lorentz_rag import cli
from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.eval.mteb_adapter import MTEBEncoder
from lorentz_rag.eval.retrieval import evaluate_beir, exact_search
from lorentz_rag.geometry import lorentz
from lorentz_rag.models import load_model
from lorentz_rag.models.base import NonFiniteEmbeddingError

from .conftest import DOCS, run_main


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distances_propagate_nan_and_keep_zero_self_distance_with_finite_gradient(dtype):
    x = lorentz.expmap0(torch.randn(4, 5, dtype=dtype, generator=torch.Generator().manual_seed(0)), 1.0)
    y = x.clone()
    y[1, 2] = float("nan")
    d = lorentz.geodesic_distance(x, y, 1.0)
    assert d.dtype == dtype
    assert torch.isnan(d[1]) and torch.equal(d[[0, 2, 3]], torch.zeros(3, dtype=dtype))
    pairwise = lorentz.pairwise_geodesic_distance(x, y, 1.0)
    assert torch.isnan(pairwise[:, 1]).all() and torch.isfinite(pairwise[:, [0, 2, 3]]).all()
    assert torch.isnan(lorentz.radius(y, 1.0)[1]) and torch.isnan(lorentz.sq_distance(x, y, 1.0)[1])
    # d(x, x) = 0 exactly, with a finite (zero) gradient.
    p = x.clone().requires_grad_(True)
    dist = lorentz.geodesic_distance(p, p.detach().clone(), 1.0)
    assert torch.equal(dist, torch.zeros(4, dtype=dtype))
    dist.sum().backward()
    assert torch.isfinite(p.grad).all()


def test_exact_search_refuses_nan_scores_instead_of_ranking_them_as_ties():
    docs = lorentz.expmap0(torch.randn(5, 3, dtype=torch.float64), 1.0)
    queries = docs[:2].clone()
    queries[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN similarity"):
        exact_search(queries, docs, 3, "geodesic", 1.0)


def test_encode_refuses_nan_embeddings_naming_how_many_and_the_first(nan_model_dir):
    model = load_model(nan_model_dir)
    with pytest.raises(NonFiniteEmbeddingError, match=r"for 2 of 2 texts, the first at position 0: 'alpha'"):
        model.encode(["alpha", "beta"])


def test_eval_beir_with_a_nan_model_fails_with_one_error_line(nan_model_dir, beir_dir, capsys):
    status, out, err = run_main(
        cli.main, ["eval", "beir", "--model", str(nan_model_dir), "--data", str(beir_dir)], capsys
    )
    assert status == 2
    assert err.startswith("error: the model produced NaN or infinite embeddings for 5 of 5 texts")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "ndcg" not in out


def test_mteb_adapter_and_index_refuse_nan_embeddings(nan_model_dir, tiny_model_dir):
    nan_model = load_model(nan_model_dir)
    with pytest.raises(NonFiniteEmbeddingError):
        MTEBEncoder(nan_model).encode([{"text": ["a", "b"]}], prompt_type=None)
    with pytest.raises(NonFiniteEmbeddingError):
        VectorIndex.from_model(nan_model, [f"d{i}" for i in range(len(DOCS))], DOCS)
    # An index built with a good model refuses NaN query embeddings too.
    good = load_model(tiny_model_dir)
    index = VectorIndex.from_model(good, [f"d{i}" for i in range(len(DOCS))], DOCS)
    bad_queries = good.encode(["what is a list"], prompt_type="query")
    bad_queries[0, 3] = float("nan")
    with pytest.raises(NonFiniteEmbeddingError, match="query"):
        index.search_embeddings(bad_queries, 2)


def test_evaluate_beir_refuses_a_nan_model_through_the_api(nan_model_dir, beir_dir):
    with pytest.raises(NonFiniteEmbeddingError):
        evaluate_beir(load_model(nan_model_dir), beir_dir)
