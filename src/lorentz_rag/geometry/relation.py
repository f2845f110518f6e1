"""Relation-aware scores: rank candidates that are *broader* or *narrower* than a query, not only similar.

A hierarchy-trained model puts general texts near the centre (small radius ``r``) and specific ones further
out, in the direction of their ancestors (the hierarchy objective's centripetal term). With ``d`` the
model's distance and ``r`` its radius (hyperboloid: ``d`` geodesic, ``r(x) = d(o, x)``; the Euclidean-distance
twin: ``d = |q - x|``, ``r(x) = |x|``), and a radius weight ``lam`` in ``[0, 1]``:

    broader  (q, x) = -d(q, x) - lam * (r(x) - r(q))      favours candidates closer to the centre than q
    narrower (q, x) = -d(q, x) - lam * (r(q) - r(x))      favours candidates further out than q
    similar  (q, x) = the model's own similarity          (lam plays no part)

Properties (tested): higher = better, like every similarity; ``broader(q, x) == narrower(x, q)`` (the pair is
asymmetric: ``broader(q, x) != broader(x, q)`` unless ``r(q) == r(x)``); ``lam = 0`` gives ``-d``, which is the
``geodesic`` / ``euclidean`` similarity (and ranks as ``lorentz_inner``); both scores are ``<= 0`` for ``lam <= 1``
(triangle inequality ``|r(x) - r(q)| <= d(q, x)``), and at ``lam = 1`` ``-broader(q, x) = d(q, x) + d(o, x) -
d(o, q)`` is twice the Gromov product ``(q|o)_x``: 0 exactly for the points of the geodesic (segment) from the
origin to ``q``, i.e. for ideal ancestors, and the farther ``x`` strays from it the lower. Below 1 the nearer
of two ancestors on that geodesic wins (``-(1 - lam) (r(q) - r(x))``), so the parent ranks above the root.

Bounds used by exact search (:meth:`lorentz_rag.eval.index.VectorIndex.search_embeddings`): for a candidate
at distance ``d(q, x) >= D`` from the query, ``broader <= -(1 - lam) D`` and ``broader <= -D + lam r(q)``;
``narrower <= -(1 - lam) D`` and ``narrower <= -D + lam (R - r(q))`` with ``R`` the largest radius in the
corpus (:func:`relation_upper_bound`).

Cosine similarity has no radius (every vector is normalised), so ``broader`` / ``narrower`` are refused for
cosine models with a message that says so: there is nothing in their embeddings that orders general above
specific. Scores are computed in the wider of the inputs' dtype and float32, with finite values and
gradients everywhere, including at ``q == x`` and at the origin.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry import similarity as similarity_fns

__all__ = [
    "DEFAULT_RADIUS_WEIGHT",
    "RELATIONS",
    "check_relation",
    "mix_scores",
    "radius",
    "relation_pairwise",
    "relation_score",
    "relation_upper_bound",
]

RELATIONS = ("similar", "broader", "narrower")
#: The radius weight ``lam`` when none is given: halfway between plain distance (0) and the Gromov product (1).
DEFAULT_RADIUS_WEIGHT = 0.5


def check_relation(relation: str, kind: str, radius_weight: float = DEFAULT_RADIUS_WEIGHT) -> None:
    """Raise a ``ValueError`` for an unknown ``relation``, a weight outside ``[0, 1]``, or ``broader`` /
    ``narrower`` with a similarity that has no radius (cosine)."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; choose one of {list(RELATIONS)}")
    if not 0.0 <= float(radius_weight) <= 1.0:
        raise ValueError(f"radius_weight must lie in [0, 1], got {radius_weight}")
    similarity_fns.check_kind(kind, 1.0)
    if relation != "similar" and kind == "cosine":
        raise ValueError(
            f"relation={relation!r} ranks by radius (general texts near the centre), but this model compares "
            "by cosine similarity, whose embeddings have no radius (they are normalised): only "
            "relation='similar' applies. Use a hyperbolic model or the Euclidean-distance twin (similarity "
            "'euclidean') trained with the hierarchy objective"
        )


