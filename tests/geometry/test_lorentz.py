"""Property tests of the Lorentz geometry core (src/lorentz_rag/geometry/lorentz.py).

Every test runs over dtypes x curvatures with many points in one call: radii from 1e-3 to x0 ~ 1e3 (in units
of 1/sqrt(c)), several directions per radius. References are float64 closed forms, the float64 arcosh
form, and geoopt's Lorentz manifold. Tolerances are stated where they are set and say why.
"""

from __future__ import annotations

import math

import geoopt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lorentz_rag.geometry import lorentz as L

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
ALL_DTYPES = [F64, F32, BF16, F16]
HALF_DTYPES = [BF16, F16]
CURVATURES = [0.1, 1.0, 10.0]
D = 8
# sqrt(c) * radius: from 1e-3 to sqrt(c) x0 = 1e3 (arcosh(1e3) ~ 7.6).
SCALED_RADII = [1e-3, 1e-2, 0.1, 0.5, 1.0, 2.0, 4.0, 6.0, math.acosh(1e3)]
DIRS_PER_RADIUS = 6


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _unit(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.randn(n, d, generator=gen, dtype=F64)
    return u / u.norm(dim=-1, keepdim=True)


def _tangents(c: float, seed: int, d: int = D) -> torch.Tensor:
    """float64 tangent vectors ``[len(SCALED_RADII) * DIRS_PER_RADIUS, d]`` of norm r = s / sqrt(c)."""
    gen = torch.Generator().manual_seed(seed)
    radii = torch.tensor(SCALED_RADII, dtype=F64).repeat_interleave(DIRS_PER_RADIUS) / math.sqrt(c)
    return _unit(len(radii), d, gen) * radii.unsqueeze(-1)


def _points(c: float, seed: int, dtype: torch.dtype, d: int = D) -> torch.Tensor:
    """Points at all test radii, made in float64 and rounded to ``dtype`` (time recomputed in dtype)."""
    xs = L.expmap0(_tangents(c, seed, d), c)[..., 1:].to(dtype)
    return L.lift(xs, c)


def _manifold_error(x: torch.Tensor, c: float) -> torch.Tensor:
    """``|-c <x, x>_L - 1| / (c x0^2)`` in float64: the relative defect of the hyperboloid equation."""
    x = x.to(F64)
    return (-c * L.inner(x, x) - 1.0).abs() / (c * x[..., 0] ** 2)


def _manifold_tol(dtype: torch.dtype) -> float:
    # Rounding x0 and xs to the output dtype alone gives up to 2 eps; computing |z|^2 over D coordinates in
    # float32/float64 adds a few eps more. Half dtypes are computed in float32 and only rounded at the end.
    return 3 * _eps(dtype) if dtype in HALF_DTYPES else (4 + D) * _eps(dtype)


def _assert_within(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol) -> None:
    """``|actual - expected| <= atol + rtol |expected|`` elementwise, in float64; ``atol`` may be a tensor."""
    actual, expected = actual.to(F64), expected.to(F64)
    bound = atol + rtol * expected.abs()
    err = (actual - expected).abs()
    worst = (err / bound).nan_to_num(nan=float("inf")).max().item()
    assert worst <= 1.0, f"error exceeds the bound by a factor {worst:.3g} (max abs error {err.max():.3g})"


def _ref_distance(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """float64 arcosh form on the points the (rounded) space coordinates denote."""
    xl = L.lift(x[..., 1:].to(F64), c)
    yl = L.lift(y[..., 1:].to(F64), c)
    z = (-c * L.inner(xl, yl)).clamp_min(1.0)
    return torch.acosh(z) / math.sqrt(c)


# ----------------------------------------------------------------------------------------------------------
# Points lie on the hyperboloid
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_lift_expmap0_project_land_on_the_hyperboloid(dtype, c):
    v = _tangents(c, seed=1).to(dtype)
    assert v.dtype == dtype
    tol = _manifold_tol(dtype)

    x = L.expmap0(v, c)
    assert x.dtype == dtype and x.shape == (v.shape[0], D + 1)
    assert (x[:, 0] > 0).all()
    assert _manifold_error(x, c).max().item() <= tol

    lifted = L.lift(x[:, 1:], c)
    assert lifted.dtype == dtype
    assert _manifold_error(lifted, c).max().item() <= tol

    # A future-timelike ambient vector: a positive combination of points, scaled.
    gen = torch.Generator().manual_seed(2)
    pts = L.expmap0(_tangents(c, seed=3), c)
    a = 0.1 + 0.8 * torch.rand(pts.shape[0], 1, generator=gen, dtype=F64)
    amb = (a * pts + (1 - a) * pts.roll(1, 0)) * 7.5
    proj = L.project(amb.to(dtype), c)
    assert proj.dtype == dtype
    assert _manifold_error(proj, c).max().item() <= tol
    # P keeps the direction of v (in float64: P(v) = v / sqrt(-c <v, v>)).
    if dtype == F64:
        expected = amb / (-c * L.inner(amb, amb, keepdim=True)).sqrt()
        torch.testing.assert_close(proj, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("c", CURVATURES)
def test_project_is_identity_on_points_and_scale_invariant(c):
    x = _points(c, seed=4, dtype=F64)
    # -<v, v>_L = x0^2 - |xs|^2 cancels: with coordinates rounded to eps, P's normalisation carries a
    # relative error ~eps * c * x0^2 (the conditioning of the problem, not of the formula).
    rtol = 4 * _eps(F64) * c * x[:, :1] ** 2
    for scale in (1.0, 1e3, 1e-3):
        _assert_within(L.project(scale * x, c), x, rtol=0, atol=rtol * x.abs() + 1e-300)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_project_space_is_the_space_part_of_project(dtype):
    c = torch.tensor(0.7, requires_grad=True)
    v = (2.0 * _points(0.7, seed=5, dtype=F64)).to(dtype).requires_grad_(True)
    full, space = L.project(v, c), L.project_space(v, c)
    assert space.dtype == full.dtype == dtype and space.shape == (*v.shape[:-1], v.shape[-1] - 1)
    assert torch.equal(space, full[..., 1:])
    w = torch.randn(space.shape, dtype=F64).to(dtype)
    g_space = torch.autograd.grad((space.float() * w.float()).sum(), (v, c))
    g_full = torch.autograd.grad((full[..., 1:].float() * w.float()).sum(), (v, c))
    for a, b in zip(g_space, g_full):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("c", CURVATURES)
def test_origin_is_on_the_hyperboloid_at_radius_zero(c):
    o = L.origin(D, c, dtype=F64)
    assert o.shape == (D + 1,) and o.dtype == F64
    assert o[0].item() == pytest.approx(1 / math.sqrt(c), rel=1e-15)
    assert L.radius(o, c).item() == 0.0
    assert _manifold_error(o, c).item() <= 4 * _eps(F64)
    torch.testing.assert_close(L.expmap0(torch.zeros(D, dtype=F64), c), o, rtol=2 * _eps(F64), atol=0)


# ----------------------------------------------------------------------------------------------------------
# expmap0 / logmap0
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_logmap0_inverts_expmap0_below_the_cap(dtype, c):
    v = _tangents(c, seed=5).to(dtype)
    assert v.dtype == dtype
    back = L.logmap0(L.expmap0(v, c), c)
    assert back.dtype == dtype
    err = (back.to(F64) - v.to(F64)).norm(dim=-1)
    # Relative error in |v|: the point's coordinates carry relative rounding eps(dtype); asinh turns a
    # relative error of |xs| into an absolute error of sqrt(c) r, hence the 1/sqrt(c) floor term.
    # Half dtypes round v, the point and the result: a few eps(dtype) each.
    k = 8 if dtype in HALF_DTYPES else 16
    bound = k * _eps(dtype) * (v.to(F64).norm(dim=-1) + 1e-3 / math.sqrt(c))
    assert (err <= bound).all(), (err / bound).max()
    # radius(expmap0(v)) = |v| below the cap.
    r = L.radius(L.expmap0(v.to(F64), c), c)
    torch.testing.assert_close(r, v.to(F64).norm(dim=-1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_expmap0_cap_saturates_the_radius_and_stays_finite(dtype, c):
    gen = torch.Generator().manual_seed(6)
    u = _unit(5, D, gen)
    # 1.05: beyond the cap also after rounding |v| to bf16/fp16 (relative spacing 2^-8 / 2^-11).
    scaled = torch.tensor([1.05, 1.5, 10.0, 1e3, 1e6], dtype=F64) * L.MAX_EXPMAP_ARG
    v = u * scaled.unsqueeze(-1) / math.sqrt(c)
    v = v[v.abs().amax(-1) < torch.finfo(dtype).max]  # float16 cannot hold the largest ones
    assert len(v) >= 3
    v = v.to(dtype).requires_grad_(True)
    x = L.expmap0(v, c)
    assert x.dtype == dtype
    assert torch.isfinite(x).all()
    assert _manifold_error(x.detach(), c).max().item() <= _manifold_tol(dtype)
    r = L.radius(x.to(F64), c) * math.sqrt(c)
    if dtype == F16:
        # float16 saturates where |xs| reaches 32752 (half its range) if that comes first (c below ~1).
        cap = min(L.MAX_EXPMAP_ARG, math.asinh(math.sqrt(c) * torch.finfo(F16).max / 2))
    else:
        cap = L.MAX_EXPMAP_ARG
    # All radii saturate at the same value (to the output dtype's rounding of |xs|).
    torch.testing.assert_close(r, torch.full_like(r, cap), rtol=2 * _eps(dtype), atol=0)
    # The direction is kept.
    cos = torch.nn.functional.cosine_similarity(x[:, 1:].detach().to(F64), v.detach().to(F64), dim=-1)
    assert (cos > 1 - 4 * _eps(dtype)).all()
    # Beyond the cap the radius no longer depends on |v|: its gradient is (numerically) zero and finite.
    L.radius(x, c, dtype=F32).sum().backward()
    assert torch.isfinite(v.grad).all()
    assert v.grad.to(F64).abs().max().item() <= 1e-3


def test_expmap0_cap_constant_matches_its_comment():
    assert math.sinh(L.MAX_EXPMAP_ARG) == pytest.approx(2.0**15, rel=1e-12)


@pytest.mark.parametrize("c", CURVATURES)
def test_expmap0_logmap0_agree_with_geoopt(c):
    manifold = geoopt.manifolds.Lorentz(k=torch.tensor(1.0 / c, dtype=F64))
    v = _tangents(c, seed=7)
    ours = L.expmap0(v, c)
    theirs = manifold.expmap0(torch.cat([torch.zeros_like(v[:, :1]), v], dim=-1))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    back = manifold.logmap0(ours)
    # geoopt's arcosh clamps its radicand at 1e-15, so its logmap0 is only good to ~3e-8 near the origin.
    torch.testing.assert_close(L.logmap0(ours, c), back[:, 1:], rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------------------------------------


def _random_pairs(c: float, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = _points(c, seed, dtype)
    gen = torch.Generator().manual_seed(seed + 100)
    y = x[torch.randperm(x.shape[0], generator=gen)]
    return x, y


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_distance_symmetric_and_zero_on_the_diagonal(dtype, c):
    x, y = _random_pairs(c, dtype, seed=8)
    assert x.dtype == dtype
    dxy, dyx = L.geodesic_distance(x, y, c), L.geodesic_distance(y, x, c)
    assert dxy.dtype == dtype
    assert torch.equal(dxy, dyx)
    assert torch.equal(L.sq_distance(x, y, c), L.sq_distance(y, x, c))
    assert (L.sq_distance(x, y, c) >= 0).all()

    xg = x.clone().requires_grad_(True)
    cc = torch.tensor(c, dtype=F64, requires_grad=True)
    dxx = L.geodesic_distance(xg, x.clone(), cc)
    assert torch.equal(dxx, torch.zeros_like(dxx))
    assert torch.equal(L.sq_distance(x, x, c), torch.zeros(x.shape[0], dtype=dtype))
    dxx.sum().backward()
    assert torch.isfinite(xg.grad).all() and torch.isfinite(cc.grad)
    assert xg.grad.abs().max().item() == 0.0  # the subgradient at the minimum
    # d(x, x) = 0 also for the very same tensor (both arguments receive gradient).
    xs = x.clone().requires_grad_(True)
    L.geodesic_distance(xs, xs, c).sum().backward()
    assert torch.isfinite(xs.grad).all()


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_distance_matches_float64_arcosh_reference(dtype, c):
    x, y = _random_pairs(c, dtype, seed=9)
    d = L.geodesic_distance(x, y, c)
    assert d.dtype == dtype
    ref = _ref_distance(x, y, c)
    keep = ref > 1e-2 / math.sqrt(c)  # the float64 arcosh reference itself loses digits below this
    assert keep.sum() > 0.9 * keep.numel()
    # The computation runs in float32 for float32 and half inputs (1e-5 covers it); the result is then
    # rounded to the output dtype.
    rtol = 1e-12 if dtype == F64 else max(1e-5, _eps(dtype))
    torch.testing.assert_close(d.to(F64)[keep], ref[keep], rtol=rtol, atol=0)


@pytest.mark.parametrize("c", CURVATURES)
def test_distance_agrees_with_geoopt(c):
    manifold = geoopt.manifolds.Lorentz(k=torch.tensor(1.0 / c, dtype=F64))
    # geoopt's k is 1/c (its points satisfy <x, x>_L = -k): check on known points before comparing.
    o = L.origin(D, c, dtype=F64)
    ok, reason = manifold._check_point_on_manifold(o, atol=1e-12, rtol=1e-12)
    assert ok, reason
    r = torch.tensor([0.5, 2.0], dtype=F64) / math.sqrt(c)
    known = L.expmap0(torch.nn.functional.pad(r.unsqueeze(-1), (0, D - 1)), c)
    torch.testing.assert_close(manifold.dist0(known), r, rtol=1e-10, atol=0)
    torch.testing.assert_close(manifold.dist(o, known), r, rtol=1e-10, atol=0)

    x, y = _random_pairs(c, F64, seed=10)
    theirs = manifold.dist(x, y)
    keep = theirs > 1e-2 / math.sqrt(c)  # geoopt clamps arcosh's radicand at 1e-15
    torch.testing.assert_close(L.geodesic_distance(x, y, c)[keep], theirs[keep], rtol=1e-9, atol=0)
    # float32 inputs against geoopt in float64 on the same (rounded) points.
    x32, y32 = L.lift(x[:, 1:].float(), c), L.lift(y[:, 1:].float(), c)
    theirs32 = manifold.dist(L.lift(x32[:, 1:].double(), c), L.lift(y32[:, 1:].double(), c))
    d32 = L.geodesic_distance(x32, y32, c)
    assert d32.dtype == F32
    torch.testing.assert_close(d32.double()[keep], theirs32[keep], rtol=1e-5, atol=0)


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", [F64, F32, BF16])
def test_triangle_inequality(dtype, c):
    x = _points(c, seed=11, dtype=dtype)
    gen = torch.Generator().manual_seed(12)
    y = x[torch.randperm(x.shape[0], generator=gen)]
    z = x[torch.randperm(x.shape[0], generator=gen)]
    dxz = L.geodesic_distance(x, z, c, dtype=F64)
    dxy = L.geodesic_distance(x, y, c, dtype=F64)
    dyz = L.geodesic_distance(y, z, c, dtype=F64)
    slack = 1e-12 if dtype == F64 else 1e-5  # computed in float32 for float32 and bf16
    assert (dxz <= (dxy + dyz) * (1 + slack)).all()
    # The equality case: y on the geodesic through the origin between x and z (same direction).
    u = _unit(1, D, gen)
    r = torch.tensor([0.3, 1.0, 2.5], dtype=F64) / math.sqrt(c)
    a, m, b = (L.expmap0((ri * u).to(dtype), c) for ri in r)
    total = L.geodesic_distance(a, m, c, dtype=F64) + L.geodesic_distance(m, b, c, dtype=F64)
    torch.testing.assert_close(L.geodesic_distance(a, b, c, dtype=F64), total, rtol=10 * slack, atol=0)


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", [F64, F32, BF16])
def test_points_on_one_ray_are_at_the_radius_difference(dtype, c):
    gen = torch.Generator().manual_seed(13)
    r1 = torch.tensor(SCALED_RADII, dtype=F64).repeat(3) / math.sqrt(c)
    gaps = torch.tensor([1e-2, 0.5, 3.0], dtype=F64).repeat_interleave(len(SCALED_RADII)) / math.sqrt(c)
    r2 = r1 + gaps
    u = _unit(len(r1), D, gen)
    if dtype == BF16:
        # Rounding a random direction to bf16 at two radii would bend the ray (by ~eps_bf16 * x0): use
        # signed coordinate axes, which stay exact.
        u = torch.eye(D, dtype=F64)[torch.randint(D, (len(r1),), generator=gen)] * u.sign()[:, :1]
    x = L.expmap0((u * r1.unsqueeze(-1)).to(dtype), c)
    y = L.expmap0((u * r2.unsqueeze(-1)).to(dtype), c)
    d = L.geodesic_distance(x, y, c, dtype=F64)
    if dtype == F64:
        torch.testing.assert_close(d, gaps, rtol=1e-9, atol=0)
        return
    # Radially, rounding |xs| to eps(dtype) moves sqrt(c) r by eps(dtype) at every radius (that is the point
    # of the radial term), so the absolute error is a few eps / sqrt(c) however far out the pair is; the
    # inputs v were themselves rounded, which for bf16 moves each radius by up to eps r.
    exact = L.radius(y, c, dtype=F64) - L.radius(x, c, dtype=F64)
    torch.testing.assert_close(d, exact, rtol=1e-5, atol=8 * _eps(F32) / math.sqrt(c))
    if dtype == F32:
        _assert_within(d, gaps, rtol=1e-4, atol=4 * _eps(F32) * (1 + r2 * math.sqrt(c)))


def _isosceles(r: torch.Tensor, t: torch.Tensor, c: float, gen: torch.Generator):
    """Two points at radius r (float64) with angle t between them, and the closed-form distance."""
    u = _unit(len(r), D, gen)
    w = _unit(len(r), D, gen)
    w = w - (w * u).sum(-1, keepdim=True) * u
    w = w / w.norm(dim=-1, keepdim=True)
    u2 = torch.cos(t).unsqueeze(-1) * u + torch.sin(t).unsqueeze(-1) * w
    sc = math.sqrt(c)
    expected = 2 / sc * torch.asinh(torch.sinh(sc * r) * torch.sin(t / 2))
    return L.expmap0(u * r.unsqueeze(-1), c), L.expmap0(u2 * r.unsqueeze(-1), c), expected


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", [F64, F32, BF16])
def test_isosceles_pairs_match_the_closed_form(dtype, c):
    gen = torch.Generator().manual_seed(14)
    angles = torch.tensor([1e-7, 1e-4, 1e-2, 0.3, 1.0, math.pi / 2, 3.0, math.pi], dtype=F64)
    r = torch.tensor(SCALED_RADII, dtype=F64).repeat(len(angles)) / math.sqrt(c)
    t = angles.repeat_interleave(len(SCALED_RADII))
    x, y, expected = _isosceles(r, t, c, gen)
    if dtype == F64:
        torch.testing.assert_close(L.geodesic_distance(x, y, c), expected, rtol=1e-9, atol=0)
        return
    xd, yd = L.lift(x[:, 1:].to(dtype), c), L.lift(y[:, 1:].to(dtype), c)
    d = L.geodesic_distance(xd, yd, c, dtype=F64)
    # Against the float64 distance of the rounded points, the float32 computation is good to ~1e-5
    # relative, plus an absolute ~eps32 * |xs|: the angular term differences unit vectors of size 1.
    ref = _ref_distance(xd, yd, c)
    x0 = x[:, 0]
    _assert_within(d, ref, rtol=1e-5, atol=8 * _eps(F32) * x0)
    # Against the intended pair, rounding the coordinates to the dtype moves each point tangentially by
    # ~eps(dtype) |xs|: that is the representation limit, also for the best possible formula.
    _assert_within(d, expected, rtol=1e-4, atol=4 * _eps(dtype) * x0 * math.sqrt(D))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    c=st.sampled_from(CURVATURES),
    s=st.floats(1e-3, math.acosh(1e3)),
    t=st.floats(1e-6, math.pi),
)
def test_isosceles_closed_form_hypothesis(c, s, t):
    gen = torch.Generator().manual_seed(15)
    r = torch.tensor([s / math.sqrt(c)], dtype=F64)
    x, y, expected = _isosceles(r, torch.tensor([t], dtype=F64), c, gen)
    torch.testing.assert_close(L.geodesic_distance(x, y, c), expected, rtol=1e-9, atol=1e-15)


# ----------------------------------------------------------------------------------------------------------
# Pairwise functions
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_pairwise_distance_equals_broadcast_distance(dtype, c):
    x = _points(c, seed=16, dtype=dtype)
    y = torch.cat([x[::3], _points(c, seed=17, dtype=dtype)])  # includes pairs with x == y
    assert x.dtype == dtype
    pair = L.pairwise_geodesic_distance(x, y, c)
    assert pair.dtype == dtype and pair.shape == (x.shape[0], y.shape[0])
    single = L.geodesic_distance(x.unsqueeze(1), y.unsqueeze(0), c)
    ref = _ref_distance(x.unsqueeze(1), y.unsqueeze(0), c)
    # Documented tolerance: the pairwise angular term |u|^2 + |v|^2 - 2 u.v runs in float64, absolute error
    # ~eps64 |xs| |ys| in the squared distance, so up to sqrt(8 eps64) |xs| in d for coincident points; the
    # broadcast form differences unit vectors in the compute dtype, ~eps |xs| in d. Plus output rounding.
    x0 = torch.maximum(x[:, 0].unsqueeze(1), y[:, 0].unsqueeze(0)).to(F64)
    ct_eps = _eps(F64) if dtype == F64 else _eps(F32)
    atol = (math.sqrt(8 * _eps(F64)) + 8 * ct_eps) * x0
    rtol = 1e-10 if dtype == F64 else max(1e-5, _eps(dtype))
    _assert_within(pair, single, rtol=rtol, atol=atol)
    keep = ref > 1e-2 / math.sqrt(c)
    torch.testing.assert_close(pair.to(F64)[keep], ref[keep], rtol=rtol, atol=0)
    # The pairwise self-distances: ~sqrt(1e-16) * |xs| from the float64 cancellation (it was ~sqrt(eps32)
    # * |xs| in float32, d(x, x) ~ 1 at x0 ~ 3e3).
    self_d = L.pairwise_geodesic_distance(x, x, c, dtype=F64).diagonal()
    assert (self_d <= 4e-8 * x[:, 0].to(F64) + 1e-12).all()


@pytest.mark.parametrize("d", [16, 768])
def test_pairwise_distance_float32_angular_within_documented_bound(d):
    """angular_dtype=float32: squared distance within ANGULAR_FP32_ERR_EPS * eps32 * |xs||ys| of float64;
    distances >= 0.1 good to 1% at sqrt(c)|xs| <= 10; d(x, x) <= sqrt(16 eps32) |xs|; far points need f64."""
    g = torch.Generator().manual_seed(40 + d)
    for c in CURVATURES:
        sc = math.sqrt(c)
        # sqrt(c)|xs| uniform in [0, 10], random directions; y: near duplicates of x and independent points.
        xs = torch.randn(200, d, generator=g, dtype=F64)
        xs = xs / xs.norm(dim=-1, keepdim=True) * torch.rand(200, 1, generator=g, dtype=F64) * 10 / sc
        ys = torch.cat([xs[:100] + 1e-3 / sc * torch.randn(100, d, generator=g, dtype=F64), xs[100:].flip(0)])
        x, y = L.lift(xs.float(), c), L.lift(ys.float(), c)
        d64 = L.pairwise_geodesic_distance(x, y, c, dtype=F64)
        d32 = L.pairwise_geodesic_distance(x, y, c, dtype=F64, angular_dtype=F32)
        assert torch.equal(d64, L.pairwise_geodesic_distance(x, y, c, dtype=F64, angular_dtype=F64))
        nx, ny = x[:, 1:].to(F64).norm(dim=-1), y[:, 1:].to(F64).norm(dim=-1)
        bound = L.ANGULAR_FP32_ERR_EPS * _eps(F32) * nx.unsqueeze(1) * ny.unsqueeze(0)
        # |x - y|_L^2 = (4/c) sinh^2(sqrt(c) d / 2): compare squared chords, the quantity the bound is on.
        # Plus float32 rounding of the sum and of d itself (relative ~ d eps32 in the squared chord).
        sq32, sq64 = (4 / c * torch.sinh(sc * t / 2).pow(2) for t in (d32, d64))
        rounding = 4 * _eps(F32) * (1 + sc * d64) * sq64
        assert ((sq32 - sq64).abs() <= bound + rounding + 1e-12).all()
        far = d64 >= 0.1
        assert far.any() and (~far).any()
        torch.testing.assert_close(d32[far], d64[far], rtol=1e-2, atol=0)
        self32 = L.pairwise_geodesic_distance(x, x, c, dtype=F64, angular_dtype=F32).diagonal()
        assert (self32 <= math.sqrt(L.ANGULAR_FP32_ERR_EPS * _eps(F32)) * nx + 1e-12).all()
    # Far from the origin (x0 ~ 3e3, c = 1) float32 cannot resolve d(x, x) = 0; float64 can.
    x = L.lift(torch.randn(64, d, generator=g).mul(3e3 / math.sqrt(d)), 1.0)
    assert L.pairwise_geodesic_distance(x, x, 1.0, angular_dtype=F32).diagonal().max() > 0.1
    assert L.pairwise_geodesic_distance(x, x, 1.0, dtype=F64).diagonal().max() < 1e-3
    with pytest.raises(ValueError, match="angular_dtype"):
        L.pairwise_geodesic_distance(x, x, 1.0, angular_dtype=torch.bfloat16)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_pairwise_inner_is_ip_query_matmul_and_ranks_like_distance(dtype):
    c = 1.0
    q = _points(c, seed=18, dtype=dtype)[:20]
    x = _points(c, seed=19, dtype=dtype)
    pi = L.pairwise_inner(q, x)
    assert pi.dtype == dtype and pi.shape == (20, x.shape[0])
    single = L.inner(q.unsqueeze(1), x.unsqueeze(0))
    if dtype in (F64, F32):
        assert torch.equal(pi, L.ip_query(q) @ x.T)
        torch.testing.assert_close(pi, single, rtol=10 * _eps(dtype), atol=10 * _eps(dtype))
    else:
        # pairwise_inner upcasts to float32, a half-precision matmul would not: compare in float32.
        assert torch.equal(pi, (L.ip_query(q.float()) @ x.float().T).to(dtype))
        torch.testing.assert_close(pi, single, rtol=_eps(dtype), atol=0)
    # Ordering by -d(q, x) equals ordering by <q, x>_L (exact nearest neighbour = MIPS); float64 ties aside.
    q64, x64 = L.lift(q[:, 1:].to(F64), c), L.lift(x[:, 1:].to(F64), c)  # the points the rounded xs denote
    by_distance = (-L.pairwise_geodesic_distance(q64, x64, c)).argsort(dim=-1, descending=True)
    by_inner = L.pairwise_inner(q64, x64).argsort(dim=-1, descending=True)
    assert torch.equal(by_distance[:, :10], by_inner[:, :10])


# ----------------------------------------------------------------------------------------------------------
# Dtype contract, extreme inputs, curvature gradients
# ----------------------------------------------------------------------------------------------------------


def _apply_all(x, y, v, amb, c, **kw) -> dict[str, torch.Tensor]:
    """Every public function: points x, y ``[n, d+1]``, space vectors v ``[n, d]``, ambient vectors amb."""
    return {
        "lift": L.lift(v, c, **kw),
        "expmap0": L.expmap0(v, c, **kw),
        "logmap0": L.logmap0(x, c, **kw),
        "project": L.project(amb, c, **kw),
        "inner": L.inner(x, y, **kw),
        "sq_distance": L.sq_distance(x, y, c, **kw),
        "geodesic_distance": L.geodesic_distance(x, y, c, **kw),
        "pairwise_inner": L.pairwise_inner(x, y, **kw),
        "pairwise_geodesic_distance": L.pairwise_geodesic_distance(x, y, c, **kw),
        "radius": L.radius(x, c, **kw),
        "to_poincare": L.to_poincare(x, c, **kw),
        "to_klein": L.to_klein(x, c, **kw),
    }


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_inputs_are_computed_in_float32_and_returned_in_their_dtype(dtype):
    c = 1.0
    # Moderate radii: a half-precision point far out is rounded off the hyperboloid, and project() of it is
    # ill-conditioned (its float16 output also saturates earlier, by design).
    x = _points(c, seed=20, dtype=dtype)[: 5 * DIRS_PER_RADIUS]
    y = x.roll(1, 0)
    v = _tangents(c, seed=21).to(dtype)[: 5 * DIRS_PER_RADIUS]
    assert x.dtype == dtype and v.dtype == dtype
    amb = 3 * x
    native = _apply_all(x, y, v, amb, c)
    as_f32 = _apply_all(x, y, v, amb, c, dtype=F32)
    upcast = _apply_all(x.float(), y.float(), v.float(), amb.float(), c)
    for name in native:
        assert native[name].dtype == dtype, name
        assert as_f32[name].dtype == F32, name
        # dtype= only changes the output: the float32 result is the computation on the upcast inputs.
        assert torch.equal(as_f32[name], upcast[name]), name
        assert torch.equal(native[name], upcast[name].to(dtype)), name
    # float64 output on request, from float32 inputs too.
    assert L.geodesic_distance(x.float(), y.float(), c, dtype=F64).dtype == F64


def _extreme_inputs(c: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Space vectors: zero, tiny, ordinary, at and far beyond the expmap cap; and points made of them."""
    gen = torch.Generator().manual_seed(22)
    u = _unit(7, D, gen)
    scaled = torch.tensor([0.0, 1e-30, 1e-6, 1.0, L.MAX_EXPMAP_ARG, 2 * L.MAX_EXPMAP_ARG, 1e4], dtype=F64)
    v = (u * scaled.unsqueeze(-1) / math.sqrt(c)).to(dtype)
    return v, L.expmap0(v, c)


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_no_nan_or_inf_forward_and_backward_on_extreme_inputs(dtype, c):
    v, x = _extreme_inputs(c, dtype)
    origin = L.origin(D, c, dtype=dtype).expand(2, D + 1)
    x = torch.cat([x, origin]).detach().requires_grad_(True)
    v = torch.cat([v, torch.zeros(2, D, dtype=dtype)]).detach().requires_grad_(True)
    cc = torch.tensor(c, dtype=F32, requires_grad=True)
    assert x.dtype == dtype and v.dtype == dtype
    out = _apply_all(x, x.roll(1, 0), v, 0.5 * x, cc)
    for name, t in out.items():
        if dtype == F16 and name in ("inner", "pairwise_inner", "sq_distance"):
            # <x, y>_L ~ -x0 y0 and |x - y|_L^2 ~ 4 x0 y0 exceed float16's 65504 for far points: they have no
            # float16 value. Asking for a float32 result is the remedy.
            fn = {"inner": L.inner, "pairwise_inner": L.pairwise_inner, "sq_distance": L.sq_distance}[name]
            args = (x, x.roll(1, 0)) if name != "sq_distance" else (x, x.roll(1, 0), cc)
            t = fn(*args, dtype=F32)
        assert torch.isfinite(t).all(), name
    out["self_distance"] = L.geodesic_distance(x, x, cc)
    out["pairwise_self"] = L.pairwise_geodesic_distance(x, x, cc)
    # Natural scalar losses (distances, radii, squared tangent norms): their gradients are bounded, so a
    # finite result is a real check (a sum of raw coordinates would overflow float16 by construction).
    pts = L.expmap0(v, cc)
    loss = (
        L.radius(pts, cc, dtype=F32).sum()
        + L.geodesic_distance(pts, x, cc, dtype=F32).sum()
        + L.radius(L.lift(v, cc), cc, dtype=F32).sum()
        + L.radius(L.project(x, cc), cc, dtype=F32).sum()
        + L.logmap0(x, cc, dtype=F32).pow(2).sum() * 1e-4
        + out["self_distance"].float().sum()
        + out["pairwise_self"].float().sum()
        + out["pairwise_geodesic_distance"].float().sum()
        + L.to_poincare(x, cc, dtype=F32).sum()
    )
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(v.grad).all() and torch.isfinite(cc.grad)


@pytest.mark.parametrize("dtype", [F64, F32, BF16])
def test_curvature_tensor_receives_finite_gradients(dtype):
    x = _points(1.0, seed=23, dtype=dtype)
    v = _tangents(1.0, seed=24).to(dtype)
    fns = {
        "lift": lambda c: L.lift(v, c, dtype=F64)[:, 0].sum(),
        "expmap0": lambda c: L.expmap0(v, c, dtype=F64)[:, 0].sum(),
        "logmap0": lambda c: L.logmap0(x, c, dtype=F64).sum(),
        "project": lambda c: L.project(x, c, dtype=F64).sum(),
        "geodesic_distance": lambda c: L.geodesic_distance(x, x.roll(1, 0), c, dtype=F64).sum(),
        "self_distance": lambda c: L.geodesic_distance(x, x, c, dtype=F64).sum(),
        "pairwise": lambda c: L.pairwise_geodesic_distance(x, x, c, dtype=F64).sum(),
        "radius": lambda c: L.radius(x, c, dtype=F64).sum(),
        "origin": lambda c: L.origin(D, c, dtype=F64)[0],
    }
    for name, fn in fns.items():
        cc = torch.tensor(0.7, dtype=F32, requires_grad=True)
        fn(cc).backward()
        assert cc.grad is not None and torch.isfinite(cc.grad), name
        if name != "self_distance":
            assert cc.grad != 0, name


def test_curvature_gradients_match_finite_differences():
    x = _points(1.0, seed=25, dtype=F64)
    y = x.roll(1, 0)
    v = _tangents(1.0, seed=26)
    for fn in (
        lambda c: L.geodesic_distance(x, y, c),
        lambda c: L.pairwise_geodesic_distance(x[:5], y[:7], c),
        lambda c: L.expmap0(v, c),
        lambda c: L.logmap0(L.lift(x[:, 1:], c), c),
        lambda c: L.radius(x, c),
        lambda c: L.project(x, c),
    ):
        assert torch.autograd.gradcheck(fn, (torch.tensor(0.8, dtype=F64, requires_grad=True),))


def test_invalid_curvature_is_rejected_with_its_value():
    x = _points(1.0, seed=27, dtype=F32)
    with pytest.raises(ValueError, match=r"c must be a finite number > 0.*-1\.0"):
        L.geodesic_distance(x, x, -1.0)
    with pytest.raises(ValueError, match=r"curvature must be a scalar.*\(2,\)"):
        L.radius(x, torch.tensor([1.0, 2.0]))
