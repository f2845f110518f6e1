"""lorentz_rag.geometry.similarity: every kind, pairwise against rowwise, against float64 references, and the
edge cases (identical points, NaN)."""

from __future__ import annotations

import pytest
import torch

from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry import similarity as sim

SEEDS = (0, 1, 2)


def _points(seed: int, n: int, d: int = 8, c: float = 1.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lorentz.expmap0(scale * torch.randn(n, d, generator=g, dtype=torch.float64), c)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sim.KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_matches_rowwise_for_every_kind(seed: int, kind: str, dtype: torch.dtype) -> None:
    a, b = _points(seed, 5).to(dtype), _points(seed + 10, 7).to(dtype)
    c = 1.0 if kind in sim.HYPERBOLIC_KINDS else None
    full = sim.pairwise(a, b, kind, c)
    assert full.shape == (5, 7) and full.dtype == dtype
    for i in range(5):
        row = sim.rowwise(a[i].expand(7, -1), b, kind, c)
        torch.testing.assert_close(full[i], row, rtol=1e-4 if dtype == torch.float32 else 1e-9, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_euclidean_is_minus_the_float64_distance(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = (
        torch.randn(6, 5, generator=g, dtype=torch.float64),
        torch.randn(4, 5, generator=g, dtype=torch.float64),
    )
    torch.testing.assert_close(sim.pairwise(a, b, "euclidean"), -torch.cdist(a, b), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        sim.distance_rowwise(a[:4], b, "euclidean"), (a[:4] - b).norm(dim=-1), rtol=1e-12, atol=0
    )


def test_hyperbolic_kinds_are_the_lorentz_functions() -> None:
    a, b = _points(0, 4, c=0.5), _points(1, 4, c=0.5)
    torch.testing.assert_close(sim.rowwise(a, b, "geodesic", 0.5), -lorentz.geodesic_distance(a, b, 0.5))
    torch.testing.assert_close(sim.pairwise(a, b, "lorentz_inner", 0.5), lorentz.pairwise_inner(a, b) + 2.0)
    torch.testing.assert_close(
        sim.distance_rowwise(a, b, "lorentz_inner", 0.5), lorentz.geodesic_distance(a, b, 0.5)
    )
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    torch.testing.assert_close(sim.distance_rowwise(a, b, "cosine"), 1 - cos)


@pytest.mark.parametrize("kind", ["euclidean", "geodesic"])
def test_identical_points_have_distance_zero_and_a_finite_gradient(kind: str) -> None:
    x = _points(3, 4).float().requires_grad_(True)
    c = 1.0 if kind == "geodesic" else None
    d = sim.distance_rowwise(x, x, kind, c)
    assert torch.equal(d, torch.zeros(4))
    d.sum().backward()
    assert torch.isfinite(x.grad).all()
    y = _points(3, 4).float().requires_grad_(True)
    sim.pairwise(y, y, kind, c).sum().backward()
    assert torch.isfinite(y.grad).all()


@pytest.mark.parametrize("kind", sim.KINDS)
def test_nan_embeddings_give_nan_scores(kind: str) -> None:
    a, b = _points(0, 3).float(), _points(1, 3).float()
    a[1] = float("nan")
    c = 1.0 if kind in sim.HYPERBOLIC_KINDS else None
    scores = sim.pairwise(a, b, kind, c)
    assert torch.isnan(scores[1]).all() and torch.isfinite(scores[0]).all()
    assert torch.isnan(sim.rowwise(a, b, kind, c)[1])


def test_bad_kind_or_missing_curvature_is_a_clear_error() -> None:
    a = _points(0, 2)
    with pytest.raises(ValueError, match="unknown similarity 'dot'"):
        sim.pairwise(a, a, "dot")
    with pytest.raises(ValueError, match="needs the curvature"):
        sim.pairwise(a, a, "geodesic")
    with pytest.raises(ValueError, match="dimension 9 and 3"):
        sim.pairwise(a, a[:, :3], "cosine")
