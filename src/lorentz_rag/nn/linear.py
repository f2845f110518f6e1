"""Lorentz linear layer (the Hypformer hyperbolic linear transformation, HLT)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry.lorentz import CurvatureLike
from lorentz_rag.nn._precision import autocast_off, point_dtype

__all__ = ["LorentzLinear"]


class LorentzLinear(nn.Module):
    """``HLT(x) = lift(W x + b)``: ``W`` reads all ``d_in + 1`` coordinates and writes ``d_out`` space ones.

    x: ``[..., in_features + 1]`` (points of ``H^{in}_c``) -> ``[..., out_features + 1]``. The matrix product
    follows autocast; the lift runs in float32 (float64 for float64 models).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, init_std: float = 0.02):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features + 1))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters(init_std)

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def space(self, x: Tensor) -> Tensor:
        """The space coordinates ``W x + b`` before the lift: ``[..., in+1]`` -> ``[..., out]``."""
        if x.shape[-1] != self.in_features + 1:
            raise ValueError(
                f"LorentzLinear expects points with {self.in_features + 1} coordinates (time first), "
                f"got shape {tuple(x.shape)}"
            )
        # A bf16 model receives float32 points: compute in the weights' dtype (autocast may lower it further).
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)

    def forward(self, x: Tensor, c: CurvatureLike) -> Tensor:
        z = self.space(x)
        with autocast_off(z):
            return lorentz.lift(z, c, dtype=point_dtype(z))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )
