"""Pooling a sequence of hyperboloid points into one point (docs/design.md, section 3).

Every pooler takes token points ``x: [B, T, d+1]`` (time first, curvature ``-c``) and a mask ``[B, T]``
(bool, or non-negative float weights ``w_i``; padding has weight 0) and returns ``[B, d+1]``.

The midpoints are ``P(sum_i a_i x_i)`` for ambient weights ``a_i`` (``P`` = :func:`lorentz.project`):

================================  =============================
pooler                            ambient weight ``a_i``
================================  =============================
``lorentz_centroid``              ``w_i``
``einstein_midpoint``             ``w_i * x_i0``
``outward_einstein_midpoint``     ``w_i * x_i0^(p+1)``  (p > 0)
================================  =============================

In Beltrami-Klein coordinates ``k_i = xs_i / (sqrt(c) x_i0)`` with Lorentz factors
``gamma_i = sqrt(c) x_i0``, ``P(sum_i a_i x_i)`` is the Klein midpoint ``sum_i b_i k_i / sum_i b_i`` with
``b_i = a_i * gamma_i``. We never compute through Klein coordinates (``1 - c|k|^2`` cancels far from the
origin); the ambient form is exact.

Numerics: padded positions are zeroed before anything touches them (they may hold NaN/inf), time
coordinates are recomputed from the space coordinates, weights are formed in log space and normalised
(``softmax``; ``P`` is scale invariant, so large radii cannot overflow ``x0^(p+1)``), and the weighted sum
and projection are accumulated in float64 (``accum_dtype``): in float32, ``-<v, v>_L`` of a sum of points at
``x0 ~ 1e3`` loses all of its digits. The result is returned in the input dtype (float32 for bf16/fp16).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry.lorentz import CurvatureLike

__all__ = [
    "POOLERS",
    "ambient_weighted_sum",
    "check_poolable",
    "cls",
    "einstein_midpoint",
    "lorentz_centroid",
    "mean_tangent",
    "outward_einstein_midpoint",
    "outward_log_weights",
    "pool",
]


def _check(x: Tensor, mask: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"token points must be [B, T, d+1], got shape {tuple(x.shape)}")
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask must be [B, T] = {tuple(x.shape[:2])}, got shape {tuple(mask.shape)}")


def _result_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _prepare(x: Tensor, mask: Tensor, c: CurvatureLike, accum_dtype: torch.dtype):
    """Zero padded tokens; return (space part, recomputed time part, log mask weights, c) in accum dtype."""
    _check(x, mask)
    valid = mask > 0
    xs = x[..., 1:].to(accum_dtype).masked_fill(~valid.unsqueeze(-1), 0.0)
    cc = lorentz.as_curvature(c, xs)
    x0 = (cc.reciprocal() + xs.pow(2).sum(-1)).sqrt()
    w = mask.to(accum_dtype)
    log_w = torch.where(valid, w.clamp_min(torch.finfo(accum_dtype).tiny).log(), -torch.inf)
    if not torch.compiler.is_compiling():  # (a compiled caller checks before its graph: HyteFHTrunk.pooled)
        check_poolable(mask)
    return xs, x0, log_w, cc


def check_poolable(mask: Tensor) -> None:
    """Raise ValueError naming the rows of ``mask`` ``[B, T]`` without any unmasked token: a row of padding
    only has no meaningful pooled point. (Reads the mask on the host: one device sync.)"""
    valid = mask > 0
    if not bool(valid.any(-1).all()):
        empty = (~valid.any(-1)).nonzero().flatten().tolist()
        raise ValueError(f"cannot pool a sequence with no unmasked token (batch rows {empty})")


def ambient_weighted_sum(xs: Tensor, x0: Tensor, log_a: Tensor) -> Tensor:
    """``sum_i softmax(log_a)_i x_i``: the normalised ambient sum, ``[B, d+1]``.

    xs: ``[B, T, d]``, x0: ``[B, T]``, log_a: ``[B, T]`` (``-inf`` for padding).
    """
    a = torch.softmax(log_a, dim=-1)
    v0 = (a * x0).sum(-1, keepdim=True)
    vs = torch.einsum("bt,btd->bd", a, xs)
    return torch.cat([v0, vs], dim=-1)


def outward_log_weights(x0: Tensor, log_w: Tensor, p: float) -> Tensor:
    """Log ambient weights of the OEM: ``log w_i + (p+1) log x_i0`` (``[B, T]``)."""
    return log_w + (p + 1.0) * x0.log()


def _midpoint(x, mask, c, p: float | None, accum_dtype) -> Tensor:
    """``P(sum_i a_i x_i)`` with the OEM weights of exponent ``p`` (``None``: the plain centroid, ``a = w``)."""
    xs, x0, log_w, cc = _prepare(x, mask, c, accum_dtype)
    log_a = log_w if p is None else outward_log_weights(x0, log_w, p)
    v = ambient_weighted_sum(xs, x0, log_a)
    return lorentz.project(v, cc).to(_result_dtype(x))


def cls(x: Tensor, mask: Tensor, c: CurvatureLike) -> Tensor:
    """The first token (its time coordinate recomputed): ``[B, T, d+1]`` -> ``[B, d+1]``."""
    _check(x, mask)
    # Lift straight into the result dtype: a bf16 round trip of x0 would put the point off the hyperboloid.
    return lorentz.lift(x[:, 0, 1:], c, dtype=_result_dtype(x))


def lorentz_centroid(x: Tensor, mask: Tensor, c: CurvatureLike, *, accum_dtype=torch.float64) -> Tensor:
    """Lorentzian centroid ``P(sum_i w_i x_i)`` (the ``mean`` pooler): ``[B, T, d+1]`` -> ``[B, d+1]``."""
    return _midpoint(x, mask, c, None, accum_dtype)


def einstein_midpoint(x: Tensor, mask: Tensor, c: CurvatureLike, *, accum_dtype=torch.float64) -> Tensor:
    """``P(sum_i w_i x_i0 x_i)``: the paper's Einstein midpoint (its OEM with p = 0)."""
    return _midpoint(x, mask, c, 0.0, accum_dtype)


