"""Lorentz multinomial logistic regression (Bdeir et al., ICLR 2024), the HyTE-FH MLM head.

Class ``k`` is the hyperplane with normal ``w_k = (sinh(sqrt(c) a_k) |z_k|, cosh(sqrt(c) a_k) z_k)`` (the
hyperplane through the origin with normal ``(0, z_k)``, moved by ``a_k`` along ``z_k``). With
``alpha = <w, x>_L = cosh(sqrt(c) a) <z, xs> - sinh(sqrt(c) a) |z| x0`` and
``beta = |w|_L = sqrt(|cosh(sqrt(c) a) z|^2 - (sinh(sqrt(c) a) |z|)^2)``,

    logit = sign(alpha) * beta * |asinh(sqrt(c) alpha / beta)| / sqrt(c),

i.e. ``|z|`` times the signed distance from ``x`` to the hyperplane. The formula as usually quoted writes
``alpha`` without the ``|z|`` on the time term; that is only consistent with ``beta`` for ``|z| = 1`` (the
paper's code has it; docs/design.md, section 4.6 (The MLR head and its correction)).
Since ``cosh^2 - sinh^2 = 1``, ``beta = |z|`` exactly; we use that (the difference form loses all digits for
large ``|a|``) and the odd symmetry of ``asinh``: ``logit = |z| asinh(sqrt(c) alpha / |z|) / sqrt(c)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from lorentz_rag.geometry.lorentz import CurvatureLike, as_curvature
from lorentz_rag.nn._compile import CompileSwitch, MaybeCompiled
from lorentz_rag.nn._precision import autocast_off, point_dtype
from lorentz_rag.nn.fused_mlr_ce import FusedKernels, lorentz_mlr_cross_entropy

__all__ = ["LorentzMLR"]


class LorentzMLR(nn.Module):
    """Lorentz MLR over ``num_classes`` classes: parameters ``z: [V, d]``, ``a: [V]``.

    ``forward(x [N, d+1], c) -> logits [N, V]`` in float32 (float64 for float64 inputs); callers pass only
    the positions they need (the masked ones for MLM). With ``compile_switch`` on, the head's ``[N, V]``
    passes run as compiled kernels, one in place in the forward and one in the backward
    (:class:`_MLRFromProducts`); otherwise through the hand-fused :class:`_MLRLogits`.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        init_std: float = 0.02,
        compile_switch: CompileSwitch | None = None,
    ):
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.z = nn.Parameter(torch.empty(num_classes, in_features))
        self.a = nn.Parameter(torch.empty(num_classes))
        self._kernels = _PointwiseKernels(compile_switch or CompileSwitch(False))
        self._fused_kernels = FusedKernels(self._kernels.switch)
        self.reset_parameters(init_std)

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.normal_(self.z, mean=0.0, std=std)
        nn.init.zeros_(self.a)

    def forward(self, x: Tensor, c: CurvatureLike) -> Tensor:
        self._check_points(x)
        with autocast_off(x):
            # Far-out points make alpha a difference of large terms: keep the whole head in float32.
            dtype = point_dtype(x)
            xs = x[..., 1:].to(dtype)
            cc = as_curvature(c, xs)
            sc = cc.sqrt()
            if self._kernels.switch.enabled:
                return self._compiled_logits(xs, cc, sc)
            return _MLRLogits.apply(*self._points_normals_k(xs, cc, sc))

    def loss(self, x: Tensor, c: CurvatureLike, labels: Tensor, block_size: int | None = None) -> Tensor:
        """Mean cross-entropy of :meth:`forward`'s logits against ``labels [N]`` (``-100`` rows ignored),
        computed blockwise over the classes without forming the ``[N, V]`` logits
        (:func:`~lorentz_rag.nn.fused_mlr_ce.lorentz_mlr_cross_entropy`); float32 (float64 for float64
        points), autocast off. Gradients reach ``x``, ``z``, ``a`` and ``c``. With the compile switch on, each
        block's elementwise passes run as compiled kernels (:class:`~lorentz_rag.nn.fused_mlr_ce.FusedKernels`)."""
        self._check_points(x)
        with autocast_off(x):
            xs = x[..., 1:].to(point_dtype(x))
            cc = as_curvature(c, xs)
            points, normals, k = self._points_normals_k(xs, cc, cc.sqrt())
            return lorentz_mlr_cross_entropy(
                points, normals, k, labels, block_size=block_size, kernels=self._fused_kernels
            )

    def _check_points(self, x: Tensor) -> None:
        if x.shape[-1] != self.in_features + 1:
            raise ValueError(
                f"LorentzMLR expects points with {self.in_features + 1} coordinates, got {tuple(x.shape)}"
            )

    def _points_normals_k(self, xs: Tensor, cc: Tensor, sc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(points [N, d+1], normals [V, d+1], k [V])`` with logits ``k asinh(points @ normals.T)``.

        Everything per class is ``[V]``-sized: ``sqrt(c) alpha / beta = (x0, xs) . w_k`` with
        ``w_k = sqrt(c) (-sinh(sqrt(c) a_k), cosh(sqrt(c) a_k) z_k / |z_k|)``, so the ``[N, V]`` part is one
        matrix product and an asinh; ``k = |z| / sqrt(c)``."""
        dtype = xs.dtype
        x0 = (cc.reciprocal() + xs.pow(2).sum(-1, keepdim=True)).sqrt()  # never trust a stored x0
        z = self.z.to(dtype)
        z_norm = z.pow(2).sum(-1).clamp_min(torch.finfo(dtype).tiny).sqrt()  # [V]
        a = self.a.to(dtype) * sc
        normals = torch.cat(
            [-torch.sinh(a).unsqueeze(-1), torch.cosh(a).unsqueeze(-1) * z / z_norm.unsqueeze(-1)], -1
        )
        return torch.cat([x0, xs], dim=-1), sc * normals, z_norm / sc

    def _compiled_logits(self, xs: Tensor, cc: Tensor, sc: Tensor) -> Tensor:
        """The compiled path: ``u = A (xs @ z.T) - x0 B`` with per-class ``A = sqrt(c) cosh(sqrt(c) a) / |z|``,
        ``B = sqrt(c) sinh(sqrt(c) a)`` (the same ``u`` as the normals form), so no ``[V, d]`` tensor is
        formed besides ``z`` and the gradients of the matrix products (:class:`_MLRFromProducts`)."""
        x0 = (cc.reciprocal() + xs.pow(2).sum(-1)).sqrt()  # [N]; never trust a stored x0
        z = self.z.to(xs.dtype)
        z_norm = z.pow(2).sum(-1).clamp_min(torch.finfo(xs.dtype).tiny).sqrt()  # [V]
        sa = self.a.to(xs.dtype) * sc
        scale, shift = sc * torch.cosh(sa) / z_norm, sc * torch.sinh(sa)
        return _MLRFromProducts.apply(xs, z, scale, x0, shift, z_norm / sc, self._kernels)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


def _mlr_asinh_(m: Tensor, scale: Tensor, x0: Tensor, shift: Tensor, k: Tensor) -> Tensor:
    """``m <- k asinh(scale * m - x0 shift)`` in place (``m: [N, V]``; ``scale, shift, k: [V]``; ``x0: [N]``),
    for ``torch.compile``: one fused pass and no fresh ``[N, V]`` buffer (on CPU a fresh one costs more than
    the pass). The arithmetic of :class:`_MLRLogits` (``asinh(|u|) = log1p(|u| + |u| q)``,
    ``q = |u| / (1 + sqrt(1 + u^2))``); ``u^2`` is not formed where it would overflow (there
    ``sqrt(1 + u^2) = |u|`` to rounding)."""
    u = m * scale - x0.unsqueeze(-1) * shift
    au = u.abs()
    big = au > 2.0**60
    h = torch.where(big, au, (1.0 + torch.where(big, 0.0, au).pow(2)).sqrt())
    s = torch.log1p(au + au * (au / (1.0 + h)))
    return m.copy_(torch.where(u < 0, -s, s) * k)


def _mlr_asinh_backward(grad: Tensor, out: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """For ``out = k asinh(u)``: ``(grad k / sqrt(1 + u^2), sum_n grad * out / k)``, the gradients with
    respect to ``u`` and ``k``. ``sqrt(1 + u^2) = cosh(out / k)`` (``k = |z| / sqrt(c) > 0``), so nothing
    but ``out`` is kept from the forward; its relative error is ~``|asinh(u)|`` ulps."""
    return grad * (k / torch.cosh(out / k)), (grad * out).sum(0) / k


class _PointwiseKernels:
    """The compiled ``[N, V]`` passes of :class:`_MLRFromProducts` (``forward_`` and ``backward``), each
    falling back to its plain version through the shared :class:`CompileSwitch`."""

    def __init__(self, switch: CompileSwitch) -> None:
        self.switch = switch
        self.forward_ = MaybeCompiled(_mlr_asinh_, switch, {0: (0,), 2: (0,)})
        self.backward = MaybeCompiled(_mlr_asinh_backward, switch, {0: (0,), 1: (0,)})


class _MLRFromProducts(torch.autograd.Function):
    """``k asinh(scale * (xs @ z.T) - x0 shift)`` -> ``[N, V]``: xs ``[N, d]``, z ``[V, d]``, scale, shift,
    k ``[V]``, x0 ``[N]``; the ``[N, V]`` passes are ``kernels`` (compiled). The backward forms
    ``grad_u = grad k / cosh(out / k)`` and then only matrix products and ``[V]``/``[N]`` reductions:
    ``G = grad_u.T @ xs`` gives ``grad_z = scale G`` and ``grad_scale = rowdot(z, G)``."""

    @staticmethod
    def forward(ctx, xs, z, scale, x0, shift, k, kernels: _PointwiseKernels) -> Tensor:
        out = kernels.forward_(xs @ z.T, scale, x0, shift, k)
        ctx.kernels = kernels
        ctx.save_for_backward(xs, z, scale, x0, shift, k, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        xs, z, scale, x0, shift, k, out = ctx.saved_tensors
        grad_u, grad_k = ctx.kernels.backward(grad.contiguous(), out, k)
        g = grad_u.T @ xs  # [V, d]
        grad_xs = grad_u @ (scale.unsqueeze(-1) * z)
        grad_z = scale.unsqueeze(-1) * g
        grad_scale = (z * g).sum(-1)
        return grad_xs, grad_z, grad_scale, -(grad_u @ shift), -(x0 @ grad_u), grad_k, None


class _MLRLogits(torch.autograd.Function):
    """``k * asinh(points @ normals.T)``: points ``[N, D]``, normals ``[V, D]``, k ``[V]`` -> ``[N, V]``.

    Over the full vocabulary the head is memory bound, and on CPU a fresh ``[N, V]`` buffer costs ~10x an
    in-place pass over one (page faults). Autograd's version makes a dozen fresh buffers (``torch.asinh``,
    not vectorised on CPU, and a backward ``grad / sqrt(1 + u^2)`` built from temporaries); this one makes
    two in the forward (the product ``u``, which becomes the output, and ``H``) and one in the backward.

    With ``h = sqrt(1 + u^2)``, ``q = |u| / (1 + h)`` and ``u^2 / (1 + h) = |u| q``:
    ``asinh(|u|) = log1p(|u| + |u| q) = log1p((1 + h)(q + q^2))``, accurate to a few ulps with no
    cancellation near 0 (finite for ``|u|`` below half the dtype's max). ``H = sign(u) (1 + h)`` carries
    the sign, so ``q`` and the log1p argument can be formed in ``u``'s own buffer; ``H`` is kept for the
    backward, ``d asinh(u) / du = 1 / h = 1 / (|H| - 1)``.
    """

    @staticmethod
    def forward(ctx, points: Tensor, normals: Tensor, k: Tensor) -> Tensor:
        u = points @ normals.T
        signed_1p_h = torch.hypot(u, torch.ones((), dtype=u.dtype, device=u.device))
        signed_1p_h.add_(1.0).copysign_(u)  # sign(u) (1 + h)
        q = u.div_(signed_1p_h)  # |u| / (1 + h), in u's buffer
        arg = torch.addcmul(q, q, q, out=q).mul_(signed_1p_h)  # sign(u) (|u| + |u| q)
        out = arg.abs_().log1p_().copysign_(signed_1p_h).mul_(k)
        ctx.save_for_backward(points, normals, k, signed_1p_h, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        points, normals, k, signed_1p_h, out = ctx.saved_tensors
        buf = torch.empty_like(out)  # the one fresh [N, V] buffer of the backward
        grad_k = None
        if ctx.needs_input_grad[2]:
            # d out / d k = asinh(u) = out / k (k = |z| / sqrt(c) >= ~1e-19 / sqrt(c) > 0 by the clamp).
            grad_k = torch.mul(grad, out, out=buf).sum(0).div_(k)
        grad_points = grad_normals = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # d out / d u = k / h; k is applied to the [V, D] side of the products, not to [N, V].
            h = torch.abs(signed_1p_h, out=buf).sub_(1.0)
            grad_u_over_k = torch.div(grad, h, out=buf)
            if ctx.needs_input_grad[0]:
                grad_points = grad_u_over_k @ (k.unsqueeze(-1) * normals)
            if ctx.needs_input_grad[1]:
                grad_normals = k.unsqueeze(-1) * (grad_u_over_k.T @ points)
        return grad_points, grad_normals, grad_k