def _common(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Both in the wider of their dtypes and float32."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype), b.to(dtype)


def _c(kind: str, c: float | Tensor | None) -> float | Tensor | None:
    if kind in similarity_fns.HYPERBOLIC_KINDS:
        if c is None:
            raise ValueError(f"similarity {kind!r} is hyperbolic and needs the curvature c, got None")
        return c
    return None


def radius(x: Tensor, kind: str, c: float | Tensor | None = None) -> Tensor:
    """``r(x)`` ``[..., D] -> [...]``: ``d(o, x)`` on the hyperboloid (time first), ``|x|`` otherwise."""
    x = x if x.dtype == torch.float64 else x.float()
    cc = _c(kind, c)
    if cc is not None:
        return lorentz.radius(x, cc)
    return similarity_fns.euclidean_distance(x, torch.zeros((), dtype=x.dtype, device=x.device))


def _distance(q: Tensor, x: Tensor, kind: str, c: float | Tensor | None) -> Tensor:
    """Broadcasting distance ``[..., D] x [..., D] -> [...]`` consistent with ``kind``'s ranking."""
    cc = _c(kind, c)
    if cc is not None:
        return lorentz.geodesic_distance(q, x, cc)
    return similarity_fns.euclidean_distance(q, x)


def _combine(d: Tensor, rq: Tensor, rx: Tensor, relation: str, radius_weight: float) -> Tensor:
    sign = 1.0 if relation == "broader" else -1.0
    return -d - float(radius_weight) * sign * (rx - rq)


def relation_score(
    q: Tensor,
    x: Tensor,
    relation: str,
    kind: str,
    c: float | Tensor | None = None,
    radius_weight: float = DEFAULT_RADIUS_WEIGHT,
) -> Tensor:
    """The score of ``x`` for query ``q`` (see the module docstring), broadcasting: ``[..., D] x [..., D] ->
    [...]`` (e.g. ``q[:, None]`` against candidates ``[n, f, D]``). ``similar`` is ``similarity.rowwise``."""
    check_relation(relation, kind, radius_weight)
    q, x = _common(q, x)
    if relation == "similar":
        q, x = torch.broadcast_tensors(q, x)
        return similarity_fns.rowwise(q, x, kind, c)
    d = _distance(q, x, kind, c)
    return _combine(d, radius(q, kind, c), radius(x, kind, c), relation, radius_weight)


def relation_pairwise(
    q: Tensor,
    x: Tensor,
    relation: str,
    kind: str,
    c: float | Tensor | None = None,
    radius_weight: float = DEFAULT_RADIUS_WEIGHT,
) -> Tensor:
    """All scores ``[n, m]`` of queries ``q: [n, D]`` and candidates ``x: [m, D]`` (memory ``O(n m)``, as
    :func:`lorentz_rag.geometry.similarity.pairwise`)."""
    check_relation(relation, kind, radius_weight)
    if relation == "similar":
        return similarity_fns.pairwise(q, x, kind, c)
    q, x = _common(q, x)
    cc = _c(kind, c)
    if cc is not None:
        d = -similarity_fns.pairwise(q, x, "geodesic", cc)
    else:
        d = similarity_fns.pairwise_euclidean_distance(q, x)
    return _combine(
        d, radius(q, kind, c).unsqueeze(-1), radius(x, kind, c).unsqueeze(-2), relation, radius_weight
    )


def relation_upper_bound(
    min_distance: Tensor,
    query_radius: Tensor,
    max_radius: float,
    relation: str,
    radius_weight: float = DEFAULT_RADIUS_WEIGHT,
) -> Tensor:
    """The largest score any candidate at distance ``>= min_distance`` from the query can have ``[n]`` (the
    bounds in the module docstring), for ``broader`` and ``narrower``."""
    lam = float(radius_weight)
    triangle = -(1.0 - lam) * min_distance
    if relation == "broader":
        radial = -min_distance + lam * query_radius
    elif relation == "narrower":
        radial = -min_distance + lam * (max_radius - query_radius)
    else:
        raise ValueError(f"relation_upper_bound is for 'broader' and 'narrower', got {relation!r}")
    return torch.minimum(triangle, radial)


def _standardise(x: Tensor) -> Tensor:
    """Per row: ``(x - mean) / std`` over the row (population std); a constant row gives zeros."""
    mean = x.mean(dim=1, keepdim=True)
    centred = x - mean
    std = centred.pow(2).mean(dim=1, keepdim=True).sqrt()
    return torch.where(
        std > 0, centred / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(x)
    )


def mix_scores(similarities: Tensor, graph_scores: Tensor, graph_weight: float) -> Tensor:
    """``(1 - w) z(similarities) + w z(graph_scores)``, each standardised per row (:func:`_standardise`): how
    graph-kNN's votes, or a hierarchy channel's relation scores, are mixed with plain similarity."""
    return (1.0 - graph_weight) * _standardise(similarities) + graph_weight * _standardise(graph_scores)
