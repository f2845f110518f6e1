"""AdamW parameter groups and learning-rate schedules.

Weight decay pulls weights towards zero. That is right for matrices and wrong for: norm gains and biases
(1-d tensors), the curvature ``log c`` (decay would drag ``c`` towards 1 for no reason) and the contrastive
``log logit_scale`` (it would drag the temperature towards 1). Those get ``weight_decay=0``; the rule is
:func:`lorentz_rag.models.base.no_decay`, the same one embedding models' ``param_groups`` use.
Embedding models provide ``param_groups(lr, weight_decay)`` themselves (HyTE-H: a smaller learning rate
for its pretrained base, ``model_args.base_lr_multiplier``); they are used as given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lorentz_rag.models.base import no_decay

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "parameter_groups"]


def parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], *, learning_rate: float, weight_decay: float
) -> list[dict]:
    """Two AdamW groups, with and without weight decay (see :func:`no_decay`); frozen parameters left out."""
    decay, plain = [], []
    for name, param in named_parameters:
        if param.requires_grad:
            (plain if no_decay(name, param) else decay).append(param)
    groups = [
        {"name": "decay", "params": decay, "lr": learning_rate, "weight_decay": weight_decay},
        {"name": "no_decay", "params": plain, "lr": learning_rate, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    *,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    extra_modules: Mapping[str, nn.Module] | None = None,
    kernel: str = "foreach",
) -> torch.optim.AdamW:
    """torch AdamW over the model's groups, run by ``kernel``: ``foreach`` (multi-tensor ops, the same
    numbers as ``for_loop``, which updates one parameter at a time) or ``fused`` (one kernel per parameter;
    equal to the others only to float rounding).

    The model's own ``param_groups(lr, weight_decay)`` is used when it has one (embedding models: HyTE-H's
    base gets ``lr * base_lr_multiplier``); otherwise (MLM models) :func:`parameter_groups`.
    ``extra_modules`` (e.g. ``{"loss": InfoNCELoss}`` with its logit scale) join without weight decay.
    """
    if hasattr(model, "param_groups"):
        groups = list(model.param_groups(learning_rate, weight_decay))
    else:
        groups = parameter_groups(
            model.named_parameters(), learning_rate=learning_rate, weight_decay=weight_decay
        )
    for prefix, module in (extra_modules or {}).items():
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append(
                {"name": f"{prefix}/no_decay", "params": params, "lr": learning_rate, "weight_decay": 0.0}
            )
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters: is everything frozen?")
    if kernel not in ("foreach", "for_loop", "fused"):
        raise ValueError(f"AdamW kernel must be foreach, for_loop or fused, got {kernel!r}")
    implementation = {"fused": True} if kernel == "fused" else {"foreach": kernel == "foreach"}
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, **implementation)


def lr_factor(
    step: int, *, warmup_steps: int, total_steps: int, schedule_type: str, min_ratio: float = 0.0
) -> float:
    """Multiplier of the peak learning rate before optimizer step ``step`` (0-based).

    Linear warmup from ``1/(warmup+1)`` to 1 over ``warmup_steps``, then ``constant`` (1), ``linear``
    (to ``min_ratio`` at ``total_steps``) or ``cosine`` (half a cosine down to ``min_ratio``).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule_type == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule_type == "linear":
        shape = 1.0 - progress
    elif schedule_type == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"schedule_type must be cosine, linear or constant, got {schedule_type!r}")
    return min_ratio + (1.0 - min_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    schedule_type: str,
    min_ratio: float = 0.0,
) -> LambdaLR:
    """A LambdaLR applying :func:`lr_factor` to every group's own peak (so multipliers are kept)."""

    def factor(step: int) -> float:
        return lr_factor(
            step,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            schedule_type=schedule_type,
            min_ratio=min_ratio,
        )

    return LambdaLR(optimizer, factor)
