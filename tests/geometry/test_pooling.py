"""Property tests of the poolers (src/lorentz_rag/geometry/pooling.py) and of the paper's Theorems 4.6 / 4.7.

References: a float64 Beltrami-Klein computation of the same weights (ambient weight ``a_i`` is Klein
weight ``a_i * gamma_i`` with ``gamma_i = sqrt(c) x_i0``), closed forms on one geodesic, and the
inequalities themselves. Theorem 4.7 (``r(OEM) >= r(Einstein midpoint)`` for p >= 1) is false in general:
a counterexample is kept below, and its failure rate on random inputs is asserted as measured.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lorentz_rag.geometry import lorentz as L
from lorentz_rag.geometry import pooling as P

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
ALL_DTYPES = [F64, F32, BF16, F16]
CURVATURES = [0.1, 1.0, 10.0]
POOLERS = ["cls", "lorentz_centroid", "einstein_midpoint", "outward_einstein_midpoint", "mean_tangent"]
MIDPOINTS = ["lorentz_centroid", "einstein_midpoint", "outward_einstein_midpoint"]
B, T, D = 12, 7, 8


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _result_dtype(dtype: torch.dtype) -> torch.dtype:
    return F32 if dtype in (BF16, F16) else dtype


def _unit(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    u = torch.randn(*shape, generator=gen, dtype=F64)
    return u / u.norm(dim=-1, keepdim=True)


def _tokens(c: float, seed: int, dtype: torch.dtype = F64, b: int = B, t: int = T, d: int = D):
    """Token points ``[b, t, d+1]`` at random radii sqrt(c) r in [1e-3, arcosh(1e3)] (log-uniform)."""
    gen = torch.Generator().manual_seed(seed)
    log_r = torch.empty(b, t, 1, dtype=F64).uniform_(math.log(1e-3), math.log(math.acosh(1e3)), generator=gen)
    v = _unit((b, t, d), gen) * log_r.exp() / math.sqrt(c)
    return L.lift(L.expmap0(v, c)[..., 1:].to(dtype), c)


def _mask(seed: int, b: int = B, t: int = T, weighted: bool = False) -> torch.Tensor:
    """Right padding with random lengths 1..t (bool), or random positive weights on the same support."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    lengths[0] = t
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    if not weighted:
        return mask
    return mask * (0.1 + torch.rand(b, t, generator=gen, dtype=F64))


def _manifold_error(x: torch.Tensor, c: float) -> torch.Tensor:
    x = x.to(F64)
    return (-c * L.inner(x, x) - 1.0).abs() / (c * x[..., 0] ** 2)


def _pool(name: str, x, mask, c, p: float = 1.0):
    return P.pool(name, x, mask, c, p=p)


# ----------------------------------------------------------------------------------------------------------
# Results are points; dtype contract
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_every_pooler_returns_points_on_the_hyperboloid(dtype, c):
    x = _tokens(c, seed=1, dtype=dtype)
    assert x.dtype == dtype
    for weighted in (False, True):
        mask = _mask(seed=2, weighted=weighted)
        for name in POOLERS:
            out = _pool(name, x, mask, c)
            assert out.shape == (B, D + 1), name
            # bf16/fp16 tokens pool to float32 (the poolers accumulate in float64); others keep their dtype.
            assert out.dtype == _result_dtype(dtype), name
            assert (out[:, 0] > 0).all(), name
            # Computed in float64, rounded once to the result dtype: a few eps of that dtype.
            assert _manifold_error(out, c).max().item() <= (4 + D) * _eps(out.dtype), name


