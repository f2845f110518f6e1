"""Lorentz MLR head (Bdeir et al. 2024): the closed formula in float64, and its geometric meaning
(|z| times the signed distance to the class hyperplane)."""

from __future__ import annotations

import math

import pytest
import torch

from lorentz_rag.geometry import lorentz
from lorentz_rag.nn import LorentzMLR


def formula_logits(x: torch.Tensor, z: torch.Tensor, a: torch.Tensor, c: float) -> torch.Tensor:
    """Direct float64 evaluation, class by class:
    alpha = cosh(sqrt(c) a) <z, xs> - sinh(sqrt(c) a) |z| x0,
    beta = sqrt(|cosh(sqrt(c) a) z|^2 - (sinh(sqrt(c) a) |z|)^2),
    logit = sign(alpha) beta |asinh(sqrt(c) alpha / beta)| / sqrt(c)."""
    sc = math.sqrt(c)
    out = torch.empty(x.shape[0], z.shape[0], dtype=torch.float64)
    for k in range(z.shape[0]):
        zk, ak = z[k].double(), float(a[k])
        zn = zk.norm()
        alpha = math.cosh(sc * ak) * (x[:, 1:] @ zk) - math.sinh(sc * ak) * zn * x[:, 0]
        beta = torch.sqrt((math.cosh(sc * ak) * zk).pow(2).sum() - (math.sinh(sc * ak) * zn) ** 2)
        out[:, k] = torch.sign(alpha) * beta * torch.asinh(sc * alpha / beta).abs() / sc
    return out


@pytest.mark.parametrize("c", [0.25, 1.0, 3.0])
def test_mlr_matches_formula_in_float64(c):
    torch.manual_seed(0)
    head = LorentzMLR(5, 7).double()
    with torch.no_grad():
        head.z.normal_(0, 1.0)
        head.a.uniform_(-1.0, 1.0)
    x = lorentz.lift(torch.randn(9, 5, dtype=torch.float64) * 2, c)
    logits = head(x, c)
    assert logits.shape == (9, 7) and logits.dtype == torch.float64
    torch.testing.assert_close(
        logits, formula_logits(x, head.z.detach(), head.a.detach(), c), rtol=1e-9, atol=1e-10
    )


@pytest.mark.parametrize("c", [0.5, 2.0])
def test_mlr_logit_is_norm_times_signed_distance_to_hyperplane(c):
    """Along the geodesic from the origin in direction z_k, the point at distance t has logit
    |z_k| (t - a_k): the hyperplane of class k crosses that geodesic at distance a_k, orthogonally."""
    torch.manual_seed(1)
    head = LorentzMLR(4, 3).double()
    with torch.no_grad():
        head.z.normal_(0, 1.0)
        head.a.copy_(torch.tensor([0.3, -0.7, 1.2]))
    k = 1
    direction = head.z[k].detach() / head.z[k].detach().norm()
    t = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64)
    x = lorentz.expmap0(t[:, None] * direction, c)  # expmap0 of -t u is the point at distance t behind
    logits = head(x, c)[:, k]
    expected = head.z[k].detach().norm() * (t - head.a[k].detach())
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)
    # A point on the hyperplane scores 0.
    on_plane = lorentz.expmap0(head.a[k].detach() * direction, c)
    assert head(on_plane[None], c)[0, k].abs() < 1e-10


def test_mlr_float32_under_autocast_and_gradients():
    torch.manual_seed(2)
    head = LorentzMLR(8, 11)
    x = lorentz.lift(torch.randn(6, 8) * 4, 1.0).requires_grad_(True)
    c = torch.tensor(0.9, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x, c)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, head(x, c))  # the head ignores autocast entirely
    torch.nn.functional.cross_entropy(logits, torch.arange(6)).backward()
    for g in (x.grad, c.grad, head.z.grad, head.a.grad):
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_mlr_ignores_stored_time_and_checks_width():
    head = LorentzMLR(3, 2)
    x = lorentz.lift(torch.randn(4, 3), 1.0)
    stale = x.clone()
    stale[:, 0] += 5.0
    torch.testing.assert_close(head(stale, 1.0), head(x, 1.0))
    with pytest.raises(ValueError, match="4 coordinates"):
        head(torch.zeros(2, 3), 1.0)
