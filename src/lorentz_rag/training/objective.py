"""The training objective: the model plus its loss, one call per micro-batch (:class:`TrainStep`), and the
GradCache path of a contrastive micro-batch. The loop that drives them is :mod:`lorentz_rag.training.trainer`."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from lorentz_rag.training import grad_cache
from lorentz_rag.training.hierarchy import HierarchyLoss
from lorentz_rag.training.losses import InfoNCELoss, mlm_loss

__all__ = ["TrainStep", "grad_cache_micro_step"]


class TrainStep(nn.Module):
    """The model plus its objective: ``forward(batch) -> (loss, stats)``, one call per micro-batch.

    MLM batches: ``input_ids``, ``attention_mask``, ``labels`` ``[B, T]``. Contrastive batches: ``query`` and
    ``documents`` (each ``{"input_ids", "attention_mask"}``, ``[n, T]`` and ``[m, T']``) and
    ``positive_index`` ``[n]`` (position of each query's positive among this rank's documents).
    ``stats`` are detached 0-d tensors for logging (``x0_mean``/``x0_max`` of the embeddings' time
    coordinate for hyperbolic models).
    """

    def __init__(
        self,
        model: nn.Module,
        task: str,
        loss: InfoNCELoss | None = None,
        hierarchy_loss: HierarchyLoss | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.loss = loss
        self.hierarchy_loss = hierarchy_loss
        if task == "contrastive" and loss is None:
            raise ValueError("the contrastive task needs an InfoNCELoss")

    def curvature(self) -> Tensor | None:
        inner = getattr(self.model, "model", None)  # MLM wrappers hold the trunk in .model
        source = self.model if hasattr(self.model, "curvature") else inner
        curv = getattr(source, "curvature", None)
        if curv is None:
            return None
        return curv() if callable(curv) else None

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """Pooled embeddings ``[B, D]`` for ``{"input_ids", "attention_mask"}``."""
        return self.model(batch["input_ids"], batch["attention_mask"])

    def contrastive_loss(self, q: Tensor, docs: Tensor, positive_index: Tensor) -> Tensor:
        return self.loss(q, docs, positive_index, c=self.curvature())

    def hierarchy_term(self, tokens: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The hierarchy objective on ``[children; ancestors; negatives]`` glosses, embedded as documents
        (:mod:`lorentz_rag.training.hierarchy`)."""
        emb = self.embed(tokens)
        assert self.hierarchy_loss is not None
        return self.hierarchy_loss(
            emb, self.model.radius(emb), self.model.settings.similarity, self.curvature()
        )

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]] | Tensor:
        if "embed" in batch:  # GradCache's chunked embedding passes, routed through DDP's forward
            return self.embed(batch["embed"])
        if "hierarchy_only" in batch:  # GradCache runs the hierarchy term as a pass of its own
            return self.hierarchy_term(batch["hierarchy_only"])
        if self.task == "mlm":
            out = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            )
            # The model's own loss: HyTE-FH's fused MLR cross-entropy never forms the [N, V] logits.
            loss = out.loss if out.loss is not None else mlm_loss(out.logits, batch["labels"])
            return loss, {}
        q = self.embed(batch["query"])
        docs = self.embed(batch["documents"])
        loss = self.contrastive_loss(q, docs, batch["positive_index"])
        stats = _time_stats(torch.cat([q.detach(), docs.detach()]), self.model)
        if self.hierarchy_loss is not None and "hierarchy" in batch:
            extra, hierarchy_stats = self.hierarchy_term(batch["hierarchy"])
            stats.update(hierarchy_stats)
            stats["loss/contrastive"] = loss.detach()
            loss = loss + extra
        return loss, stats


def _time_stats(embeddings: Tensor, model: nn.Module) -> dict[str, Tensor]:
    if not getattr(model, "is_hyperbolic", False):
        return {}
    x0 = embeddings[:, 0].float()
    return {"x0_mean": x0.mean(), "x0_max": x0.max()}


def grad_cache_micro_step(
    runner: nn.Module, step_module: TrainStep, batch: dict[str, Any], args: Any, scaler: Any, world_size: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """One contrastive micro-batch through GradCache: the full-batch loss, embedded in chunks.

    The gradients equal the plain loss's (tested in tests/training/test_grad_cache.py); the loss is divided
    by the accumulation steps like the plain path. Returns the undivided loss for logging.
    """
    accum = args.gradient_accumulation_steps
    positive_index = batch["positive_index"]
    stats: dict[str, Tensor] = {}
    extra = None
    if "hierarchy" in batch and step_module.hierarchy_loss is not None:
        # The hierarchy term does not depend on the contrastive batch: its own forward and backward, with
        # gradients accumulated locally; GradCache's last (synchronised) backward all-reduces them.
        with runner.no_sync() if world_size > 1 else contextlib.nullcontext():
            extra, stats = runner({"hierarchy_only": batch["hierarchy"]})
            scaler.scale(extra / accum).backward()
    loss = grad_cache.grad_cache_backward(
        lambda chunk: runner({"embed": chunk}),
        [batch["query"], batch["documents"]],
        lambda q, d: step_module.contrastive_loss(q, d, positive_index) / accum,
        chunk_size=args.grad_cache_chunk,
        backward=lambda value: scaler.scale(value).backward(),
        no_sync=runner.no_sync if world_size > 1 else None,
    )
    if extra is not None:
        stats["loss/contrastive"] = (loss * accum).detach()
        return loss * accum + extra.detach(), stats
    return loss * accum, stats
