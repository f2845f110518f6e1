"""The Lorentz (hyperboloid) model of hyperbolic space: pure functions on tensors.

Conventions (one for the whole project, see docs/design.md, section 2 (Lorentz model conventions)):

- Curvature is ``-c`` with ``c > 0``. ``c`` is a Python float or a 0-d tensor (it may require grad).
- A point of ``H^d_c`` is a tensor ``[..., d+1]`` with the **time coordinate first**:
  ``x = (x0, xs)``, ``<x, x>_L = -1/c``, ``x0 > 0``. The origin is ``o = (1/sqrt(c), 0, ..., 0)``.
- ``<x, y>_L = -x0*y0 + xs.ys``.
- Functions that produce points compute the space part and recompute the time part with :func:`lift`;
  stored time coordinates are never trusted where a formula can avoid them.

Precision: bf16/fp16 inputs are computed in float32 and returned in the input dtype (pass ``dtype=`` to
choose another output dtype). float32 and float64 inputs are computed in their own dtype.

Distances use a radial/angular decomposition of the squared Lorentzian distance,

    |x - y|_L^2 = (4/c) sinh^2(sqrt(c) (r_x - r_y) / 2) + |xs| |ys| |xs/|xs| - ys/|ys||^2,

with ``r = asinh(sqrt(c) |xs|) / sqrt(c)`` the distance to the origin. Both terms are non-negative and
each is computed without cancellation, so ``d(x, x) == 0`` exactly and nearby points keep their relative
accuracy far from the origin, along the radius as well as across it (the plain inner-product form
``arcosh(-c <x, y>_L)`` cannot tell d = 1e-3 from d = 1e-1 at x0 ~ 4e3 in float32).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "ANGULAR_FP32_ERR_EPS",
    "MAX_EXPMAP_ARG",
    "CurvatureLike",
    "as_curvature",
    "expmap0",
    "geodesic_distance",
    "inner",
    "ip_query",
    "lift",
    "logmap0",
    "origin",
    "pairwise_geodesic_distance",
    "pairwise_inner",
    "project",
    "project_space",
    "radius",
    "sq_distance",
    "to_klein",
    "to_poincare",
]

# A curvature argument: a Python float, or a 0-d tensor (from `lorentz_rag.nn.Curvature`, possibly trainable).
CurvatureLike = float | Tensor

# expmap0 caps sqrt(c)|v| at asinh(2^15) (about 11.09): beyond it x0 exceeds 2^15/sqrt(c), where float32
# spacing (~4e-3) is coarser than the distances a retriever must tell apart, and cosh overflows bf16/fp16
# ranges soon after. Points are still on the hyperboloid; only the radius saturates.
MAX_EXPMAP_ARG = math.asinh(2.0**15)


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.promote_types(tensors[0].dtype, tensors[-1].dtype)
    for t in tensors[1:-1]:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if not dtype.is_floating_point:
        return torch.get_default_dtype()
    return dtype


def as_curvature(c: CurvatureLike, like: Tensor) -> Tensor:
    """``c`` as a tensor in ``like``'s dtype and device (keeps its autograd graph)."""
    if isinstance(c, Tensor):
        if c.numel() != 1:
            raise ValueError(f"curvature must be a scalar, got a tensor of shape {tuple(c.shape)}")
        return c.reshape(()).to(dtype=like.dtype, device=like.device)
    c = float(c)
    if not c > 0 or not math.isfinite(c):
        raise ValueError(f"curvature c must be a finite number > 0 (the space has curvature -c), got {c}")
    return torch.tensor(c, dtype=like.dtype, device=like.device)


