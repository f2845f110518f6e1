"""Similarity functions of every embedding geometry, in one place: higher = closer.

- ``geodesic``: ``-d(q, x)`` on the hyperboloid (:func:`lorentz_rag.geometry.lorentz.geodesic_distance`);
- ``lorentz_inner``: ``<q, x>_L + 1/c`` (0 for identical points; the same ranking as ``geodesic``);
- ``cosine``: ``q.x / (|q| |x|)`` (the norm plays no part);
- ``euclidean``: ``-|q - x|`` (the norm matters: the Euclidean counterpart of ``geodesic``, where a
  radius can carry information, e.g. hierarchy depth).

:func:`pairwise` scores all pairs ``[n, D] x [m, D] -> [n, m]``; :func:`rowwise` scores ``a[i]`` with
``b[i]``. Both compute in the wider of the inputs' dtype and float32 (pass float64 to score in float64);
hyperbolic kinds need the curvature ``c`` (a float or a 0-d tensor; gradients flow into it). NaN inputs give
NaN scores: nothing here maps a NaN to a finite number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lorentz_rag.geometry import lorentz

__all__ = [
    "EUCLIDEAN_KINDS",
    "HYPERBOLIC_KINDS",
    "KINDS",
    "check_kind",
    "distance_rowwise",
    "euclidean_distance",
    "pairwise",
    "pairwise_euclidean_distance",
    "rowwise",
]

HYPERBOLIC_KINDS = ("geodesic", "lorentz_inner")
EUCLIDEAN_KINDS = ("cosine", "euclidean")
KINDS = (*HYPERBOLIC_KINDS, *EUCLIDEAN_KINDS)


def check_kind(kind: str, c: float | Tensor | None = None) -> None:
    """Raise a ``ValueError`` for an unknown ``kind`` or a hyperbolic ``kind`` without a curvature."""
    if kind not in KINDS:
        raise ValueError(f"unknown similarity {kind!r}; choose one of {list(KINDS)}")
    if kind in HYPERBOLIC_KINDS and c is None:
        raise ValueError(f"similarity {kind!r} is hyperbolic and needs the curvature c, got None")


def _float(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _sqrt_zero_safe(sq: Tensor) -> Tensor:
    # sqrt has an infinite derivative at 0: 0 where sq == 0 exactly (gradient 0 there), NaN stays NaN.
    zero = sq <= 0
    return torch.where(zero, torch.zeros_like(sq), torch.where(zero, torch.ones_like(sq), sq).sqrt())


def euclidean_distance(a: Tensor, b: Tensor) -> Tensor:
    """``|a - b|`` over the last dim, broadcasting: exact 0 with gradient 0 at ``a == b``."""
    return _sqrt_zero_safe((a - b).pow(2).sum(-1))


def pairwise_euclidean_distance(a: Tensor, b: Tensor) -> Tensor:
    """All distances ``|a_i - b_j|``: a ``[n, D]``, b ``[m, D]`` -> ``[n, m]``.

    ``|a|^2 + |b|^2 - 2 a.b`` cancels for nearby points (absolute error ~ eps * |a| |b|); it runs in the
    inputs' dtype, so score evaluation in float64. Clamped at 0 before the square root.
    """
    sq = a.pow(2).sum(-1).unsqueeze(-1) + b.pow(2).sum(-1).unsqueeze(-2) - 2.0 * (a @ b.transpose(-1, -2))
    nan = torch.isnan(sq)
    return _sqrt_zero_safe(torch.where(nan, sq, sq.clamp_min(0.0)))


def _common(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    a, b = _float(a), _float(b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def _c_like(c: float | Tensor, like: Tensor) -> Tensor:
    if isinstance(c, Tensor):
        return c.to(like.dtype).to(like.device)
    return torch.tensor(float(c), dtype=like.dtype, device=like.device)


def pairwise(a: Tensor, b: Tensor, kind: str, c: float | Tensor | None = None) -> Tensor:
    """All similarities ``[n, m]`` of ``a: [n, D]`` and ``b: [m, D]`` (see the module docstring)."""
    check_kind(kind, c)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"embeddings of dimension {a.shape[-1]} and {b.shape[-1]} cannot be compared")
    a, b = _common(a, b)
    if kind == "cosine":
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)
    if kind == "euclidean":
        return -pairwise_euclidean_distance(a, b)
    cc = _c_like(c, a)  # type: ignore[arg-type]
    if kind == "geodesic":
        return -lorentz.pairwise_geodesic_distance(a, b, cc)
    return lorentz.pairwise_inner(a, b) + cc.reciprocal()


def rowwise(a: Tensor, b: Tensor, kind: str, c: float | Tensor | None = None) -> Tensor:
    """Row-by-row similarity of ``a[i]`` and ``b[i]``: ``[n, D] x [n, D] -> [n]``."""
    check_kind(kind, c)
    a, b = _common(a, b)
    if kind == "cosine":
        return F.cosine_similarity(a, b, dim=-1)
    if kind == "euclidean":
        return -euclidean_distance(a, b)
    cc = _c_like(c, a)  # type: ignore[arg-type]
    if kind == "geodesic":
        return -lorentz.geodesic_distance(a, b, cc)
    return lorentz.inner(a, b) + cc.reciprocal()


def distance_rowwise(a: Tensor, b: Tensor, kind: str, c: float | Tensor | None = None) -> Tensor:
    """A distance (>= 0, 0 for identical points) consistent with ``kind``'s ranking, row by row.

    ``geodesic`` and ``lorentz_inner``: the geodesic distance (the two rank alike); ``euclidean``:
    ``|a - b|``; ``cosine``: ``1 - cos``. Used by margin losses (the hierarchy objective).
    """
    check_kind(kind, c)
    if kind == "cosine":
        return 1.0 - rowwise(a, b, "cosine")
    if kind == "euclidean":
        return -rowwise(a, b, "euclidean")
    return -rowwise(a, b, "geodesic", c)
