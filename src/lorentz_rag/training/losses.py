"""Training objectives (docs/design.md, section 8): masked-LM cross-entropy and contrastive InfoNCE.

Everything here runs in float32 (float64 inputs stay float64) with autocast disabled: hyperbolic distances
and softmax temperatures of 1/50 do not survive bf16. Similarities are "higher = closer":

- ``geodesic``: ``-d(q, x)`` (the paper's best, Table A2);
- ``lorentz_inner``: ``<q, x>_L + 1/c`` (``<= 0``, 0 iff ``q == x``; the shift does not change the softmax);
- ``cosine`` and ``euclidean`` (``-|q - x|``): for the Euclidean twins.

The similarity functions themselves live in :mod:`lorentz_rag.geometry.similarity`.

InfoNCE takes the document *pool* of the batch (positives and hard negatives, in any order) and, for each
query, the explicit position of its positive in that pool. Under ``torch.distributed`` the pools of all
ranks are gathered with gradient and the positions offset by the number of documents on earlier ranks; see
:mod:`lorentz_rag.training.distributed` for the gradient-scale convention (the per-rank loss is a plain mean).
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorentz_rag.geometry import similarity as similarity_fns
from lorentz_rag.nn.curvature import ScalarParameters, scalar_parameter
from lorentz_rag.training.distributed import gather_sizes, gather_with_grad, is_distributed

__all__ = [
    "DISTANCES",
    "InfoNCELoss",
    "LogitScale",
    "info_nce_loss",
    "mlm_loss",
    "similarity_matrix",
]

Distance = Literal["geodesic", "lorentz_inner", "cosine", "euclidean"]
DISTANCES: tuple[str, ...] = similarity_fns.KINDS


def _no_autocast(t: Tensor) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=t.device.type, enabled=False)


def _loss_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def mlm_loss(logits: Tensor, labels: Tensor, *, ignore_index: int = -100) -> Tensor:
    """Masked-LM cross-entropy over the masked positions, in float32.

    logits: ``[..., V]`` at every position with labels ``[...]`` of the same leading shape, or
    ``[n_masked, V]`` computed only at the masked positions (ModernBERT-style heads) with labels ``[B, T]``
    whose non-``ignore_index`` entries, in row-major order, are those ``n_masked`` positions.
    Returns a 0-d tensor; a batch without masked positions gives 0 (with a graph), not NaN.
    """
    with _no_autocast(logits):
        logits = logits.to(_loss_dtype(logits))
        if logits.shape[:-1] == labels.shape:
            flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        else:
            flat_labels = labels[labels != ignore_index]
            if logits.dim() != 2 or logits.shape[0] != flat_labels.numel():
                raise ValueError(
                    f"mlm_loss: logits {tuple(logits.shape)} match neither labels {tuple(labels.shape)} "
                    f"nor the {flat_labels.numel()} masked positions of the labels"
                )
            flat_logits = logits
        if not bool((flat_labels != ignore_index).any()):
            return flat_logits.sum() * 0.0
        return F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index)


def similarity_matrix(q: Tensor, d: Tensor, distance: Distance, c: float | Tensor | None = None) -> Tensor:
    """Pairwise similarities, higher = closer: q ``[n, D]``, d ``[m, D]`` -> ``[n, m]`` (float32 or float64).

    ``geodesic``: ``-d(q, x)``; ``lorentz_inner``: ``<q, x>_L + 1/c``; ``cosine``: ``q.x / (|q||x|)``;
    ``euclidean``: ``-|q - x|``.
    Hyperbolic similarities need the curvature ``c`` (float or 0-d tensor, gradients flow into it).
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {', '.join(DISTANCES)}")
    if q.shape[-1] != d.shape[-1]:
        raise ValueError(f"queries have dimension {q.shape[-1]} but documents {d.shape[-1]}")
    with _no_autocast(q):
        dtype = _loss_dtype(q, d)
        return similarity_fns.pairwise(q.to(dtype), d.to(dtype), distance, c)


def _gather_with_offset(t: Tensor, distributed: bool) -> tuple[Tensor, int]:
    """All ranks' ``t`` (with gradient) and the row where this rank's part starts."""
    if not distributed:
        return t, 0
    rank = torch.distributed.get_rank()
    return gather_with_grad(t), sum(gather_sizes(t.shape[0], device=t.device)[:rank])


