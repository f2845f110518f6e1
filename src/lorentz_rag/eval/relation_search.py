"""Relation-aware search over a :class:`lorentz_rag.eval.index.VectorIndex`: ``broader`` / ``narrower``.

The scores (:mod:`lorentz_rag.geometry.relation`) are not what FAISS searches, so the index's own exact
similarity search supplies candidates and they are re-scored in float64:

1. fetch the ``f`` documents most *similar* to the query (``flat``: the exact top ``f`` by the model's
   distance, :meth:`VectorIndex.search_embeddings`); every document left out is at distance ``>= D``, the
   largest distance fetched;
2. score the candidates with the relation score in float64 (from the stored float32 vectors), rank them,
   ties to the earlier document;
3. **certify** (``flat``): no document left out can score above ``relation_upper_bound(D, r(q), R)``
   (``R`` bounds every stored radius); if the ``k``-th score is not above it, double ``f`` for that query,
   up to the whole corpus (brute force).

So ``flat`` results are **exact**: equal to ranking every document by the relation score in float64
(tested against brute force). ``hnsw`` candidates are approximate, so its relation results are too (one
round of ``f`` candidates, no certificate). Cosine indexes have no radius and are refused
(:func:`lorentz_rag.geometry.relation.check_relation`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry import similarity as similarity_fns
from lorentz_rag.geometry.relation import check_relation, radius, relation_score, relation_upper_bound

__all__ = ["relation_search"]


def _points(index: Any, q: Tensor) -> Tensor:
    """Query embeddings ``[n, D]`` as float64 points the way the index stores documents (hyperbolic:
    re-lifted from the space coordinates)."""
    q = q.detach().to(torch.float64)
    if index.similarity in similarity_fns.HYPERBOLIC_KINDS:
        return lorentz.lift(q[..., 1:], index.curvature)
    return q


def _documents(index: Any, positions: Tensor) -> Tensor:
    """The stored document points ``[n, f, D]`` (float64) at ``positions`` ``[n, f]``."""
    flat = positions.reshape(-1).numpy()
    vecs = torch.from_numpy(index.faiss_index.reconstruct_batch(flat))[:, : index.dim]
    return vecs.to(torch.float64).reshape(*positions.shape, index.dim)


def _max_radius(index: Any) -> float:
    """A bound on every stored document's radius from the largest stored norm ``index.max_norm`` (hyperbolic:
    ``|x_s| <= |x|``, so ``r <= asinh(sqrt(c) max_norm) / sqrt(c)``; Euclidean: ``|x| <=`` the stored
    ``|(x, -|x|^2/2)|``)."""
    if index.similarity in similarity_fns.HYPERBOLIC_KINDS:
        sc = math.sqrt(index.curvature)
        return math.asinh(sc * index.max_norm) / sc
    return float(index.max_norm)


def relation_search(
    index: Any, queries: Tensor, k: int, relation: str, radius_weight: float
) -> tuple[Tensor, Tensor]:
    """Top-``k`` documents of ``index`` for query embeddings ``[n, D]`` by ``relation`` (``broader`` or
    ``narrower``): (scores float64 ``[n, k']``, positions int64 ``[n, k']``), best first, ``k' = min(k, len)``.
    Exact for ``flat`` indexes, approximate for ``hnsw`` (module docstring)."""
    check_relation(relation, index.similarity, radius_weight)
    queries = torch.as_tensor(queries)
    queries = queries.unsqueeze(0) if queries.ndim == 1 else queries
    kind, c = index.similarity, index.curvature
    q = _points(index, queries)
    n_docs = len(index)
    k_eff = min(k, n_docs)
    out_scores = torch.empty(q.shape[0], k_eff, dtype=torch.float64)
    out_pos = torch.empty(q.shape[0], k_eff, dtype=torch.int64)
    if q.shape[0] == 0 or n_docs == 0:
        return out_scores, out_pos
    r_q, r_max = radius(q, kind, c), _max_radius(index)
    fetch = min(n_docs, max(4 * k_eff, k_eff + 64))
    pending = torch.arange(q.shape[0])
    while len(pending):
        _, cand = index.search_embeddings(queries[pending], fetch)
        cand = torch.sort(cand, dim=1).values  # document order: the stable sort breaks ties by position
        x = _documents(index, cand)
        qq = q[pending].unsqueeze(1)
        scores = relation_score(qq, x, relation, kind, c, radius_weight)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k_eff]
        top = scores.gather(1, order)
        out_scores[pending], out_pos[pending] = top, cand.gather(1, order)
        if index.kind != "flat" or fetch >= n_docs:
            break
        # Every document not fetched is at least as far as the farthest fetched one.
        dist = -relation_score(qq, x, relation, kind, c, radius_weight=0.0)
        bound = relation_upper_bound(dist.max(dim=1).values, r_q[pending], r_max, relation, radius_weight)
        kth = top[:, -1]
        pending = pending[~(kth > bound + 1e-9 * (1.0 + bound.abs()))]
        fetch = min(n_docs, 2 * fetch)
    return out_scores, out_pos
