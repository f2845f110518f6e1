"""The last check before anything is saved: the model's outputs and loss on a few fixed texts must be finite.

A finite training loss at step ``k`` says nothing about the weights that step's update produced: with a
huge learning rate the parameters stay finite (|w| ~ 1e6) while every embedding the saved model would
produce is NaN. So before a checkpoint or ``final/`` is written, the trainer runs the model once, in
evaluation mode and without gradients, on :data:`PROBE_ROWS` texts fixed when the run was set up (the first
rows of this rank's training data; :data:`FALLBACK_TEXTS` for streamed sources, whose rows cannot be read
twice), and requires finite outputs and a finite loss. A checkpoint must also be something a run can
resume from: outputs and loss can be finite while their gradient is not (float32 rounding near the
hyperboloid's edge once the weights have grown), and then the first step after a resume is NaN at any
learning rate. So before a checkpoint the probe also takes the gradient of that loss with respect to the
trained parameters (``gradients=True``, without touching their ``.grad``) and requires it to be finite.

The probe draws no random numbers (evaluation mode: no dropout; MLM labels are the unmasked tokens), so
a run that is checked this way ends with the same weights as before. Under several processes every rank
probes its own texts and the ranks agree on the verdict (one all-reduce), so all stop or none does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lorentz_rag.data.readers import RowDataset
from lorentz_rag.training.distributed import is_distributed
from lorentz_rag.training.losses import info_nce_loss, mlm_loss
from lorentz_rag.training.objective import TrainStep

__all__ = ["FALLBACK_TEXTS", "PROBE_ROWS", "FiniteProbe"]

#: How many fixed texts (MLM) or query-document pairs (contrastive) the probe runs.
PROBE_ROWS = 4

#: Probe texts for sources whose rows cannot be read again (streamed and MDS data).
FALLBACK_TEXTS = (
    "Hyperbolic space has constant negative curvature.",
    "A dog is a domesticated carnivore of the family Canidae.",
    "Python lists are mutable sequences of objects.",
    "The mitochondrion is the powerhouse of the cell.",
)


@dataclass
class FiniteProbe:
    """Fixed tokenized texts of a run and the check that the model's outputs on them are finite.

    ``batch`` is an MLM batch (``input_ids``, ``attention_mask`` ``[B, T]``, ``labels`` the unmasked tokens)
    or a contrastive one (``query`` and ``documents`` ``{"input_ids", "attention_mask"}`` of ``B`` rows each).
    """

    batch: dict[str, Any]
    rows: int
    source: str  # "training texts" or "sentences (...)", for the error message

    @classmethod
    def from_dataset(
        cls, task: str, model: Any, dataset: Any, max_length: int, device: torch.device
    ) -> FiniteProbe:
        """The first :data:`PROBE_ROWS` rows of ``dataset`` (a :class:`RowDataset`), else the fallback texts,
        tokenized onto ``device``."""
        if isinstance(dataset, RowDataset) and len(dataset) > 0:
            rows = [dataset[i] for i in range(min(PROBE_ROWS, len(dataset)))]
            source = "training texts"
        else:
            rows = [{"text": t, "query": t, "document": t} for t in FALLBACK_TEXTS[:PROBE_ROWS]]
            source = "sentences (streamed data cannot be read twice)"
        if task == "mlm":
            enc = model.tokenizer(
                [row["text"] for row in rows],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
            batch = {k: t.to(device) for k, t in batch.items()}
        else:
            batch = {
                name: {k: t.to(device) for k, t in model.tokenize(texts, prompt_type=kind).items()}
                for name, kind, texts in (
                    ("query", "query", [row["query"] for row in rows]),
                    ("documents", "document", [row["document"] for row in rows]),
                )
            }
        return cls(batch=batch, rows=len(rows), source=source)

    def describe(self) -> str:
        return f"{self.rows} fixed {self.source}"

    def check(
        self, step_module: TrainStep, device: torch.device, *, gradients: bool = False
    ) -> tuple[str, float] | None:
        """None when the outputs and loss on the probe texts (and with ``gradients``, the loss's gradient with
        respect to every trained parameter) are finite on every rank; else what was not (``("output", nan)``,
        ``("loss", value)`` or ``("gradient", nan)``). Call it on every rank."""
        was_training = step_module.training
        step_module.eval()
        trained = [p for p in step_module.parameters() if p.requires_grad] if gradients else []
        try:
            with torch.set_grad_enabled(bool(trained)):
                outputs, loss = self._forward(step_module, self.batch)
                outputs_ok = all(bool(torch.isfinite(t).all()) for t in outputs)
                loss_value = float(loss.detach())
                gradient_ok = True
                if trained and outputs_ok and math.isfinite(loss_value) and loss.requires_grad:
                    # autograd.grad leaves every .grad as it is: the run's state does not change.
                    grads = torch.autograd.grad(loss, trained, allow_unused=True)
                    found = [g for g in grads if g is not None]
                    gradient_ok = not found or bool(
                        torch.stack([torch.isfinite(g).all() for g in found]).all()
                    )
        finally:
            step_module.train(was_training)
        verdict = torch.tensor(
            [float(outputs_ok), float(math.isfinite(loss_value)), float(gradient_ok)],
            device=device,
        )
        if is_distributed():
            torch.distributed.all_reduce(verdict, op=torch.distributed.ReduceOp.MIN)
        if not bool(verdict[0]):
            return "output", float("nan")
        if not bool(verdict[1]):
            return "loss", loss_value
        if not bool(verdict[2]):
            return "gradient", float("nan")
        return None

    def _forward(self, step_module: TrainStep, batch: dict[str, Any]) -> tuple[list[Tensor], Tensor]:
        """The model's outputs (logits, or query and document embeddings) and the loss on ``batch``."""
        if step_module.task == "mlm":
            out = step_module.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            )
            return [out.logits], mlm_loss(out.logits, batch["labels"])
        q, docs = step_module.embed(batch["query"]), step_module.embed(batch["documents"])
        objective = step_module.loss
        assert objective is not None
        loss = info_nce_loss(
            q,
            docs,
            torch.arange(q.shape[0], device=q.device),
            distance=objective.distance,
            c=step_module.curvature(),
            logit_scale=objective.logit_scale(),
            symmetric=objective.symmetric,
            gather=False,  # this rank's texts only: the probe must not depend on the other ranks' batches
        )
        return [q, docs], loss