def outward_einstein_midpoint(
    x: Tensor, mask: Tensor, c: CurvatureLike, p: float = 1.0, *, accum_dtype=torch.float64
) -> Tensor:
    """Outward Einstein Midpoint (the paper's section 4.3): ``P(sum_i w_i x_i0^(p+1) x_i)``.

    ``p`` is the paper's exponent (``p = 0`` is the Einstein midpoint; default ``p = 1``). Larger ``p``
    pulls the pooled point towards the tokens far from the origin (the specific ones).
    x: ``[B, T, d+1]``, mask: ``[B, T]`` -> ``[B, d+1]``.
    """
    if not p > 0:
        raise ValueError(f"the outward Einstein midpoint needs p > 0, got p={p} (p=0 is einstein_midpoint)")
    return _midpoint(x, mask, c, p, accum_dtype)


def mean_tangent(x: Tensor, mask: Tensor, c: CurvatureLike, *, accum_dtype=torch.float64) -> Tensor:
    """``expmap0(sum_i w_i logmap0(x_i) / sum_i w_i)``: mean in the tangent space at the origin."""
    xs, x0, log_w, cc = _prepare(x, mask, c, accum_dtype)
    a = torch.softmax(log_w, dim=-1)
    tangent = lorentz.logmap0(torch.cat([x0.unsqueeze(-1), xs], dim=-1), cc)
    mean = torch.einsum("bt,btd->bd", a, tangent)
    return lorentz.expmap0(mean, cc).to(_result_dtype(x))


POOLERS = {
    "cls": cls,
    "lorentz_centroid": lorentz_centroid,
    "einstein_midpoint": einstein_midpoint,
    "outward_einstein_midpoint": outward_einstein_midpoint,
    "mean_tangent": mean_tangent,
}


def pool(name: str, x: Tensor, mask: Tensor, c: CurvatureLike, *, p: float = 1.0) -> Tensor:
    """Dispatch by pooler name (``mean`` is an alias of ``lorentz_centroid``)."""
    if name == "mean":
        name = "lorentz_centroid"
    if name not in POOLERS:
        raise ValueError(f"unknown hyperbolic pooling {name!r}; choose one of {sorted(POOLERS)} or 'mean'")
    if name == "outward_einstein_midpoint":
        return outward_einstein_midpoint(x, mask, c, p)
    return POOLERS[name](x, mask, c)
