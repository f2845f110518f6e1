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
from torch.autograd.function import once_differentiable

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
            # Everything per class is [V]-sized: sqrt(c) alpha / beta = (x0, xs) . w_k with
            # w_k = sqrt(c) (-sinh(sqrt(c) a_k), cosh(sqrt(c) a_k) z_k / |z_k|), so the [N, V] part is one
            # matrix product and the fused asinh of _ScaledAsinh.
            normals = torch.cat(
                [-torch.sinh(a).unsqueeze(-1), torch.cosh(a).unsqueeze(-1) * z / z_norm.unsqueeze(-1)], -1
            )
            points = torch.cat([x0, xs], dim=-1)  # [N, d+1]
            return _ScaledAsinh.apply(points @ (sc * normals).T, z_norm / sc)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


class _ScaledAsinh(torch.autograd.Function):
    """``k * asinh(u)``: u ``[N, V]``, k ``[V]`` -> ``[N, V]``, with every ``[N, V]`` step in place.

    Over the full vocabulary the head is memory bound: autograd's version (``torch.asinh``, which is not
    vectorised on CPU, and its backward ``grad / sqrt(1 + u^2)`` built from separate temporaries) makes a
    dozen passes over fresh ``[N, V]`` buffers (on CPU a fresh buffer costs ~10x an in-place pass over one).
    Here the forward uses ``asinh(|u|) = log1p(|u| + |u| t)`` with ``t = |u| / (1 + hypot(1, |u|))``
    (accurate to a few ulps, no cancellation near 0; finite for ``|u|`` below half the dtype's max) in two
    buffers besides ``u``, and the backward needs one buffer besides the incoming gradient.
    """

    @staticmethod
    def forward(ctx, u: Tensor, k: Tensor) -> Tensor:
        mag = u.abs()
        t = torch.hypot(mag, torch.ones((), dtype=u.dtype, device=u.device))
        t.add_(1.0)
        torch.div(mag, t, out=t)
        out = t.mul_(mag).add_(mag).log1p_().copysign_(u).mul_(k)
        del mag
        ctx.save_for_backward(u, k, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        u, k, out = ctx.saved_tensors
        buf = torch.empty_like(u)  # the one fresh [N, V] buffer of the backward
        grad_k = grad_u = None
        if ctx.needs_input_grad[1]:
            # d out / d k = asinh(u) = out / k (k = |z| / sqrt(c) >= ~1e-19 / sqrt(c) > 0 by the clamp).
            grad_k = torch.mul(grad, out, out=buf).sum(0).div_(k)
        if ctx.needs_input_grad[0]:
            # d out / d u = k / sqrt(1 + u^2); u^2 may overflow to inf, where rsqrt gives the right 0.
            one = torch.ones((), dtype=u.dtype, device=u.device)
            grad_u = torch.addcmul(one, u, u, out=buf).rsqrt_().mul_(grad).mul_(k)
        return grad_u, grad_k