# ----------------------------------------------------------------------------------------------------------
# Padding and batch-mates have no influence
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, F32, BF16])
@pytest.mark.parametrize("name", POOLERS)
def test_padded_tokens_have_no_influence_even_when_nan_or_inf(name, dtype):
    c = 1.0
    x = _tokens(c, seed=3, dtype=dtype)
    mask = _mask(seed=4, weighted=name != "cls")
    assert x.dtype == dtype
    clean = _pool(name, x, mask, c)
    padded = ~(mask > 0)
    assert padded.any()
    for garbage in (float("nan"), float("inf"), -float("inf"), 1e30, 0.0):
        dirty = x.clone()
        dirty[padded] = torch.tensor(garbage, dtype=dtype)
        assert torch.equal(_pool(name, dirty, mask, c), clean), (name, garbage)
    # Alone, unpadded: the same point (no dependence on batch-mates or on the amount of padding).
    for i in range(B):
        n = int((mask[i] > 0).sum())
        alone = _pool(name, x[i : i + 1, :n], mask[i : i + 1, :n], c)
        torch.testing.assert_close(alone[0], clean[i], rtol=2 * _eps(clean.dtype), atol=0)
    # Gradients: finite with NaN padding, exactly zero on the padded positions.
    dirty = x.clone()
    dirty[padded] = float("nan")
    dirty.requires_grad_(True)
    L.radius(_pool(name, dirty, mask, c), c).sum().backward()
    assert torch.isfinite(dirty.grad[~padded]).all()
    assert torch.equal(dirty.grad[padded], torch.zeros_like(dirty.grad[padded]))


# ----------------------------------------------------------------------------------------------------------
# Identical points, geodesic structure
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", [F64, F32, BF16])
def test_identical_points_pool_to_themselves(dtype, c):
    gen = torch.Generator().manual_seed(5)
    # 0.99 * cap: a point rounded (bf16) beyond the cap would be pulled back to it by project's floor.
    scaled = torch.tensor([0.0, 1e-3, 0.1, 1.0, 3.0, math.acosh(1e3), 0.99 * L.MAX_EXPMAP_ARG], dtype=F64)
    point = L.expmap0((_unit((len(scaled), D), gen) * scaled.unsqueeze(-1) / math.sqrt(c)).to(dtype), c)
    x = point.unsqueeze(1).expand(-1, T, -1).contiguous()
    mask = _mask(seed=6, b=len(scaled), weighted=True)
    expected = L.lift(point[:, 1:].to(F64), c)  # the point the stored space coordinates denote
    # float64 accumulation, one rounding to the result dtype; and P's normalisation -<v, v>_L = x0^2 - |xs|^2
    # cancels, a relative ~eps64 * c * x0^2 (1e-7 at the cap: below float32's rounding).
    rtol = (4 * _eps(_result_dtype(dtype)) + 4 * _eps(F64) * c * expected[:, :1] ** 2).expand_as(expected)
    for name in POOLERS:
        out = _pool(name, x, mask, c)
        assert out.dtype == _result_dtype(dtype)
        err = (out.to(F64) - expected).abs()
        assert (err <= rtol * expected.abs() + 1e-300).all(), (name, (err / expected.abs()).max())


@pytest.mark.parametrize("c", CURVATURES)
def test_two_point_midpoints_lie_on_the_geodesic_between_them(c):
    x = _tokens(c, seed=7, t=2)
    d12 = L.geodesic_distance(x[:, 0], x[:, 1], c)
    for name in MIDPOINTS:
        m = _pool(name, x, _mask(seed=8, t=2, weighted=True).clamp_min(0.1), c)
        total = L.geodesic_distance(x[:, 0], m, c) + L.geodesic_distance(m, x[:, 1], c)
        torch.testing.assert_close(total, d12, rtol=1e-9, atol=1e-12)
    # Equal ambient weights: the Lorentz centroid is equidistant from both points.
    m = P.lorentz_centroid(x, torch.ones(B, 2, dtype=torch.bool), c)
    torch.testing.assert_close(L.geodesic_distance(x[:, 0], m, c), L.geodesic_distance(x[:, 1], m, c))


