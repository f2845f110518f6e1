"""Lorentz multinomial logistic regression (Bdeir et al., ICLR 2024), the HyTE-FH MLM head.

Class ``k`` is the hyperplane with normal ``w_k = (sinh(sqrt(c) a_k) |z_k|, cosh(sqrt(c) a_k) z_k)`` (the
hyperplane through the origin with normal ``(0, z_k)``, moved by ``a_k`` along ``z_k``). With
``alpha = <w, x>_L = cosh(sqrt(c) a) <z, xs> - sinh(sqrt(c) a) |z| x0`` and
``beta = |w|_L = sqrt(|cosh(sqrt(c) a) z|^2 - (sinh(sqrt(c) a) |z|)^2)``,

    logit = sign(alpha) * beta * |asinh(sqrt(c) alpha / beta)| / sqrt(c),

i.e. ``|z|`` times the signed distance from ``x`` to the hyperplane. DESIGN.md writes ``alpha`` without the
``|z|`` on the time term; that is only consistent with ``beta`` for ``|z| = 1`` (the paper's code has it).
Since ``cosh^2 - sinh^2 = 1``, ``beta = |z|`` exactly; we use that (the difference form loses all digits for
large ``|a|``) and the odd symmetry of ``asinh``: ``logit = |z| asinh(sqrt(c) alpha / |z|) / sqrt(c)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hyprag.geometry.lorentz import Curvature, _curvature
from hyprag.nn._precision import autocast_off, point_dtype

__all__ = ["LorentzMLR"]


class LorentzMLR(nn.Module):
    """Lorentz MLR over ``num_classes`` classes: parameters ``z: [V, d]``, ``a: [V]``.

    ``forward(x [N, d+1], c) -> logits [N, V]`` in float32 (float64 for float64 inputs); callers pass only
    the positions they need (the masked ones for MLM).
    """

    def __init__(self, in_features: int, num_classes: int, init_std: float = 0.02):
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.z = nn.Parameter(torch.empty(num_classes, in_features))
        self.a = nn.Parameter(torch.empty(num_classes))
        self.reset_parameters(init_std)

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.normal_(self.z, mean=0.0, std=std)
        nn.init.zeros_(self.a)

    def forward(self, x: Tensor, c: Curvature) -> Tensor:
        if x.shape[-1] != self.in_features + 1:
            raise ValueError(
                f"LorentzMLR expects points with {self.in_features + 1} coordinates, got {tuple(x.shape)}"
            )
        with autocast_off(x):
            # Far-out points make alpha a difference of large terms: keep the whole head in float32.
            dtype = point_dtype(x)
            xs = x[..., 1:].to(dtype)
            cc = _curvature(c, xs)
            sc = cc.sqrt()
            x0 = (cc.reciprocal() + xs.pow(2).sum(-1, keepdim=True)).sqrt()  # never trust a stored x0
            z = self.z.to(dtype)
            z_norm = z.pow(2).sum(-1).clamp_min(torch.finfo(dtype).tiny).sqrt()  # [V]
            a = self.a.to(dtype) * sc
            alpha_over_beta = torch.cosh(a) * (xs @ (z / z_norm.unsqueeze(-1)).T) - torch.sinh(a) * x0
            return z_norm * torch.asinh(sc * alpha_over_beta) / sc

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"
