"""Lorentz residual connection (the paper's LResNet), without the reference code's rescaling."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry.lorentz import CurvatureLike
from lorentz_rag.nn._precision import autocast_off, point_dtype

__all__ = ["LorentzResidual"]


class LorentzResidual(nn.Module):
    """``P(w1 x + w2 f(x))`` with learnable ``w1, w2 > 0`` stored as logs (``log_weights = [log w1, log w2]``).

    ``P`` is scale invariant, so only ``w2 / w1`` matters; both are kept as in the paper. The reference
    code multiplies the result by ``4 sqrt(d)``, which drives ``x0`` to 1e2-1e3 and breaks float32/bf16;
    we do not. x, fx: ``[..., d+1]`` -> ``[..., d+1]``.
    """

    def __init__(self, w1: float = 1.0, w2: float = 1.0):
        super().__init__()
        if not (w1 > 0 and w2 > 0):
            raise ValueError(f"LorentzResidual weights must be > 0, got w1={w1}, w2={w2}")
        self.log_weights = nn.Parameter(torch.tensor([math.log(w1), math.log(w2)], dtype=torch.float32))

    @property
    def weights(self) -> Tensor:
        """``[w1, w2]``: ``[2]``."""
        return self.log_weights.exp()

    def forward(self, x: Tensor, fx: Tensor, c: CurvatureLike) -> Tensor:
        if x.shape != fx.shape:
            raise ValueError(f"residual branch shape {tuple(fx.shape)} differs from input {tuple(x.shape)}")
        with autocast_off(x):
            dtype = torch.promote_types(point_dtype(x), point_dtype(fx))
            w = self.log_weights.to(dtype).exp()
            return lorentz.project(w[0] * x.to(dtype) + w[1] * fx.to(dtype), c)
