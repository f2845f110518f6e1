"""Lorentz activation and the gated feed-forward block (docs/design.md, section 4.2)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torch.nn import functional as F

from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry.lorentz import CurvatureLike
from lorentz_rag.nn._precision import autocast_off, point_dtype
from lorentz_rag.nn.linear import LorentzLinear

__all__ = ["ACTIVATIONS", "LorentzActivation", "LorentzGatedFFN", "get_activation"]

# ModernBERT's "gelu" is the exact (erf) GELU.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class LorentzActivation(nn.Module):
    """``lift(act(xs))``: x ``[..., d+1]`` -> ``[..., d+1]``."""

    def __init__(self, activation: str = "gelu"):
        super().__init__()
        self.activation = activation
        self.act = get_activation(activation)

    def forward(self, x: Tensor, c: CurvatureLike) -> Tensor:
        with autocast_off(x):
            xs = x[..., 1:].to(point_dtype(x))
            return lorentz.lift(self.act(xs), c)

    def extra_repr(self) -> str:
        return self.activation


class LorentzGatedFFN(nn.Module):
    """Gated FFN ``HLT_out(lift(act(W1 x) * (W2 x)))`` (ModernBERT's GLU layout: one ``wi`` for both halves).

    x: ``[..., hidden+1]`` -> ``[..., hidden+1]``; the hidden point lives in ``H^{intermediate}_c``.
    """

    def __init__(
        self, hidden_size: int, intermediate_size: int, activation: str = "gelu", bias: bool = False
    ):
        super().__init__()
        self.activation = activation
        self.act = get_activation(activation)
        self.wi = LorentzLinear(hidden_size, 2 * intermediate_size, bias=bias)
        self.wo = LorentzLinear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: Tensor, c: CurvatureLike) -> Tensor:
        gate_in, value = self.wi.space(x).chunk(2, dim=-1)
        h = self.act(gate_in) * value
        with autocast_off(h):
            h = lorentz.lift(h, c, dtype=point_dtype(h))
        return self.wo(h, c)
