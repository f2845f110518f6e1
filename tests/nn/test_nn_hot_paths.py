"""The hand-fused hot paths of the Lorentz layers agree with the plain autograd formulas they replace
(values and gradients), including at the edges (u = 0, huge |u|, far-out points)."""

from __future__ import annotations

import math

import pytest
import torch

from lorentz_rag.geometry import lorentz
from lorentz_rag.nn import LorentzMLR
from lorentz_rag.nn.mlr import _MLRLogits


def reference_mlr(head: LorentzMLR, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The head as plain autograd ops: ``|z| asinh(sqrt(c) alpha / |z|) / sqrt(c)`` with
    ``alpha = cosh(sqrt(c) a) <z, xs> - sinh(sqrt(c) a) |z| x0`` and ``x0`` recomputed from ``xs``."""
    xs = x[..., 1:]
    sc = c.sqrt()
    x0 = (1 / c + xs.pow(2).sum(-1, keepdim=True)).sqrt()
    zn = head.z.norm(dim=-1)
    a = head.a * sc
    alpha = torch.cosh(a) * (xs @ head.z.T) - torch.sinh(a) * zn * x0
    return zn * torch.asinh(sc * alpha / zn) / sc


def test_mlr_logits_gradcheck_float64():
    torch.manual_seed(0)
    points = torch.randn(5, 3, dtype=torch.float64).requires_grad_(True)
    normals = torch.randn(7, 3, dtype=torch.float64) * torch.logspace(-6, 6, 7, dtype=torch.float64)[:, None]
    normals.requires_grad_(True)
    k = (torch.rand(7, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(_MLRLogits.apply, (points, normals, k))


def test_mlr_logits_asinh_float32_accuracy_over_the_range():
    """With one unit normal the logits are asinh(u): within 2 ulp of float64 from 1e-30 to 1e30, odd,
    0 at +-0; the derivative matches 1/sqrt(1 + u^2), also where u^2 overflows."""
    mag = torch.logspace(-30, 30, 20001)
    u = torch.cat([mag, -mag, torch.tensor([0.0, -0.0, 1e19, 1e37])]).requires_grad_(True)
    out = _MLRLogits.apply(u[:, None], torch.ones(1, 1), torch.ones(1))[:, 0]
    exact = torch.asinh(u.detach().double())
    rel = ((out.detach().double() - exact).abs() / exact.abs().clamp_min(1e-300)).max()
    assert rel < 2.5e-7, rel
    assert out[-4] == 0 and out[-3] == 0  # (the matrix product turns -0 into +0)
    out.sum().backward()
    expected = (1 + u.detach().double() ** 2).rsqrt()
    torch.testing.assert_close(u.grad.double(), expected, rtol=3e-7, atol=1e-45)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mlr_values_and_gradients_match_reference(dtype):
    """Logits and every gradient (points, z, a, c) equal the plain autograd formula; offsets up to
    |sqrt(c) a| = 3 and points out to x0 ~ 50."""
    torch.manual_seed(3)
    head = LorentzMLR(6, 13).to(dtype)
    with torch.no_grad():
        head.z.normal_(0, 0.5)
        head.a.uniform_(-2.0, 2.0)
    c = torch.tensor(2.3, dtype=dtype, requires_grad=True)
    x = lorentz.lift(torch.randn(9, 6, dtype=dtype) * torch.logspace(-2, 1.5, 9, dtype=dtype)[:, None], 2.3)
    x.requires_grad_(True)
    weights = torch.randn(9, 13, dtype=dtype)  # a generic upstream gradient

    def grads(fn):
        out = fn()
        got = torch.autograd.grad((out * weights).sum(), (x, head.z, head.a, c))
        return out.detach(), got

    ours, g_ours = grads(lambda: head(x, c))
    ref, g_ref = grads(lambda: reference_mlr(head, x, c))
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    torch.testing.assert_close(ours, ref, **tol)
    for name, a, b in zip(("x", "z", "a", "c"), g_ours, g_ref):
        scale = b.abs().max().item()
        torch.testing.assert_close(a / scale, b / scale, **tol, msg=lambda m, n=name: f"grad {n}: {m}")


def test_mlr_far_points_and_large_offsets_stay_finite():
    """At the expmap cap (x0 ~ 3e4) with |sqrt(c) a| = 8 the logits and gradients are finite and match
    float64 to float32 rounding of alpha."""
    torch.manual_seed(4)
    head = LorentzMLR(4, 5)
    with torch.no_grad():
        head.a.copy_(torch.tensor([-8.0, -1.0, 0.0, 1.0, 8.0]))
    v = torch.randn(3, 4)
    x = lorentz.expmap0(v / v.norm(dim=-1, keepdim=True) * (lorentz.MAX_EXPMAP_ARG - 0.01), 1.0)
    x.requires_grad_(True)
    logits = head(x, 1.0)
    logits.sum().backward()
    assert torch.isfinite(logits).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(head.z.grad).all() and torch.isfinite(head.a.grad).all()
    ref = head.double()(x.detach().double(), 1.0)
    # alpha ~ cosh(8) * 3e4 ~ 4.5e7 loses ~4 units in float32: logits agree to a few e-7 relative.
    assert ((logits.double() - ref).abs() / ref.abs().clamp_min(1.0)).max() < 1e-5
    assert math.isfinite(float(head.z.grad.abs().sum()))