def _safe_norm(x: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """Euclidean norm whose gradient at 0 is 0 instead of NaN."""
    sq = x.pow(2).sum(dim=dim, keepdim=keepdim)
    tiny = torch.finfo(sq.dtype).tiny
    # `sq <= tiny`, not `sq > tiny`: a NaN fails both tests, and it must reach the result, not become 0.
    return torch.where(sq <= tiny, torch.zeros_like(sq), sq.clamp_min(tiny).sqrt())


def _out(t: Tensor, ref_dtype: torch.dtype, dtype: torch.dtype | None) -> Tensor:
    return t.to(dtype or ref_dtype)


def origin(d: int, c: CurvatureLike = 1.0, *, dtype: torch.dtype | None = None, device=None) -> Tensor:
    """The origin ``o = (1/sqrt(c), 0, ..., 0)`` of ``H^d_c``: ``[d+1]``."""
    o = torch.zeros(d + 1, dtype=dtype or torch.get_default_dtype(), device=device)
    cc = as_curvature(c, o)
    return torch.cat([cc.rsqrt().reshape(1), o[1:]])


def lift(z: Tensor, c: CurvatureLike, *, dtype: torch.dtype | None = None) -> Tensor:
    """Lift a space vector onto the hyperboloid: ``(sqrt(1/c + |z|^2), z)``.

    z: ``[..., d]`` -> ``[..., d+1]``.
    """
    ct = _compute_dtype(z)
    zc = z.to(ct)
    cc = as_curvature(c, zc)
    time = (cc.reciprocal() + zc.pow(2).sum(-1, keepdim=True)).sqrt()
    return _out(torch.cat([time, zc], dim=-1), z.dtype, dtype)


def inner(x: Tensor, y: Tensor, *, keepdim: bool = False, dtype: torch.dtype | None = None) -> Tensor:
    """Lorentz inner product ``<x, y>_L = -x0*y0 + xs.ys``.

    x, y: ``[..., d+1]`` (broadcasting) -> ``[...]`` (``[..., 1]`` with ``keepdim``).
    """
    ct = _compute_dtype(x, y)
    xc, yc = x.to(ct), y.to(ct)
    prod = xc * yc
    res = prod[..., 1:].sum(-1, keepdim=keepdim) - prod[..., :1].sum(-1, keepdim=keepdim)
    return _out(res, torch.promote_types(x.dtype, y.dtype), dtype)


def ip_query(q: Tensor) -> Tensor:
    """The query with its time coordinate negated, ``(-q0, qs)``: ``[..., d+1]``.

    A Euclidean dot product ``ip_query(q) . x`` equals ``<q, x>_L``, so exact hyperbolic nearest-neighbour
    search (ordering by ``-d(q, x)``, equivalently by ``<q, x>_L``) is maximum-inner-product search.
    """
    return torch.cat([-q[..., :1], q[..., 1:]], dim=-1)


def pairwise_inner(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """All Lorentz inner products: x ``[n, d+1]``, y ``[m, d+1]`` -> ``[n, m]``."""
    ct = _compute_dtype(x, y)
    res = ip_query(x.to(ct)) @ y.to(ct).transpose(-1, -2)
    return _out(res, torch.promote_types(x.dtype, y.dtype), dtype)


def _radial_sinh_term(nx: Tensor, ny: Tensor, cc: Tensor) -> Tensor:
    """``(4/c) sinh^2(sqrt(c) (r_x - r_y) / 2)`` from the space norms ``|xs|``, ``|ys|``."""
    sc = cc.sqrt()
    dr = torch.asinh(sc * nx) - torch.asinh(sc * ny)  # sqrt(c) * (r_x - r_y), exact to rounding
    return 4.0 / cc * torch.sinh(dr / 2).pow(2)


def _sq_distance_terms(x: Tensor, y: Tensor, cc: Tensor) -> Tensor:
    xs, ys = x[..., 1:], y[..., 1:]
    nx, ny = _safe_norm(xs), _safe_norm(ys)
    tiny = torch.finfo(nx.dtype).tiny
    ux = xs / nx.clamp_min(tiny).unsqueeze(-1)
    uy = ys / ny.clamp_min(tiny).unsqueeze(-1)
    angular = nx * ny * (ux - uy).pow(2).sum(-1)
    return _radial_sinh_term(nx, ny, cc) + angular


def sq_distance(x: Tensor, y: Tensor, c: CurvatureLike, *, dtype: torch.dtype | None = None) -> Tensor:
    """Squared Lorentzian distance ``|x - y|_L^2 = -2/c - 2<x, y>_L`` (>= 0), broadcasting.

    Computed from the radial/angular decomposition in the module docstring (uses the space coordinates
    only). x, y: ``[..., d+1]`` -> ``[...]``.
    """
    ct = _compute_dtype(x, y)
    xc, yc = x.to(ct), y.to(ct)
    cc = as_curvature(c, xc)
    return _out(_sq_distance_terms(xc, yc, cc), torch.promote_types(x.dtype, y.dtype), dtype)


def _distance_from_sq(sq: Tensor, cc: Tensor) -> Tensor:
    # d = (2/sqrt(c)) asinh(sqrt(c)/2 * |x-y|_L). sqrt has an infinite derivative at 0; the double `where`
    # makes d(x, x) exactly 0 with gradient 0 (the distance's subgradient at its minimum). The test is
    # `sq <= tiny` so that a NaN (which fails every comparison) propagates instead of reading as distance 0.
    tiny = torch.finfo(sq.dtype).tiny
    zero = sq <= tiny
    chord = torch.where(zero, torch.zeros_like(sq), torch.where(zero, torch.ones_like(sq), sq).sqrt())
    sc = cc.sqrt()
    return 2.0 / sc * torch.asinh(sc / 2 * chord)


def geodesic_distance(x: Tensor, y: Tensor, c: CurvatureLike, *, dtype: torch.dtype | None = None) -> Tensor:
    """Geodesic distance ``d(x, y) = arcosh(-c<x, y>_L) / sqrt(c)``, broadcasting over leading dims.

    Evaluated as ``(2/sqrt(c)) asinh(sqrt(c)/2 * |x - y|_L)``: exact 0 at ``x == y`` with a finite gradient,
    accurate for nearby points far from the origin. x, y: ``[..., d+1]`` -> ``[...]``.
    """
    ct = _compute_dtype(x, y)
    xc, yc = x.to(ct), y.to(ct)
    cc = as_curvature(c, xc)
    d = _distance_from_sq(_sq_distance_terms(xc, yc, cc), cc)
    return _out(d, torch.promote_types(x.dtype, y.dtype), dtype)


def _unit(xs: Tensor, dtype: torch.dtype) -> Tensor:
    """``xs / |xs|`` in ``dtype``; 0 where ``xs`` is 0 (no direction; its angular term is multiplied by 0)."""
    xs = xs.to(dtype)
    n = _safe_norm(xs, keepdim=True)
    return xs / torch.where(n > 0, n, torch.ones_like(n))


# A bound on |float32 - exact| of the chord |u - v|^2 = |u|^2 + |v|^2 - 2 u.v for unit vectors, in units of
# float32's eps (1.19e-7): measured <= 13 for d <= 1024; tests/geometry/test_lorentz.py checks it.
ANGULAR_FP32_ERR_EPS = 16.0


def pairwise_geodesic_distance(
    x: Tensor,
    y: Tensor,
    c: CurvatureLike,
    *,
    dtype: torch.dtype | None = None,
    angular_dtype: torch.dtype = torch.float64,
) -> Tensor:
    """All geodesic distances: x ``[n, d+1]``, y ``[m, d+1]`` -> ``[n, m]``.

    Uses one matrix product for the angular term (``|u - v|^2 = |u|^2 + |v|^2 - 2 u.v`` for the unit
    directions ``u, v``), so memory is ``O(n m)``, not ``O(n m d)``. That identity cancels: its absolute
    error is about ``k * eps`` of ``angular_dtype`` (``k`` <= :data:`ANGULAR_FP32_ERR_EPS` = 16 for float32),
    multiplied by ``|xs| |ys|`` in the squared distance. The radial term is exact.

    ``angular_dtype`` (float64 by default, which autocast leaves alone) is the dtype of that product. In
    float32 the squared distance carries an absolute error up to ``16 * 1.19e-7 * |xs| |ys|`` (~2e-6), so a
    distance ``d`` keeps a relative error below ``delta`` when ``sqrt(c) |xs|, sqrt(c) |ys| <= R`` with
    ``R ~ sqrt(c) d * sqrt(delta / 1e-6)`` for small ``d`` (``d ~ |x - y|_L`` there): e.g. distances >= 0.1
    are good to 1% for radii ``sqrt(c)|xs| <= 10`` (``x0 ~ 10/sqrt(c)``), and ``d(x, x)``, exactly 0 in
    float64, is at most ``~1.4e-3 * |xs|`` (``sqrt(16 eps)``) in float32. Check :func:`radius` of the
    embeddings before choosing float32; far points (``x0 ~ 3e3``: ``d(x, x)`` near 1.0 in float32) need
    float64.
    """
    if angular_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"angular_dtype must be torch.float32 or torch.float64, got {angular_dtype}")
    ct = _compute_dtype(x, y)
    xc, yc = x.to(ct), y.to(ct)
    cc = as_curvature(c, xc)
    xs, ys = xc[..., 1:], yc[..., 1:]
    nx, ny = _safe_norm(xs), _safe_norm(ys)
    ux, uy = _unit(xs, angular_dtype), _unit(ys, angular_dtype)
    chord_sq = (
        ux.pow(2).sum(-1).unsqueeze(-1) + uy.pow(2).sum(-1).unsqueeze(-2) - 2.0 * (ux @ uy.transpose(-1, -2))
    )
    # A zero space part has no direction: u = 0 gives |u - v|^2 = |v|^2, but the product with |xs| = 0 is 0.
    angular = nx.unsqueeze(-1) * ny.unsqueeze(-2) * chord_sq.clamp_min(0.0).to(ct)
    radial = _radial_sinh_term(nx.unsqueeze(-1), ny.unsqueeze(-2), cc)
    d = _distance_from_sq(radial + angular, cc)
    return _out(d, torch.promote_types(x.dtype, y.dtype), dtype)


def radius(x: Tensor, c: CurvatureLike, *, dtype: torch.dtype | None = None) -> Tensor:
    """Distance to the origin, ``d(o, x) = asinh(sqrt(c) |xs|) / sqrt(c)``: ``[..., d+1]`` -> ``[...]``.

    Equal to ``arcosh(sqrt(c) x0) / sqrt(c)`` on the hyperboloid, without arcosh's loss of accuracy near 1.
    """
    ct = _compute_dtype(x)
    xc = x.to(ct)
    cc = as_curvature(c, xc)
    sc = cc.sqrt()
    return _out(torch.asinh(sc * _safe_norm(xc[..., 1:])) / sc, x.dtype, dtype)


def _max_scaled_space_norm(sc: Tensor, out_dtype: torch.dtype) -> float | Tensor:
    """The largest ``sqrt(c) |xs|`` a produced point may have: ``sinh(MAX_EXPMAP_ARG) = 2^15``, or less where
    the output dtype cannot hold the point (float16, max 65504: x0 = 2^15/sqrt(c) overflows for c < ~0.26;
    keep ``|xs| <= max/2``). A float where the constant applies, else a 0-d tensor."""
    fmax = torch.finfo(out_dtype).max
    if fmax > 2.0**64:  # float32/float64/bf16: the constant (no overflow-prone product either)
        return 2.0**15
    return (sc * (fmax / 2)).clamp_max(2.0**15)


def _ratio_near_zero(t: Tensor, fn, series_coef: float) -> Tensor:
    """``fn(t) / t`` with the series ``1 + series_coef * t^2`` near 0 (both branches finite)."""
    small = t < 1e-4
    t_safe = torch.where(small, torch.ones_like(t), t)
    return torch.where(small, 1.0 + series_coef * t.pow(2), fn(t_safe) / t_safe)


def expmap0(v: Tensor, c: CurvatureLike, *, dtype: torch.dtype | None = None) -> Tensor:
    """Exponential map at the origin for a space (tangent) vector ``v``: ``[..., d]`` -> ``[..., d+1]``.

    ``expmap0(v) = (cosh(sqrt(c)|v|)/sqrt(c), sinh(sqrt(c)|v|) v / (sqrt(c)|v|))``; ``sqrt(c)|v|`` is capped
    at :data:`MAX_EXPMAP_ARG` (see there why), and for a float16 output also where ``|xs|`` would exceed half
    the float16 range (32752; this binds for c < ~1). The time coordinate is recomputed by :func:`lift`.
    """
    ct = _compute_dtype(v)
    vc = v.to(ct)
    cc = as_curvature(c, vc)
    sc = cc.sqrt()
    out_dtype = dtype or v.dtype
    cap = _max_scaled_space_norm(sc, out_dtype)
    cap = MAX_EXPMAP_ARG if isinstance(cap, float) else torch.asinh(cap)
    theta = sc * _safe_norm(vc, keepdim=True)
    capped = theta.clamp_max(cap)
    # sinh(capped) / theta; equals sinh(theta)/theta below the cap.
    scale = _ratio_near_zero(capped, torch.sinh, 1.0 / 6.0) * torch.where(
        theta > cap, capped / theta.clamp_min(cap), torch.ones_like(theta)
    )
    return lift(scale * vc, cc, dtype=out_dtype)


def logmap0(x: Tensor, c: CurvatureLike, *, dtype: torch.dtype | None = None) -> Tensor:
    """Logarithmic map at the origin: ``[..., d+1]`` -> space vector ``[..., d]``.

    ``logmap0(x) = d(o, x) * xs / |xs|`` with ``d(o, x) = asinh(sqrt(c)|xs|)/sqrt(c)``.
    """
    ct = _compute_dtype(x)
    xc = x.to(ct)
    cc = as_curvature(c, xc)
    sc = cc.sqrt()
    xs = xc[..., 1:]
    t = sc * _safe_norm(xs, keepdim=True)
    return _out(_ratio_near_zero(t, torch.asinh, -1.0 / 6.0) * xs, x.dtype, dtype)


def project(v: Tensor, c: CurvatureLike, *, dtype: torch.dtype | None = None) -> Tensor:
    """Project a future-timelike ambient vector onto the hyperboloid: ``v / (sqrt(c) sqrt(-<v, v>_L))``.

    v: ``[..., d+1]`` with ``v0 > |vs|`` -> ``[..., d+1]``. The space part is rescaled and the time part
    recomputed by :func:`lift`. ``-<v, v>_L`` is evaluated as ``(v0 - |vs|)(v0 + |vs|)``. It cancels far from
    the origin: with coordinates rounded to eps, the result's scale carries a relative error ~eps c v0^2
    (float32: ~1e-1 at sqrt(c) v0 ~ 1e3), so accumulate sums of far points in float64 before projecting (as
    the poolers do). ``-<v, v>_L`` is floored where the result would pass the :data:`MAX_EXPMAP_ARG` radius
    (``sqrt(c)|xs| = 2^15``, less for a float16 output): a (numerically) light-like ``v``, or a point rounded
    off the hyperboloid, lands at that radius instead of at inf; no true point below the cap is affected.
    """
    vc, cc, out_dtype = _project_inputs(v, c, dtype)
    return lift(_projected_space(vc, cc, out_dtype), cc, dtype=out_dtype)


def project_space(v: Tensor, c: CurvatureLike, *, dtype: torch.dtype | None = None) -> Tensor:
    """The space coordinates of :func:`project` (``[..., d+1]`` -> ``[..., d]``), without forming the time
    coordinate, for callers that go on to lift a function of them."""
    vc, cc, out_dtype = _project_inputs(v, c, dtype)
    return _projected_space(vc, cc, out_dtype).to(out_dtype)


def _project_inputs(
    v: Tensor, c: CurvatureLike, dtype: torch.dtype | None
) -> tuple[Tensor, Tensor, torch.dtype]:
    vc = v.to(_compute_dtype(v))
    return vc, as_curvature(c, vc), dtype or v.dtype


def _projected_space(vc: Tensor, cc: Tensor, out_dtype: torch.dtype) -> Tensor:
    v0 = vc[..., :1]
    vs = vc[..., 1:]
    nvs = _safe_norm(vs, keepdim=True)
    # |space| = |vs| / sqrt(c m) <= max_scaled / sqrt(c)  <=>  m >= (|vs| / max_scaled)^2.
    floor = (nvs / _max_scaled_space_norm(cc.sqrt(), out_dtype)).pow(2).clamp_min(torch.finfo(vc.dtype).tiny)
    minus_norm_sq = torch.maximum((v0 - nvs) * (v0 + nvs), floor)
    return vs * (cc * minus_norm_sq).rsqrt()


def to_poincare(x: Tensor, c: CurvatureLike, *, dtype: torch.dtype | None = None) -> Tensor:
    """Poincare ball coordinates (ball of radius ``1/sqrt(c)``): ``xs / (1 + sqrt(c) x0)``.

    x: ``[..., d+1]`` -> ``[..., d]``. The time coordinate is recomputed from ``xs``.
    """
    ct = _compute_dtype(x)
    xc = x.to(ct)
    cc = as_curvature(c, xc)
    xs = xc[..., 1:]
    x0 = (cc.reciprocal() + xs.pow(2).sum(-1, keepdim=True)).sqrt()
    return _out(xs / (1.0 + cc.sqrt() * x0), x.dtype, dtype)


def to_klein(x: Tensor, c: CurvatureLike, *, dtype: torch.dtype | None = None) -> Tensor:
    """Beltrami-Klein coordinates (ball of radius ``1/sqrt(c)``): ``xs / (sqrt(c) x0)``.

    x: ``[..., d+1]`` -> ``[..., d]``. Far from the origin ``1 - c|k|^2`` cancels catastrophically; use
    Klein coordinates for display or checks, never inside pooling.
    """
    ct = _compute_dtype(x)
    xc = x.to(ct)
    cc = as_curvature(c, xc)
    xs = xc[..., 1:]
    x0 = (cc.reciprocal() + xs.pow(2).sum(-1, keepdim=True)).sqrt()
    return _out(xs / (cc.sqrt() * x0), x.dtype, dtype)
