"""What one training process holds (:class:`Run`), what a finished run returns, and how divergence is caught.

The trainer's ``_setup`` builds the :class:`Run` and its loop advances it;
``training/resume.py`` and ``training/run_output.py`` restore and write it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from lorentz_rag.errors import user_error
from lorentz_rag.training import checkpoint as ckpt
from lorentz_rag.training.config import TrainConfig
from lorentz_rag.training.data_stream import DataStream
from lorentz_rag.training.hierarchy import WordNetHierarchy
from lorentz_rag.training.objective import TrainStep
from lorentz_rag.training.probe import FiniteProbe

__all__ = [
    "Run",
    "StepOutcome",
    "TrainResult",
    "TrainingDivergedError",
    "Window",
    "all_finite",
    "diverged",
    "log_record",
    "main_print",
]


@user_error
class TrainingDivergedError(FloatingPointError):
    """A non-finite loss, gradient norm or parameter: the run stops before the update is kept or saved."""


@dataclass
class TrainResult:
    """What a finished run produced (on every rank; only rank 0 writes files)."""

    output_dir: Path
    final_model_dir: Path
    steps: int
    last_loss: float


@dataclass
class Run:
    """What one process trains with: built by the trainer's ``_setup``, advanced by its ``_optimizer_step``."""

    config: TrainConfig
    rank: int
    world_size: int
    device: torch.device
    model: nn.Module  # what is saved: an EmbeddingModel or an MLM model
    step_module: TrainStep  # the model plus its objective
    runner: nn.Module  # what forward and backward go through: step_module, DDP around it, or the engine
    engine: Any  # the DeepSpeed engine, or None
    data: DataStream
    hierarchy: WordNetHierarchy | None
    optimizer: Any
    scheduler: Any
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    total_steps: int
    probe: FiniteProbe  # fixed texts whose outputs must be finite before anything is saved
    step: int = 0
    tokens_seen: int = 0
    last_loss: float = math.nan  # the last optimizer step's loss (restored by a resume)

    @property
    def args(self) -> Any:
        return self.config.train_args

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def config_yaml(self) -> str:
        return yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def main_print(run: Run) -> Callable[[str], None]:
    """``print`` (flushed) on rank 0, nothing elsewhere: the run's log lines."""
    return (lambda line: print(line, flush=True)) if run.is_main else (lambda line: None)


def all_finite(tensors: Iterator[Tensor]) -> bool:
    """One device sync for the whole model: are all values of all ``tensors`` finite?

    A sum is NaN or infinite when any of its terms is, and costs one read of the tensor (``isfinite().all()``
    also writes a mask as large as the tensor: a few ms per step for a 30k-token embedding on one CPU
    thread). A sum can also overflow with every term finite, so a non-finite sum is confirmed elementwise.
    """
    tensors = [t.detach() for t in tensors]
    if not tensors:
        return True
    if bool(torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for t in tensors])).all()):
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def diverged(
    step: int,
    quantity: str,
    value: float,
    args: Any,
    output_dir: Path,
    *,
    weights_of: int | None = None,
) -> TrainingDivergedError:
    """The error of a run that diverged at ``step``, naming the checkpoint it can resume from, if any.

    ``weights_of``: the step whose saved weights produced the non-finite ``quantity`` (a loss or gradient
    norm is computed from the previous step's weights, before the update). A checkpoint of that step is not
    called good: a resume restores those weights and the same batch, and so meets the same non-finite value
    at any learning rate. Every other checkpoint passed the checks before it was saved
    (``run_output.save_checkpoint``) and a step after it was finite.
    """
    found = ckpt.list_checkpoints(output_dir)
    rejected = [p for p in found if weights_of is not None and _checkpoint_step(p) == weights_of]
    good = [p for p in found if p not in rejected]
    not_good = (
        f"{rejected[0]} is not: its weights give that non-finite value again on resume, at any learning "
        "rate; "
        if rejected
        else ""
    )
    if good and not rejected:
        last = (
            f"the last good checkpoint is {good[-1]} (resume with --train_args.checkpoint={output_dir} and, "
            "e.g., a lower --train_args.learning_rate)"
        )
    elif good:  # `latest` may point at the rejected one: name the good folder itself
        last = (
            f"{not_good}the last good checkpoint is {good[-1]} (resume with --train_args.checkpoint={good[-1]} "
            "and, e.g., a lower --train_args.learning_rate)"
        )
    elif rejected:
        last = (
            f"{not_good}no good checkpoint is left to resume: start again with a lower "
            "--train_args.learning_rate and --train_args.overwrite=true"
        )
    else:
        last = (
            "no checkpoint was written before it: start again with a lower --train_args.learning_rate and "
            "--train_args.overwrite=true"
        )
    return TrainingDivergedError(
        f"training diverged at step {step}: {quantity} is {value} (learning_rate {args.learning_rate:g}, dtype "
        f"{args.dtype}); the update was not saved and no checkpoint or final model was written from it; {last}"
    )


def _checkpoint_step(folder: Path) -> int:
    return int(folder.name.removeprefix(ckpt.CHECKPOINT_PREFIX))


@dataclass
class Window:
    """Running sums between two log lines."""

    loss: float = 0.0
    steps: int = 0
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)


@dataclass
class StepOutcome:
    loss: float
    tokens: int
    lr: float
    grad_norm: Tensor | None
    stats: dict[str, Tensor]


def log_record(run: Run, window: Window, outcome: StepOutcome) -> dict[str, Any]:
    """One log record: the window's mean loss and tokens/s, the step's rate, geometry and precision state."""
    elapsed = time.perf_counter() - window.start
    metrics: dict[str, Any] = {
        "loss": window.loss / window.steps,
        "lr": outcome.lr,
        "tokens_per_s": window.tokens / max(elapsed, 1e-9),
        "epoch": run.data.epoch,
    }
    c = run.step_module.curvature()
    if c is not None:
        metrics["curvature"] = float(c.detach())
    if run.step_module.loss is not None:
        metrics["logit_scale"] = float(run.step_module.loss.logit_scale().detach())
    if outcome.grad_norm is not None:
        metrics["grad_norm"] = float(outcome.grad_norm)
    if run.scaler.is_enabled():
        metrics["grad_scale"] = float(run.scaler.get_scale())
    metrics.update({k: float(v) for k, v in outcome.stats.items()})
    trunk = getattr(run.model, "model", None)
    radius = getattr(trunk, "last_radius_stats", None)
    if radius:
        # Per-layer radius drift of the HyTE-FH trunk (docs/design.md, section 4.3); x0_mean/x0_max stay the
        # pooled embeddings' where a contrastive step produced them, else the trunk's output tokens.
        metrics.update({f"radius/{name}": value for name, value in radius.items()})
        metrics.setdefault("x0_mean", radius.get("final_norm/x0_mean", float("nan")))
        metrics.setdefault("x0_max", radius.get("final_norm/x0_max", float("nan")))
    return metrics
