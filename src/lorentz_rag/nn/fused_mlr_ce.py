"""Lorentz MLR + cross-entropy without the ``[N, V]`` logits.

The MLR head's logits (:mod:`lorentz_rag.nn.mlr`) are ``l[n, v] = k_v asinh(points_n . normals_v)`` with
``points = (x0, xs)`` ``[N, D]``, the per-class ``normals`` ``[V, D]`` and ``k = |z| / sqrt(c)`` ``[V]``. The
masked-LM loss ``mean_n (logsumexp_v l[n, v] - l[n, y_n])`` needs only the log-sum-exp per row and the
target's logit, so :class:`_MLRLogSumExp` computes the log-sum-exp block by block over the vocabulary (a
block's logits, its log-sum-exp, merged into the running one) and keeps only ``lse [N]``; its backward
recomputes each block's logits and turns them into the block's gradients at once (``softmax * grad``),
three matrix products per block. Memory is ``O(N * block)`` besides the inputs, never ``O(N * V)``. The
target logits are ``N`` row dot products, left to autograd, and so is everything outside the ``[N, V]``
part (the normals from ``z``, ``a`` and the curvature, ``x0`` from ``xs``): their gradients reach the
head's parameters and the curvature through the ordinary graph.

Every block's ``[N, b]`` pass works in two preallocated buffers (forward) or three (backward), reused from
block to block: on CPU a fresh buffer costs page faults comparable to the pass itself. With a model's
compile switch on (:class:`FusedKernels`), each block's elementwise chain and reductions run as one
inductor kernel instead (forward: the block's log-sum-exp from the product; backward: the product's
gradient written over it in place, and the block's ``grad_k``), the matrix products as before.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lorentz_rag.nn._compile import CompileSwitch, MaybeCompiled

__all__ = ["BLOCK_ELEMENTS", "FusedKernels", "block_size_for", "lorentz_mlr_cross_entropy"]

BLOCK_ELEMENTS = {"cpu": 1 << 19, "other": 1 << 25}
"""Elements of one block's ``[N, b]`` buffer when no block size is given. CPU: 2 MiB in float32, small
enough for the passes over a block to stay in cache, large enough for its matrix products to run at full
speed. Accelerators: 128 MiB, so that a block is a few large kernels (each block costs ~20 launches)."""


def block_size_for(rows: int, num_classes: int, device: torch.device | str = "cpu") -> int:
    """Classes per block so that a ``[rows, b]`` block holds about :data:`BLOCK_ELEMENTS` values for
    ``device`` (at least 128, at most ``num_classes``)."""
    elements = BLOCK_ELEMENTS["cpu" if torch.device(device).type == "cpu" else "other"]
    return max(1, min(num_classes, max(128, elements // max(rows, 1))))


def lorentz_mlr_cross_entropy(
    points: Tensor,
    normals: Tensor,
    k: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    block_size: int | None = None,
    kernels: FusedKernels | None = None,
) -> Tensor:
    """Mean cross-entropy of the logits ``k_v asinh(points_n . normals_v)`` against ``labels``.

    points ``[N, D]``, normals ``[V, D]``, k ``[V]`` (> 0), labels ``[N]`` (class ids, or ``ignore_index``
    for rows that do not count) -> 0-d loss, the mean over the counted rows (0, with a graph, when none
    counts, as :func:`lorentz_rag.training.losses.mlm_loss`). Computes in float32 for float32/bf16/fp16
    inputs and in float64 for float64 ones; the logits are formed ``block_size`` classes at a time
    (default :func:`block_size_for`) and never stored; ``kernels``: the compiled per-block passes, used while
    their switch is on.
    """
    if points.dim() != 2 or normals.dim() != 2 or points.shape[1] != normals.shape[1]:
        raise ValueError(
            f"lorentz_mlr_cross_entropy: points {tuple(points.shape)} and normals {tuple(normals.shape)} "
            "must be [N, D] and [V, D]"
        )
    num_classes = normals.shape[0]
    if k.shape != (num_classes,) or labels.shape != (points.shape[0],):
        raise ValueError(
            f"lorentz_mlr_cross_entropy: k {tuple(k.shape)} must be [V={num_classes}] and labels "
            f"{tuple(labels.shape)} must be [N={points.shape[0]}]"
        )
    if block_size is not None and int(block_size) < 1:
        raise ValueError(f"lorentz_mlr_cross_entropy: block_size={block_size} must be >= 1")
    counted = labels != ignore_index
    if bool(((labels < 0) | (labels >= num_classes)).logical_and(counted).any()):
        bad = labels[counted & ((labels < 0) | (labels >= num_classes))][0].item()
        raise ValueError(
            f"lorentz_mlr_cross_entropy: label {bad} is outside [0, {num_classes}) and is not "
            f"ignore_index={ignore_index}"
        )
    dtype = torch.float64 if points.dtype == torch.float64 else torch.float32
    points, normals, k = points.to(dtype), normals.to(dtype), k.to(dtype)
    points, targets = points[counted], labels[counted]
    if block_size is None:
        block_size = block_size_for(points.shape[0], num_classes, points.device)
    lse = _MLRLogSumExp.apply(points, normals, k, int(block_size), kernels)  # [n]
    target_logits = k[targets] * torch.asinh((points * normals[targets]).sum(-1))  # [n]
    # The mean over counted rows; an empty batch gives 0 / 1 with the graph kept.
    return (lse - target_logits).sum() / counted.sum().clamp_min(1).to(dtype)


def _block(buffer: Tensor, rows: int, cols: int) -> Tensor:
    """A contiguous ``[rows, cols]`` view at the start of a flat buffer."""
    return buffer[: rows * cols].view(rows, cols)


def _asinh_(u: Tensor, signed_1p_h: Tensor) -> Tensor:
    """``u <- asinh(u)`` in place; ``signed_1p_h <- sign(u) (1 + sqrt(1 + u^2))`` (the arithmetic of
    :class:`lorentz_rag.nn.mlr._MLRLogits`: ``asinh(|u|) = log1p(|u| + |u| q)``, ``q = |u| / (1 + h)``, no
    cancellation near 0, no overflow of ``u^2``). ``1 / sqrt(1 + u^2) = 1 / (|signed_1p_h| - 1)``."""
    torch.hypot(u, torch.ones((), dtype=u.dtype, device=u.device), out=signed_1p_h)
    signed_1p_h.add_(1.0).copysign_(u)
    q = u.div_(signed_1p_h)  # |u| / (1 + h)
    torch.addcmul(q, q, q, out=q).mul_(signed_1p_h)  # sign(u) (|u| + |u| q)
    return q.abs_().log1p_().copysign_(signed_1p_h)


def _asinh_and_h(u: Tensor) -> tuple[Tensor, Tensor]:
    """``(asinh(u), sqrt(1 + u^2))`` out of place, for the compiled kernels: the arithmetic of
    :func:`_asinh_`, with ``sqrt(1 + u^2) = |u|`` where ``u^2`` would overflow (``|u| > 2^60``)."""
    au = u.abs()
    big = au > 2.0**60
    h = torch.where(big, au, (1.0 + torch.where(big, 0.0, au).pow(2)).sqrt())
    s = torch.log1p(au + au * (au / (1.0 + h)))
    return torch.where(u < 0, -s, s), h


def _block_lse(u: Tensor, k: Tensor) -> Tensor:
    """``logsumexp_v k_v asinh(u[:, v])``: u ``[N, b]``, k ``[b]`` -> ``[N]`` (compiled: no ``[N, b]`` output)."""
    logits = _asinh_and_h(u)[0] * k
    peak = logits.amax(1, keepdim=True)
    return (logits - peak).exp().sum(1).log() + peak.squeeze(1)


def _block_backward_(u: Tensor, k: Tensor, lse: Tensor, grad_lse: Tensor) -> tuple[Tensor, Tensor]:
    """For the block's products ``u [N, b]``: ``u <- G / sqrt(1 + u^2)`` in place and ``grad_k [b]``, where
    ``G = grad_lse exp(k asinh(u) - lse)`` is the gradient w.r.t. the logits (``lse, grad_lse: [N]``)."""
    asinh_u, h = _asinh_and_h(u)
    g = torch.exp(asinh_u * k - lse.unsqueeze(1)) * grad_lse.unsqueeze(1)
    grad_k = (g * asinh_u).sum(0)
    return u.copy_(g / h), grad_k


class FusedKernels:
    """The per-block passes of the fused loss compiled with inductor while ``switch`` is on (a model's
    :class:`~lorentz_rag.nn._compile.CompileSwitch`); batch rows and block width are dynamic."""

    def __init__(self, switch: CompileSwitch) -> None:
        self.switch = switch
        self.lse = MaybeCompiled(_block_lse, switch, {0: (0, 1), 1: (0,)})
        self.backward_ = MaybeCompiled(_block_backward_, switch, {0: (0, 1), 1: (0,), 2: (0,), 3: (0,)})


class _MLRLogSumExp(torch.autograd.Function):
    """``lse_n = logsumexp_v k_v asinh(points_n . normals_v)``: points ``[N, D]``, normals ``[V, D]``,
    k ``[V]``, blocks of ``block`` classes -> ``[N]``. Saves the inputs and ``lse`` only.

    Backward, per block: ``p = exp(l - lse)``, ``G = grad_lse * p`` (the gradient w.r.t. the logits),
    ``grad_k = sum_n G asinh(u)``, ``G_u = G k / sqrt(1 + u^2)``, ``grad_points += G_u @ normals_b``,
    ``grad_normals_b = G_u.T @ points``.
    """

    @staticmethod
    def forward(ctx, points: Tensor, normals: Tensor, k: Tensor, block: int, kernels) -> Tensor:
        n, num_classes = points.shape[0], normals.shape[0]
        width = min(block, num_classes)
        flat_u = points.new_empty(n * width)
        flat_h = points.new_empty(n * width)
        lse = points.new_full((n,), float("-inf"))
        for start in range(0, num_classes, width):
            stop = min(start + width, num_classes)
            u = _block(flat_u, n, stop - start)
            torch.mm(points, normals[start:stop].T, out=u)
            if kernels is not None and kernels.switch.enabled:
                lse = torch.logaddexp(lse, kernels.lse(u, k[start:stop]))
                continue
            logits = _asinh_(u, _block(flat_h, n, stop - start)).mul_(k[start:stop])
            peak = logits.amax(1, keepdim=True)  # finite: |logit| <= k log(2 |u| + 1)
            block_lse = logits.sub_(peak).exp_().sum(1).log_().add_(peak.squeeze(1))
            lse = torch.logaddexp(lse, block_lse)
        ctx.block, ctx.kernels = width, kernels
        ctx.save_for_backward(points, normals, k, lse)
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lse: Tensor):
        points, normals, k, lse = ctx.saved_tensors
        need_points, need_normals, need_k = ctx.needs_input_grad[:3]
        n, num_classes, width = points.shape[0], normals.shape[0], ctx.block
        grad_points = torch.zeros_like(points) if need_points else None
        grad_normals = torch.empty_like(normals) if need_normals else None
        grad_k = torch.empty_like(k) if need_k else None
        flat = [points.new_empty(n * width) for _ in range(3)]
        grad_lse = grad_lse.to(points.dtype).contiguous()
        compiled = ctx.kernels is not None and ctx.kernels.switch.enabled
        for start in range(0, num_classes, width):
            stop = min(start + width, num_classes)
            u, h, g = (_block(buf, n, stop - start) for buf in flat)
            kb, nb = k[start:stop], normals[start:stop]
            torch.mm(points, nb.T, out=u)
            if compiled:
                g_u_over_k, block_grad_k = ctx.kernels.backward_(u, kb, lse, grad_lse)
                if need_k:
                    grad_k[start:stop] = block_grad_k
            else:
                g_u_over_k = _eager_block_backward_(u, h, g, kb, lse, grad_lse, grad_k, start, stop)
            if need_points or need_normals:
                # d l / d u = k / sqrt(1 + u^2); k is applied on the [b, D] side of the products.
                if need_points:
                    grad_points.addmm_(g_u_over_k, kb.unsqueeze(1) * nb)
                if need_normals:
                    torch.mm(g_u_over_k.T, points, out=grad_normals[start:stop]).mul_(kb.unsqueeze(1))
        return grad_points, grad_normals, grad_k, None, None


def _eager_block_backward_(u, h, g, kb, lse, grad_lse, grad_k, start, stop) -> Tensor:
    """:func:`_block_backward_` in the three reused buffers (``u`` holds the products); writes the block's
    ``grad_k`` into ``grad_k[start:stop]`` (when given) and returns ``G / sqrt(1 + u^2)`` (in ``g``)."""
    asinh_u = _asinh_(u, h)
    # g = grad_lse * softmax: the gradient with respect to this block's logits.
    torch.mul(asinh_u, kb, out=g).sub_(lse.unsqueeze(1)).exp_().mul_(grad_lse.unsqueeze(1))
    if grad_k is not None:
        torch.sum(torch.mul(g, asinh_u, out=u), 0, out=grad_k[start:stop])
    return g.div_(h.abs_().sub_(1.0))