def test_mean_tangent_of_points_on_one_ray_is_at_the_mean_radius():
    c = 1.0
    gen = torch.Generator().manual_seed(9)
    u = _unit((B, 1, D), gen)
    r = torch.rand(B, T, 1, generator=gen, dtype=F64) * 5
    x = L.expmap0(u * r, c)
    w = _mask(seed=10, weighted=True)
    out = P.mean_tangent(x, w, c)
    expected = (w * r.squeeze(-1)).sum(-1) / w.sum(-1)
    torch.testing.assert_close(L.radius(out, c), expected, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------------------
# The ambient midpoints equal float64 Klein-coordinate midpoints of the same weights
# ----------------------------------------------------------------------------------------------------------


def _klein_midpoint(x: torch.Tensor, w: torch.Tensor, c: float, gamma_power: float) -> torch.Tensor:
    """float64 ``sum_i b_i k_i / sum_i b_i`` with ``b_i = w_i gamma_i^gamma_power``, mapped to the hyperboloid.

    ``k_i = xs_i / (sqrt(c) x_i0)``, ``gamma_i = sqrt(c) x_i0 = 1/sqrt(1 - c|k_i|^2)``. Back: a Klein point
    ``k`` is the hyperboloid point with ``x0 = 1/(sqrt(c) sqrt(1 - c|k|^2))`` and ``xs = sqrt(c) x0 k``.
    """
    x = x.to(F64)
    sc = math.sqrt(c)
    xs = x[..., 1:]
    x0 = (1 / c + xs.pow(2).sum(-1)).sqrt()
    k = xs / (sc * x0).unsqueeze(-1)
    b = w.to(F64) * (sc * x0).pow(gamma_power)
    km = (b.unsqueeze(-1) * k).sum(-2) / b.sum(-1, keepdim=True)
    m0 = 1 / (sc * (1 - c * km.pow(2).sum(-1)).sqrt())
    return torch.cat([m0.unsqueeze(-1), sc * m0.unsqueeze(-1) * km], dim=-1)


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", [F64, F32])
def test_midpoints_equal_the_klein_computation_of_the_same_weights(dtype, c):
    x = _tokens(c, seed=11, dtype=dtype)
    w = _mask(seed=12, weighted=True)
    # The Klein reference loses ~eps64 * gamma^2 ~ 1e-10 relative at x0 ~ 1e3 (1 - c|k|^2 cancels); the
    # poolers' float32 output is one rounding of a float64 result.
    rtol = 1e-8 if dtype == F64 else 4 * _eps(F32)
    for p in (0.5, 1.0, 2.0, 3.0):
        # OEM: ambient weight w x0^(p+1)  ->  Klein weight w gamma^(p+2).
        out = P.outward_einstein_midpoint(x, w, c, p=p)
        torch.testing.assert_close(out.to(F64), _klein_midpoint(x, w, c, p + 2), rtol=rtol, atol=1e-300)
    # einstein_midpoint: ambient w x0 -> Klein w gamma^2; lorentz_centroid: ambient w -> Klein w gamma, which
    # is the classical Einstein midpoint sum gamma_i k_i / sum gamma_i (Ungar).
    # docs/design.md, section 3, calls P(sum w x0 x) "the paper's Einstein midpoint"; the classical one is
    # lorentz_centroid.
    em = P.einstein_midpoint(x, w, c)
    torch.testing.assert_close(em.to(F64), _klein_midpoint(x, w, c, 2), rtol=rtol, atol=1e-300)
    cen = P.lorentz_centroid(x, w, c)
    torch.testing.assert_close(cen.to(F64), _klein_midpoint(x, w, c, 1), rtol=rtol, atol=1e-300)


def test_outward_log_weights_are_the_oem_ambient_weights():
    c = 0.7
    x = _tokens(c, seed=13)
    w = _mask(seed=14, weighted=True)
    xs = x[..., 1:]
    x0 = (1 / c + xs.pow(2).sum(-1)).sqrt()
    log_w = torch.where(w > 0, w.log(), -torch.inf)
    v = P.ambient_weighted_sum(xs, x0, P.outward_log_weights(x0, log_w, p=1.5))
    a = w * x0**2.5
    expected = (a.unsqueeze(-1) * torch.cat([x0.unsqueeze(-1), xs], -1)).sum(1) / a.sum(-1, keepdim=True)
    torch.testing.assert_close(v, expected, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(P.outward_einstein_midpoint(x, w, c, p=1.5), L.project(expected, c))


# ----------------------------------------------------------------------------------------------------------
# Theorem 4.6: outward weighting raises the (pre-projection) time coordinate
# ----------------------------------------------------------------------------------------------------------


def _pre_projection(x: torch.Tensor, w: torch.Tensor, p: float | None):
    """Normalised ambient sum ``sum_i a~_i x_i`` (p=None: the mask weights alone), float64."""
    xs = x[..., 1:].to(F64)
    c_x0 = x[..., 0].to(F64)
    log_w = torch.where(w > 0, w.to(F64).clamp_min(1e-300).log(), -torch.inf)
    log_a = log_w if p is None else P.outward_log_weights(c_x0, log_w, p)
    return P.ambient_weighted_sum(xs, c_x0, log_a)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    c=st.sampled_from(CURVATURES),
    p=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
)
def test_theorem_4_6_outward_weights_raise_the_mean_time_coordinate(seed, c, p):
    """Chebyshev's sum inequality: ``sum_i a~_i x_i0 >= sum_i w~_i x_i0`` for ``a_i = w_i x_i0^(p+1)``.

    In terms of d(o, .): by Jensen (cosh is convex), ``arcosh(sqrt(c) v0) / sqrt(c) >= sum_i w~_i r_i``, i.e. the
    *unprojected* outward mean sits at least at the weighted mean radius. This says nothing about the
    projected point: see the next test.
    """
    x = _tokens(c, seed=seed)
    w = _mask(seed=seed + 1, weighted=True)
    wn = w / w.sum(-1, keepdim=True)
    v_oem = _pre_projection(x, w, p)
    mean_x0 = (wn * x[..., 0]).sum(-1)
    assert (v_oem[:, 0] >= mean_x0 * (1 - 1e-12)).all()
    # The same weights without the outward factor reproduce the plain weighted mean.
    torch.testing.assert_close(_pre_projection(x, w, None)[:, 0], mean_x0, rtol=1e-12, atol=0)
    # Compared in cosh space (arcosh near 1 would lose the digits): sqrt(c) v0 >= cosh(sqrt(c) mean_r).
    mean_r = (wn * L.radius(x, c)).sum(-1)
    assert (math.sqrt(c) * v_oem[:, 0] >= torch.cosh(math.sqrt(c) * mean_r) * (1 - 1e-12)).all()


def test_theorem_4_6_does_not_hold_for_the_projected_point():
    """Two tokens at radius 3 in opposite directions (c = 1): the weighted mean radius is 3, the OEM is the
    origin (radius 0), although its pre-projection time coordinate cosh(3) = 10.07 >= cosh(3)."""
    c = 1.0
    e = torch.zeros(D, dtype=F64)
    e[0] = 3.0
    x = L.expmap0(torch.stack([e, -e]), c).unsqueeze(0)
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert _pre_projection(x, mask, 1.0)[0, 0].item() == pytest.approx(math.cosh(3.0), rel=1e-12)
    assert L.radius(P.outward_einstein_midpoint(x, mask, c), c).item() == pytest.approx(0.0, abs=1e-7)


# ----------------------------------------------------------------------------------------------------------
# Theorem 4.7: r(OEM) >= r(Einstein midpoint) for p >= 1 -- false in general
# ----------------------------------------------------------------------------------------------------------


def test_theorem_4_7_counterexample():
    """c = 1; tokens at radius 3 along +e1 and -e1, and one at radius 1 along e2 (equal weights, p = 1).

    Einstein midpoint radius 8.84e-3, OEM radius 1.37e-3: the OEM is *closer* to the origin. Upweighting the
    far tokens (ambient weight x0^2 instead of x0) adds mass whose space parts cancel, so the time
    coordinate grows while the space part does not, and the projected point moves inward. The paper's
    proof of 4.7 implicitly assumes the far tokens' space parts add up.
    """
    c = 1.0
    e1, e2 = torch.zeros(D, dtype=F64), torch.zeros(D, dtype=F64)
    e1[0], e2[1] = 1.0, 1.0
    x = L.expmap0(torch.stack([3 * e1, -3 * e1, 1 * e2]), c).unsqueeze(0)
    mask = torch.ones(1, 3, dtype=torch.bool)
    r_em = L.radius(P.einstein_midpoint(x, mask, c), c).item()
    r_oem = L.radius(P.outward_einstein_midpoint(x, mask, c, p=1.0), c).item()
    assert r_em == pytest.approx(8.842e-3, rel=1e-3)
    assert r_oem == pytest.approx(1.369e-3, rel=1e-3)
    assert r_oem < r_em / 6
    # Closed form: only the e2 token has a space part; v ~ sum a_i x_i with a = x0^(p+1), p+1 in {1, 2}.
    ch3, ch1, sh1 = math.cosh(3), math.cosh(1), math.sinh(1)
    for power, r in ((1, r_em), (2, r_oem)):
        v0 = 2 * ch3**power * ch3 + ch1**power * ch1
        vs = ch1**power * sh1
        assert r == pytest.approx(math.asinh(vs / math.sqrt(v0**2 - vs**2)), rel=1e-9)
    # Larger p makes it worse, not better.
    r_p3 = L.radius(P.outward_einstein_midpoint(x, mask, c, p=3.0), c).item()
    assert r_p3 < r_oem


def _violation_rate(x: torch.Tensor, c: float, p: float = 1.0) -> float:
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    r_oem = L.radius(P.outward_einstein_midpoint(x, mask, c, p=p), c)
    r_em = L.radius(P.einstein_midpoint(x, mask, c), c)
    # A relative margin far above float64 rounding: a counted violation is a real one.
    return (r_oem < r_em * (1 - 1e-9)).double().mean().item()


def _gaussian_tangent_tokens(n: int, t: int, d: int, scale: float, seed: int, c: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    return L.expmap0(torch.randn(n, t, d, generator=gen, dtype=F64) * scale / math.sqrt(d), c)


def _random_radius_tokens(n: int, t: int, d: int, r_max: float, seed: int, c: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    r = torch.rand(n, t, 1, generator=gen, dtype=F64) * r_max
    return L.expmap0(_unit((n, t, d), gen) * r, c)


# Measured with these seeds (n = 2000 sequences of 8 tokens; see benchmarks/geometry_precision.py for more
# distributions): Gaussian tangent vectors violate 4.7 in ~9% of sequences at scale 0.1 and ~3% at scale 1
# (d = 16); tokens at uniform random radii along random directions in d = 128 never did.
@pytest.mark.parametrize(
    ("scale", "low", "high"),
    [(0.1, 0.05, 0.14), (1.0, 0.01, 0.06)],
)
def test_theorem_4_7_fails_on_gaussian_tangent_inputs_at_the_measured_rate(scale, low, high):
    rate = _violation_rate(_gaussian_tangent_tokens(2000, 8, 16, scale, seed=15), c=1.0)
    assert low <= rate <= high, rate


@pytest.mark.parametrize("r_max", [0.5, 3.0, 10.0])
def test_theorem_4_7_holds_for_random_radii_in_high_dimension(r_max):
    """With d = 128 random directions are nearly orthogonal, nothing cancels, and 4.7 held in every sample."""
    assert _violation_rate(_random_radius_tokens(2000, 8, 128, r_max, seed=16), c=1.0) == 0.0


# ----------------------------------------------------------------------------------------------------------
# Extreme inputs, half precision, curvature gradients, errors
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_no_nan_or_inf_forward_and_backward_on_extreme_inputs(dtype, c):
    gen = torch.Generator().manual_seed(17)
    scaled = torch.tensor([0.0, 1e-30, 1e-4, 1.0, 5.0, L.MAX_EXPMAP_ARG, 100 * L.MAX_EXPMAP_ARG], dtype=F64)
    v = _unit((len(scaled), T, D), gen) * scaled.view(-1, 1, 1) / math.sqrt(c)
    v = v.clamp(-0.5 * torch.finfo(dtype).max, 0.5 * torch.finfo(dtype).max)
    x = L.expmap0(v.to(dtype), c)
    # Rows: all tokens at the origin, tiny, ..., all at the cap; plus a row mixing origin and cap tokens.
    x = torch.cat([x, torch.cat([x[:1, :3], x[-1:, 3:]], dim=1)]).detach().requires_grad_(True)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mask[2, 4:] = False
    cc = torch.tensor(c, dtype=F32, requires_grad=True)
    assert x.dtype == dtype and torch.isfinite(x).all()
    loss = 0.0
    for name in POOLERS:
        out = _pool(name, x, mask, cc)
        assert out.dtype == _result_dtype(dtype), name
        assert torch.isfinite(out).all(), name
        loss = loss + L.radius(out, cc).sum() + L.geodesic_distance(out, out.roll(1, 0), cc).sum()
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(cc.grad)


@pytest.mark.parametrize("name", POOLERS)
def test_curvature_tensor_receives_finite_gradients(name):
    x = _tokens(1.0, seed=18, dtype=F32)
    mask = _mask(seed=19, weighted=True)
    cc = torch.tensor(0.8, requires_grad=True)
    L.radius(_pool(name, x, mask, cc), cc).sum().backward()
    assert cc.grad is not None and torch.isfinite(cc.grad) and cc.grad != 0
    # Against finite differences, in float64, at moderate radii (far out, the pooled coordinates carry
    # ~eps64 c x0^2 relative noise, which finite differences amplify; the analytic gradient is fine there).
    gen = torch.Generator().manual_seed(18)
    x64 = L.expmap0(torch.randn(B, T, D, generator=gen, dtype=F64) * 0.7, 1.0)
    assert torch.autograd.gradcheck(
        lambda c: _pool(name, x64, mask, c),
        (torch.tensor(0.8, dtype=F64, requires_grad=True),),
        fast_mode=True,
    )


def test_dispatch_and_errors_name_what_was_wrong():
    c = 1.0
    x = _tokens(c, seed=20)
    mask = _mask(seed=21)
    assert torch.equal(P.pool("mean", x, mask, c), P.lorentz_centroid(x, mask, c))
    assert torch.equal(
        P.pool("outward_einstein_midpoint", x, mask, c, p=2.0), P.outward_einstein_midpoint(x, mask, c, 2.0)
    )
    with pytest.raises(ValueError, match=r"unknown hyperbolic pooling 'max'.*lorentz_centroid"):
        P.pool("max", x, mask, c)
    with pytest.raises(ValueError, match=r"p > 0, got p=0"):
        P.outward_einstein_midpoint(x, mask, c, p=0.0)
    empty = mask.clone()
    empty[3] = False
    with pytest.raises(ValueError, match=r"no unmasked token \(batch rows \[3\]\)"):
        P.lorentz_centroid(x, empty, c)
    with pytest.raises(ValueError, match=r"mask must be \[B, T\]"):
        P.einstein_midpoint(x, mask[:, :-1], c)
    with pytest.raises(ValueError, match=r"token points must be \[B, T, d\+1\]"):
        P.cls(x[0], mask, c)
