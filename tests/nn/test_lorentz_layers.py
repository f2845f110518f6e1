"""Lorentz layers other than attention and the MLR head: points stay on the hyperboloid, gradients flow,
the curvature clamps, and each layer computes the formula of docs/design.md, section 4."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from lorentz_rag.geometry import lorentz
from lorentz_rag.nn import (
    Curvature,
    LorentzActivation,
    LorentzEmbedding,
    LorentzGatedFFN,
    LorentzLayerNorm,
    LorentzLinear,
    LorentzResidual,
    LorentzRMSNorm,
    build_lorentz_norm,
)


def on_hyperboloid_error(x: torch.Tensor, c: float | torch.Tensor) -> float:
    """max |c<x,x>_L + 1| / (c x0^2): the relative violation of the constraint (0 on the hyperboloid)."""
    cc = float(c)
    xd = x.detach().double()
    return float(((cc * lorentz.inner(xd, xd) + 1).abs() / (cc * xd[..., 0] ** 2)).max())


def random_points(shape, d, c, dtype=torch.float32, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return lorentz.lift(scale * torch.randn(*shape, d, generator=g, dtype=dtype), c)


# --- curvature ----------------------------------------------------------------------------------------


def test_curvature_value_dtype_and_trainability():
    cur = Curvature(0.5, trainable=False)
    c = cur()
    assert c.dim() == 0 and c.dtype == torch.float32
    assert c.item() == pytest.approx(0.5, rel=1e-6)
    assert not cur.log_c.requires_grad and not cur.trainable
    assert dict(cur.named_parameters()).keys() == {"log_c"}
    cur.trainable = True
    assert cur.log_c.requires_grad
    (cur() * 3).backward()
    assert cur.log_c.grad.item() == pytest.approx(3 * 0.5, rel=1e-6)  # d c / d log c = c


def test_curvature_clamps_to_range_with_zero_gradient_outside():
    cur = Curvature(1.0, trainable=True)
    with torch.no_grad():
        cur.log_c.fill_(math.log(100.0))
    c = cur()
    assert c.item() == pytest.approx(10.0, rel=1e-6)
    c.backward()
    assert cur.log_c.grad.item() == 0.0
    with torch.no_grad():
        cur.log_c.fill_(math.log(1e-3))
    assert cur().item() == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("bad", [0.0, 0.05, 11.0, float("nan"), -1.0])
def test_curvature_rejects_initial_values_outside_range(bad):
    with pytest.raises(ValueError, match="curvature"):
        Curvature(bad)


# --- layers: manifold, formula, gradients --------------------------------------------------------------


@pytest.mark.parametrize("c", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("bias", [False, True])
def test_lorentz_linear_is_lift_of_affine_map_on_all_coordinates(c, bias):
    torch.manual_seed(0)
    layer = LorentzLinear(6, 4, bias=bias).double()
    if bias:
        torch.nn.init.normal_(layer.bias)
    x = random_points((3, 5), 6, c, dtype=torch.float64)
    y = layer(x, c)
    assert y.shape == (3, 5, 5) and y.dtype == torch.float64
    z = x @ layer.weight.T + (layer.bias if bias else 0)
    torch.testing.assert_close(y[..., 1:], z)
    torch.testing.assert_close(y[..., 0], torch.sqrt(1 / c + (z**2).sum(-1)))
    assert on_hyperboloid_error(y, c) < 1e-14
    # W reads the time coordinate too: changing only x0 changes the output.
    x2 = x.clone()
    x2[..., 0] += 1.0
    assert not torch.allclose(layer(x2, c), y)


def test_lorentz_linear_rejects_wrong_width():
    with pytest.raises(ValueError, match="7 coordinates"):
        LorentzLinear(6, 4)(torch.zeros(2, 6), 1.0)


@pytest.mark.parametrize("norm_cls", [LorentzLayerNorm, LorentzRMSNorm])
def test_norms_normalise_space_part_and_ignore_stored_time(norm_cls):
    c = 0.7
    norm = norm_cls(8, bias=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = random_points((4, 3), 8, c, scale=5.0)
    y = norm(x, c)
    xs = x[..., 1:]
    if norm_cls is LorentzLayerNorm:
        expected = F.layer_norm(xs, (8,), norm.weight, norm.bias, 1e-5)
    else:
        expected = xs / torch.sqrt(xs.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight + norm.bias
    torch.testing.assert_close(y[..., 1:], expected)
    assert on_hyperboloid_error(y, c) < 1e-6
    corrupted = x.clone()
    corrupted[..., 0] = 123.0  # a stale time coordinate must not matter
    torch.testing.assert_close(norm(corrupted, c), y)


def test_build_lorentz_norm_names_valid_choices():
    assert isinstance(build_lorentz_norm("rmsnorm", 4), LorentzRMSNorm)
    with pytest.raises(ValueError, match="layernorm"):
        build_lorentz_norm("batchnorm", 4)


@pytest.mark.parametrize("act", ["gelu", "silu", "relu"])
def test_activation_applies_to_space_part(act):
    x = random_points((5,), 6, 2.0)
    y = LorentzActivation(act)(x, 2.0)
    fn = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}[act]
    torch.testing.assert_close(y[..., 1:], fn(x[..., 1:]))
    assert on_hyperboloid_error(y, 2.0) < 1e-6
    with pytest.raises(ValueError, match="gelu"):
        LorentzActivation("tanhh")


def test_gated_ffn_matches_formula_in_float64():
    torch.manual_seed(1)
    c = 1.5
    ffn = LorentzGatedFFN(6, 10, activation="silu", bias=True).double()
    x = random_points((2, 3), 6, c, dtype=torch.float64)
    y = ffn(x, c)
    w1, w2 = ffn.wi.weight[:10], ffn.wi.weight[10:]
    b1, b2 = ffn.wi.bias[:10], ffn.wi.bias[10:]
    h = F.silu(x @ w1.T + b1) * (x @ w2.T + b2)
    h_point = torch.cat([torch.sqrt(1 / c + (h**2).sum(-1, keepdim=True)), h], -1)
    expected_space = h_point @ ffn.wo.weight.T + ffn.wo.bias
    torch.testing.assert_close(y[..., 1:], expected_space)
    assert on_hyperboloid_error(y, c) < 1e-14


@pytest.mark.parametrize("c", [0.2, 1.0, 5.0])
def test_residual_is_projected_weighted_sum(c):
    res = LorentzResidual(w1=0.5, w2=2.0).double()
    x = random_points((4,), 5, c, dtype=torch.float64, seed=1)
    fx = random_points((4,), 5, c, dtype=torch.float64, seed=2)
    y = res(x, fx, c)
    v = 0.5 * x + 2.0 * fx
    expected = v / torch.sqrt(c * -lorentz.inner(v, v, keepdim=True))
    torch.testing.assert_close(y, expected)
    assert on_hyperboloid_error(y, c) < 1e-14
    # No 4*sqrt(d) rescale: the residual of a point with itself is that point.
    torch.testing.assert_close(res(x, x, c), x)
    torch.testing.assert_close(res.weights, torch.tensor([0.5, 2.0], dtype=torch.float64))


def test_residual_rejects_nonpositive_weights_and_shape_mismatch():
    with pytest.raises(ValueError, match="> 0"):
        LorentzResidual(w1=0.0)
    with pytest.raises(ValueError, match="shape"):
        LorentzResidual()(torch.ones(2, 4), torch.ones(2, 5), 1.0)


def test_embedding_lifts_table_rows_and_padding_row_is_origin():
    c = 0.5
    emb = LorentzEmbedding(10, 4, padding_idx=0)
    ids = torch.tensor([[0, 3, 9], [2, 0, 0]])
    y = emb(ids, c)
    torch.testing.assert_close(y[..., 1:], emb.weight[ids])
    torch.testing.assert_close(y[0, 0], lorentz.origin(4, c))
    assert on_hyperboloid_error(y, c) < 1e-6
    with pytest.raises(ValueError, match="padding_idx"):
        LorentzEmbedding(10, 4, padding_idx=10)


def test_gradients_reach_every_parameter_and_curvature():
    torch.manual_seed(0)
    cur = Curvature(0.8, trainable=True)
    layers = torch.nn.ModuleList(
        [LorentzLinear(6, 6, bias=True), LorentzLayerNorm(6, bias=True), LorentzGatedFFN(6, 8, bias=True)]
    )
    res = LorentzResidual()
    emb = LorentzEmbedding(7, 6)
    c = cur()
    x = emb(torch.tensor([[1, 2, 3]]), c)
    h = x
    for layer in layers:
        h = layer(h, c)
    out = res(x, h, c)
    lorentz.radius(out, c).sum().backward()
    params = [*cur.parameters(), *layers.parameters(), *res.parameters(), *emb.parameters()]
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
