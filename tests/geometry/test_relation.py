"""Relation-aware scores (broader / narrower): asymmetry, the reduction to similarity at weight 0, the
Gromov-product property at weight 1, the search bounds, finite values and gradients, cosine refused."""

from __future__ import annotations

import pytest
import torch

from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry import similarity as similarity_fns
from lorentz_rag.geometry.relation import (
    check_relation,
    radius,
    relation_pairwise,
    relation_score,
    relation_upper_bound,
)

KINDS = ("geodesic", "lorentz_inner", "euclidean")
C = 0.7


def _points(kind: str, n: int, d: int = 8, scale: float = 1.5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    return lorentz.expmap0(v, C) if kind != "euclidean" else v


def _along(kind: str, direction: torch.Tensor, t: float) -> torch.Tensor:
    """The point at radius ``t`` along a unit ``direction`` ``[d]``."""
    v = direction * t
    return lorentz.expmap0(v, C) if kind != "euclidean" else v


@pytest.mark.parametrize("kind", KINDS)
def test_broader_of_q_x_is_narrower_of_x_q_and_the_pair_is_asymmetric(kind: str) -> None:
    q, x = _points(kind, 5), _points(kind, 7, seed=1)
    broader = relation_pairwise(q, x, "broader", kind, C)
    narrower = relation_pairwise(x, q, "narrower", kind, C)
    torch.testing.assert_close(broader, narrower.T, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(broader, relation_pairwise(x, q, "broader", kind, C).T)


@pytest.mark.parametrize("kind", KINDS)
def test_weight_zero_is_the_similarity_of_the_distance(kind: str) -> None:
    q, x = _points(kind, 4), _points(kind, 6, seed=2)
    for relation in ("broader", "narrower"):
        score = relation_pairwise(q, x, relation, kind, C, radius_weight=0.0)
        plain = similarity_fns.pairwise(q, x, "euclidean" if kind == "euclidean" else "geodesic", C)
        torch.testing.assert_close(score, plain, rtol=1e-10, atol=1e-10)
        # lorentz_inner ranks as the geodesic distance does.
        own = similarity_fns.pairwise(q, x, kind, C)
        assert torch.equal(score.argsort(dim=1, descending=True), own.argsort(dim=1, descending=True))
    torch.testing.assert_close(
        relation_pairwise(q, x, "similar", kind, C), similarity_fns.pairwise(q, x, kind, C)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_ancestors_on_the_ray_score_zero_at_weight_one_and_the_nearest_wins_below(kind: str) -> None:
    direction = torch.nn.functional.normalize(torch.randn(8, dtype=torch.float64), dim=0)
    q = _along(kind, direction, 3.0)
    parent, root = _along(kind, direction, 2.5), _along(kind, direction, 0.5)
    child = _along(kind, direction, 3.5)
    off_path = _along(kind, torch.nn.functional.normalize(direction + 0.5, dim=0), 2.5)
    cands = torch.stack([parent, root, child, off_path])
    at_one = relation_score(q, cands, "broader", kind, C, radius_weight=1.0)
    torch.testing.assert_close(at_one[:2], torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-9)
    assert bool((at_one[2:] < -1e-3).all())
    half = relation_score(q, cands, "broader", kind, C, radius_weight=0.5)
    # At equal distance (0.5) the parent outranks the child; along the ray the parent outranks the root.
    assert half.argmax() == 0 and half[0] > half[2] and half[0] > half[1]
    assert at_one[1] > at_one[2]  # at weight 1 even the root outranks the child
    narrower = relation_score(q, cands, "narrower", kind, C, radius_weight=0.5)
    assert narrower.argmax() == 2  # the child is the best narrower candidate
    # Plain distance would prefer the child (0.5 away) to the root (2.5 away) as an ancestor.
    plain = relation_score(q, cands, "broader", kind, C, radius_weight=0.0)
    assert plain[2] > plain[1]


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_equals_the_broadcast_score(kind: str) -> None:
    q, x = _points(kind, 3), _points(kind, 5, seed=3)
    for relation in ("broader", "narrower", "similar"):
        torch.testing.assert_close(
            relation_pairwise(q, x, relation, kind, C),
            relation_score(q[:, None], x[None], relation, kind, C),
            rtol=1e-9,
            atol=1e-9,
        )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("relation", ["broader", "narrower"])
def test_the_search_bound_holds_for_every_farther_candidate(kind: str, relation: str) -> None:
    q, x = _points(kind, 6, scale=2.0), _points(kind, 300, scale=2.0, seed=4)
    score = relation_pairwise(q, x, relation, kind, C)
    d = -similarity_fns.pairwise(q, x, "euclidean" if kind == "euclidean" else "geodesic", C)
    r_max = float(radius(x, kind, C).max())
    for D in (0.5, 2.0, 4.0):
        bound = relation_upper_bound(
            torch.full((6,), D, dtype=torch.float64), radius(q, kind, C), r_max, relation
        )
        far = d >= D
        assert bool((score.masked_fill(~far, -torch.inf) <= bound[:, None] + 1e-9).all())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_are_finite_at_coincident_points_the_origin_and_far_out(
    kind: str, dtype: torch.dtype
) -> None:
    v = torch.zeros(4, 6, dtype=torch.float64)
    v[1, 0] = 1e-4
    v[2, 1] = 1.0
    v[3, 2] = 12.0  # far from the origin
    pts = (lorentz.expmap0(v, C) if kind != "euclidean" else v).to(dtype)
    for relation in ("broader", "narrower"):
        q = pts.clone().requires_grad_(True)
        x = pts.clone().requires_grad_(True)
        score = relation_pairwise(q, x, relation, kind, C)
        assert score.dtype == dtype and torch.isfinite(score).all()
        assert float(score.detach().diagonal().abs().max()) <= (1e-3 if dtype == torch.float32 else 1e-9)
        score.sum().backward()
        assert torch.isfinite(q.grad).all() and torch.isfinite(x.grad).all()
        row = relation_score(q, x, relation, kind, C)
        (gq,) = torch.autograd.grad(row.sum(), q)
        assert torch.isfinite(row).all() and torch.isfinite(gq).all()


def test_cosine_has_no_radius_and_bad_arguments_are_named() -> None:
    a = torch.randn(2, 4)
    with pytest.raises(ValueError, match="no radius"):
        relation_pairwise(a, a, "broader", "cosine")
    check_relation("similar", "cosine")
    torch.testing.assert_close(
        relation_pairwise(a, a, "similar", "cosine"), similarity_fns.pairwise(a, a, "cosine")
    )
    with pytest.raises(ValueError, match="unknown relation 'wider'"):
        check_relation("wider", "geodesic")
    with pytest.raises(ValueError, match=r"radius_weight must lie in \[0, 1\]"):
        check_relation("broader", "geodesic", radius_weight=1.5)
    with pytest.raises(ValueError, match="needs the curvature"):
        relation_pairwise(a, a, "broader", "geodesic")