def info_nce_loss(
    q: Tensor,
    docs: Tensor,
    positive_index: Tensor,
    *,
    distance: Distance,
    c: float | Tensor | None = None,
    logit_scale: float | Tensor = 50.0,
    symmetric: bool = False,
    gather: bool = True,
) -> Tensor:
    """InfoNCE of queries against a pool of documents, temperature ``1 / logit_scale``.

    q: ``[n, D]`` this rank's queries; docs: ``[m, D]`` this rank's document pool (positives and hard
    negatives, any order); positive_index: ``[n]`` long, the position of each query's positive in ``docs``.

    ``loss_q = mean_i -log softmax_j(s * sim(q_i, x_j))[p_i]`` over the pool of all ranks when ``gather`` and
    a process group is running (positions offset by the documents of earlier ranks). With ``symmetric``,
    each query's positive document ``x_{p_i}`` is also an anchor against the queries of all ranks,
    ``loss_d = mean_i -log softmax_k(s * sim(x_{p_i}, q_k))[i]``, and the loss is ``(loss_q + loss_d) / 2``.
    Returns a 0-d float32 (float64 for float64 inputs) tensor, the mean over this rank's queries.
    """
    if q.dim() != 2 or docs.dim() != 2:
        raise ValueError(f"expected q [n, D] and docs [m, D], got {tuple(q.shape)} and {tuple(docs.shape)}")
    if positive_index.shape != (q.shape[0],):
        raise ValueError(
            f"positive_index must have shape [{q.shape[0]}] (one per query), got {tuple(positive_index.shape)}"
        )
    positive_index = positive_index.to(device=q.device, dtype=torch.long)
    if q.shape[0] and (int(positive_index.min()) < 0 or int(positive_index.max()) >= docs.shape[0]):
        raise ValueError(f"positive_index must lie in [0, {docs.shape[0]}) (the pool size)")
    with _no_autocast(q):
        dtype = _loss_dtype(q, docs)
        q, docs = q.to(dtype), docs.to(dtype)
        scale = logit_scale.to(dtype) if isinstance(logit_scale, Tensor) else float(logit_scale)
        distributed = gather and is_distributed()
        all_docs, doc_offset = _gather_with_offset(docs, distributed)
        logits = scale * similarity_matrix(q, all_docs, distance, c)
        loss = F.cross_entropy(logits, positive_index + doc_offset)
        if not symmetric:
            return loss
        all_q, q_offset = _gather_with_offset(q, distributed)
        anchors = docs[positive_index]
        logits_d = scale * similarity_matrix(anchors, all_q, distance, c)
        targets = torch.arange(q.shape[0], device=q.device) + q_offset
        return (loss + F.cross_entropy(logits_d, targets)) / 2


class LogitScale(ScalarParameters, nn.Module):
    """The inverse temperature ``s = 1/tau`` of InfoNCE, stored as ``log s`` and clamped to ``[min, max]``.

    The parameter is named ``log_logit_scale`` (trainers exclude names containing ``logit_scale`` from weight
    decay). Frozen unless ``trainable``. The clamp is applied in ``forward``, as CLIP does: beyond a bound
    the gradient is zero, so a trainable scale that reaches it stays there. Stored with shape ``[1]``
    (:class:`lorentz_rag.nn.curvature.ScalarParameters`: a 0-d one from an older checkpoint loads too).
    """

    scalar_names = ("log_logit_scale",)

    def __init__(
        self, init: float = 50.0, *, trainable: bool = False, min_scale: float = 1.0, max_scale: float = 100.0
    ) -> None:
        super().__init__()
        if not 0 < min_scale <= init <= max_scale:
            raise ValueError(f"logit_scale must satisfy 0 < {min_scale} <= {init} <= {max_scale}")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.log_logit_scale = scalar_parameter(math.log(init), requires_grad=trainable)  # shape [1]

    def forward(self) -> Tensor:
        """The current scale, a 0-d tensor in ``[min_scale, max_scale]`` (float32, or float64 if the module is)."""
        # Never below float32, even when the module was cast to bf16 with the model.
        log_s = self.log_logit_scale.to(torch.promote_types(self.log_logit_scale.dtype, torch.float32))
        return log_s.reshape(()).clamp(math.log(self.min_scale), math.log(self.max_scale)).exp()

    def extra_repr(self) -> str:
        return f"value={float(self().detach()):.4g}, range=[{self.min_scale:g}, {self.max_scale:g}]"


class InfoNCELoss(nn.Module):
    """:func:`info_nce_loss` with its :class:`LogitScale` as a module (``self.logit_scale``).

    ``forward(q [n, D], docs [m, D], positive_index [n], c=None) -> 0-d loss``. Pass ``c=model.curvature()``
    for hyperbolic distances so a trainable curvature receives the loss's gradient.
    """

    def __init__(
        self,
        distance: Distance,
        *,
        logit_scale: float = 50.0,
        trainable_logit_scale: bool = False,
        symmetric: bool = False,
        gather: bool = True,
        min_logit_scale: float = 1.0,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; expected one of {', '.join(DISTANCES)}")
        self.distance = distance
        self.symmetric = symmetric
        self.gather = gather
        self.logit_scale = LogitScale(
            logit_scale, trainable=trainable_logit_scale, min_scale=min_logit_scale, max_scale=max_logit_scale
        )

    def forward(
        self, q: Tensor, docs: Tensor, positive_index: Tensor, c: float | Tensor | None = None
    ) -> Tensor:
        return info_nce_loss(
            q,
            docs,
            positive_index,
            distance=self.distance,
            c=c,
            logit_scale=self.logit_scale(),
            symmetric=self.symmetric,
            gather=self.gather,
        )

    def extra_repr(self) -> str:
        return f"distance={self.distance}, symmetric={self.symmetric}, gather={self.gather}"
