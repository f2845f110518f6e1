"""Relation-aware search over the vector index: the flat index's broader / narrower results equal a float64
brute-force ranking of every document (exact, through the certified candidate expansion); HNSW is
approximate; cosine indexes are refused."""

from __future__ import annotations

import pytest
import torch

from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry.relation import relation_score

C = 0.8


def _corpus(kind: str, n: int, d: int = 12, seed: int = 0) -> torch.Tensor:
    """Points with radii spread from 0.1 to 4 (a hierarchy's range), float32 as models produce them."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    # Few directions with jitter: many candidates share a ray, as ancestors and descendants do.
    directions = torch.nn.functional.normalize(directions[torch.arange(n) % 7] + 0.3 * directions, dim=-1)
    radii = 0.1 + 3.9 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    v = directions * radii
    return (lorentz.expmap0(v, C) if kind == "geodesic" else v).to(torch.float32)


def _brute_force(index: VectorIndex, q: torch.Tensor, k: int, relation: str, weight: float):
    docs = torch.from_numpy(index.faiss_index.reconstruct_n(0, len(index)))[:, : index.dim].double()
    qq = q.double()
    if index.similarity == "geodesic":
        qq = lorentz.lift(qq[:, 1:], C)
    # Element-wise (every query against every document), the accurate form: identical points score 0.
    scores = relation_score(qq[:, None], docs[None], relation, index.similarity, index.curvature, weight)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), order


@pytest.mark.parametrize("similarity", ["geodesic", "euclidean"])
@pytest.mark.parametrize("relation", ["broader", "narrower"])
@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_flat_relation_search_is_exact_against_brute_force(
    similarity: str, relation: str, weight: float
) -> None:
    emb = _corpus(similarity, 800)
    index = VectorIndex.from_embeddings(
        [f"d{i}" for i in range(len(emb))],
        emb,
        similarity=similarity,
        curvature=C if similarity == "geodesic" else None,
    )
    queries = emb[:25]  # corpus members (each scores itself 0: the maximum) ...
    queries = torch.cat([queries, _corpus(similarity, 25, seed=5)])  # ... and new points
    for k in (1, 10, 300):
        scores, pos = index.search_embeddings(queries, k, relation=relation, radius_weight=weight)
        ref_scores, ref_pos = _brute_force(index, queries, k, relation, weight)
        assert torch.equal(pos, ref_pos), (k, (pos != ref_pos).sum())
        torch.testing.assert_close(scores, ref_scores, rtol=1e-12, atol=1e-12)


def test_relation_search_differs_from_similarity_and_hnsw_is_close() -> None:
    emb = _corpus("geodesic", 800, seed=2)
    ids = [f"d{i}" for i in range(len(emb))]
    flat = VectorIndex.from_embeddings(ids, emb, similarity="geodesic", curvature=C)
    queries = emb[:20]
    _, similar = flat.search_embeddings(queries, 10)
    _, broader = flat.search_embeddings(queries, 10, relation="broader")
    assert not torch.equal(similar, broader)
    # Broader results lie nearer the centre than similar ones, narrower results further out.
    r = lorentz.radius(emb.double(), C)
    _, narrower = flat.search_embeddings(queries, 10, relation="narrower")
    assert float(r[broader].mean()) < float(r[similar].mean()) < float(r[narrower].mean())
    hnsw = VectorIndex.from_embeddings(ids, emb, similarity="geodesic", curvature=C, kind="hnsw")
    _, approx = hnsw.search_embeddings(queries, 10, relation="broader")
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(approx, broader)) / broader.numel()
    assert overlap >= 0.8


def test_cosine_indexes_and_unknown_relations_are_refused() -> None:
    emb = torch.randn(20, 6)
    index = VectorIndex.from_embeddings([str(i) for i in range(20)], emb, similarity="cosine")
    with pytest.raises(ValueError, match="no radius"):
        index.search_embeddings(emb[:2], 3, relation="broader")
    assert index.search_embeddings(emb[:2], 3, relation="similar")[1].shape == (2, 3)
    with pytest.raises(ValueError, match="unknown relation"):
        index.search_embeddings(emb[:2], 3, relation="sideways")
