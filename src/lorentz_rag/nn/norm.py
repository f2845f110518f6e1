"""Lorentz normalisation layers: ``lift(Norm(xs))`` (docs/design.md, section 4.2)."""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry.lorentz import CurvatureLike
from lorentz_rag.nn._precision import autocast_off, point_dtype

__all__ = ["LorentzLayerNorm", "LorentzRMSNorm", "build_lorentz_norm"]


class _LorentzSpaceNorm(nn.Module, abc.ABC):
    """Normalise the space coordinates in float32, then recompute the time coordinate.

    x: ``[..., dim+1]`` -> ``[..., dim+1]``. The stored time coordinate is ignored.
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        if bias:
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_parameter("bias", None)

    @abc.abstractmethod
    def _normalize(self, xs: Tensor) -> Tensor:
        """The Euclidean normalisation of the space part ``xs: [..., dim]`` (float32)."""

    def forward(self, x: Tensor, c: CurvatureLike) -> Tensor:
        if x.shape[-1] != self.dim + 1:
            raise ValueError(
                f"{type(self).__name__} expects points with {self.dim + 1} coordinates, got {tuple(x.shape)}"
            )
        with autocast_off(x):
            xs = x[..., 1:].to(point_dtype(x))
            return lorentz.lift(self._normalize(xs), c)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, bias={self.bias is not None}"


class LorentzLayerNorm(_LorentzSpaceNorm):
    """``lift(LayerNorm(xs))``."""

    def _normalize(self, xs: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(xs.dtype)
        return F.layer_norm(xs, (self.dim,), self.weight.to(xs.dtype), bias, self.eps)


class LorentzRMSNorm(_LorentzSpaceNorm):
    """``lift(RMSNorm(xs))`` (plus an optional bias)."""

    def _normalize(self, xs: Tensor) -> Tensor:
        y = F.rms_norm(xs, (self.dim,), self.weight.to(xs.dtype), self.eps)
        return y if self.bias is None else y + self.bias.to(xs.dtype)


def build_lorentz_norm(norm_type: str, dim: int, eps: float = 1e-5, bias: bool = False) -> _LorentzSpaceNorm:
    """``"layernorm"`` -> :class:`LorentzLayerNorm`, ``"rmsnorm"`` -> :class:`LorentzRMSNorm`."""
    norms = {"layernorm": LorentzLayerNorm, "rmsnorm": LorentzRMSNorm}
    if norm_type not in norms:
        raise ValueError(f"norm_type must be one of {sorted(norms)}, got {norm_type!r}")
    return norms[norm_type](dim, eps=eps, bias=bias)
