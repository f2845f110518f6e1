"""Lorentz multi-head attention against a direct float64 evaluation of the paper's formula, rotary
positions (relative only), and the padding mask."""

from __future__ import annotations

import math

import pytest
import torch

from lorentz_rag.geometry import lorentz
from lorentz_rag.nn import LorentzMultiheadAttention, RotaryEmbedding


def lift64(z: torch.Tensor, c: float) -> torch.Tensor:
    return torch.cat([torch.sqrt(1 / c + (z**2).sum(-1, keepdim=True)), z], -1)


def rotate_pairs(xs: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Independent rotary reference: pair (i, i + m/2) is a complex number turned by pos * theta^(-2i/m).
    xs: [B, T, H, m], pos: [B, T]."""
    m = xs.shape[-1]
    freq = theta ** (-torch.arange(0, m, 2, dtype=torch.float64) / m)
    angle = pos.double()[..., None, None] * freq  # [B, T, 1, m/2]
    z = torch.complex(xs[..., : m // 2], xs[..., m // 2 :]) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], -1)


def reference_attention(attn: LorentzMultiheadAttention, x, mask, c: float, pos=None):
    """softmax_j(-d_L^2(q_i, k_j) / sqrt(m)) over unmasked keys, then P(sum_j a_ij v_j0 v_j) per head,
    heads' space parts concatenated, lifted and mixed by wo. Everything float64.
    Returns (output [B, T, d+1], attention weights [B, H, T, T])."""
    b, t, _ = x.shape
    h, m = attn.num_heads, attn.head_dim
    if pos is None:
        pos = torch.arange(t).expand(b, t)
    s = (x @ attn.wqkv.weight.double().T).view(b, t, 3, h, m)
    q = lift64(rotate_pairs(s[:, :, 0], pos, attn.rotary.theta), c)  # [B, T, H, m+1]
    k = lift64(rotate_pairs(s[:, :, 1], pos, attn.rotary.theta), c)
    v = lift64(s[:, :, 2], c)
    out_heads = torch.empty(b, t, h, m, dtype=torch.float64)
    weights = torch.empty(b, h, t, t, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            qh, kh, vh = q[bi, :, hi], k[bi, :, hi], v[bi, :, hi]  # [T, m+1]
            inner = -qh[:, :1] * kh[:, :1].T + qh[:, 1:] @ kh[:, 1:].T  # <q_i, k_j>_L
            sq_dist = -2 / c - 2 * inner
            scores = -sq_dist / math.sqrt(m)
            scores = scores.masked_fill(~mask[bi][None, :], -math.inf)
            a = torch.softmax(scores, dim=-1)
            weights[bi, hi] = a
            amb = a @ (vh[:, :1] * vh)  # sum_j a_ij v_j0 v_j
            norm = torch.sqrt(c * (amb[:, :1] ** 2 - (amb[:, 1:] ** 2).sum(-1, keepdim=True)))
            out_heads[bi, :, hi] = (amb / norm)[:, 1:]
    merged = lift64(out_heads.reshape(b, t, h * m), c)
    return lift64(merged @ attn.wo.weight.double().T, c), weights


def make_attention(d=12, heads=3, theta=100.0, seed=0):
    torch.manual_seed(seed)
    attn = LorentzMultiheadAttention(d, heads, rope_theta=theta).double()
    with torch.no_grad():  # larger weights than the 0.02 init, so attention is far from uniform
        attn.wqkv.weight.normal_(0, 0.4)
        attn.wo.weight.normal_(0, 0.3)
    return attn


def points(b, t, d, c, seed=1):
    g = torch.Generator().manual_seed(seed)
    return lorentz.lift(torch.randn(b, t, d, generator=g, dtype=torch.float64), c)


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_matches_direct_float64_formula(c, masked):
    attn = make_attention()
    x = points(2, 6, 12, c)
    mask = torch.ones(2, 6, dtype=torch.bool)
    if masked:
        mask[0, 4:] = False
        mask[1, 1] = False
    out = attn(x, mask, c)
    ref, weights = reference_attention(attn, x, mask, c)
    assert out.dtype == torch.float64 and out.shape == (2, 6, 13)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # The weights are far from uniform, so a wrong score formula could not pass by accident.
    assert weights.max() > 0.6
    if masked:
        assert weights[0, ..., 4:].abs().max() == 0 and weights[1, ..., 1].abs().max() == 0


def test_masked_keys_have_no_influence():
    c = 1.0
    attn = make_attention()
    x = points(1, 7, 12, c)
    mask = torch.tensor([[True, True, True, True, False, False, False]])
    out = attn(x, mask, c)
    x2 = x.clone()
    x2[:, 4:] = points(1, 3, 12, c, seed=9)  # change only the padded positions
    out2 = attn(x2, mask, c)
    torch.testing.assert_close(out[:, :4], out2[:, :4], rtol=0, atol=1e-12)
    assert not torch.allclose(attn(x2, None, c)[:, :4], out[:, :4])  # without the mask they do matter


def test_fully_padded_row_is_finite_with_finite_gradients():
    c = torch.tensor(1.0, requires_grad=True)
    attn = LorentzMultiheadAttention(8, 2)
    x = lorentz.lift(torch.randn(2, 5, 8), 1.0).requires_grad_(True)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, :3] = True
    out = attn(x, mask, c)
    assert torch.isfinite(out).all()
    out[1, :3].sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(c.grad)
    for p in attn.parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_rotary_scores_depend_only_on_relative_position():
    c = 0.8
    attn = make_attention(theta=50.0)
    x = points(1, 6, 12, c)
    pos = torch.arange(6)[None]

    def scores(position_ids):
        q, k, _ = attn.head_points(x, c, position_ids)
        return lorentz.inner(q[..., :, None, :], k[..., None, :, :])  # [B, H, T, T]

    base = scores(pos)
    torch.testing.assert_close(scores(pos + 37), base, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attn(x, None, c, pos + 37), attn(x, None, c, pos), rtol=1e-10, atol=1e-10)
    # ... and they do depend on relative position (rotary is really applied).
    assert (scores(2 * pos) - base).abs().max() > 1e-3
    # Rotation about the time axis keeps q on the hyperboloid with the same time coordinate.
    q_rot, _, _ = attn.head_points(x, c, pos + 37)
    q0, _, _ = attn.head_points(x, c, torch.zeros_like(pos))
    torch.testing.assert_close(q_rot[..., 0], q0[..., 0])


def test_rotary_rejects_odd_head_dims():
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(5)
    with pytest.raises(ValueError, match="even"):
        LorentzMultiheadAttention(9, 3)
    with pytest.raises(ValueError, match="divisible"):
        LorentzMultiheadAttention(10, 3)


def test_attention_output_on_hyperboloid_under_bf16_autocast():
    torch.manual_seed(0)
    attn = LorentzMultiheadAttention(16, 2)
    x = lorentz.lift(torch.randn(2, 9, 16) * 3, 1.0).requires_grad_(True)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, mask, 1.0)
    assert out.dtype == torch.float32  # the geometry ran in float32
    assert ((lorentz.inner(out, out).double() + 1).abs() / out[..., 0].double() ** 2).max() < 1e-6
    ref = attn(x, mask, 1.0)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
