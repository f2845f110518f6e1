"""Where a run computes: the device, and the wrapper that forward and backward go through (DDP under
``torchrun``, a DeepSpeed engine under ``deepspeed``; one process uses the objective itself)."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from lorentz_rag.training.config import ConfigError
from lorentz_rag.training.ddp_hooks import choose_weights, register_sparse_embedding_hook
from lorentz_rag.training.objective import TrainStep

__all__ = ["ddp_wrapper", "deepspeed_engine", "fill_deepspeed_config", "pick_device"]


def pick_device(name: str, local_rank: int) -> torch.device:
    """``train_args.device`` as a device: ``auto`` is this rank's GPU when CUDA works, else the CPU; ``cuda``
    is this rank's GPU; asking for CUDA without one is a :class:`ConfigError`."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train_args.device={name}, but this machine has no usable CUDA device (torch.cuda.is_available() "
            "is False); use --train_args.device=cpu or auto"
        )
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def fill_deepspeed_config(ds_config: dict[str, Any], train_args: Any, world_size: int) -> dict[str, Any]:
    """Replace DeepSpeed ``"auto"`` values with the run's ``train_args`` (DeepSpeed runs without HF glue).

    Batch sizes, accumulation, clipping and the precision switches follow ``train_args``; an explicit value
    that contradicts them is an error, because DeepSpeed would silently train something else.
    """
    cfg = json.loads(json.dumps(ds_config))
    wanted = {
        "train_micro_batch_size_per_gpu": train_args.batch_size,
        "gradient_accumulation_steps": train_args.gradient_accumulation_steps,
        "train_batch_size": train_args.batch_size * train_args.gradient_accumulation_steps * world_size,
        "gradient_clipping": train_args.max_grad_norm or 0.0,
    }
    for key, value in wanted.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
        elif cfg[key] != value:
            raise ValueError(
                f'deepspeed config {key}={cfg[key]} contradicts train_args (expects {value}); set it to "auto"'
            )
    for key, enabled in (("bf16", train_args.dtype == "bf16"), ("fp16", train_args.dtype == "fp16")):
        section = cfg.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = enabled
        elif bool(section["enabled"]) != enabled:
            raise ValueError(
                f"deepspeed config {key}.enabled={section['enabled']} contradicts train_args.dtype"
            )
    # The client optimizer and scheduler are ours (torch AdamW, LambdaLR); DeepSpeed's sections would replace them.
    for key in ("optimizer", "scheduler"):
        if key in cfg:
            raise ValueError(f"remove '{key}' from the deepspeed config: the trainer passes its own {key}")
    return cfg


def ddp_wrapper(step_module: TrainStep, device: torch.device, args: Any) -> nn.Module:
    """DDP around the objective. Gradients are all-reduced in buckets of ``ddp_bucket_cap_mb`` as the
    backward produces them, straight from the bucket memory (``gradient_as_bucket_view``: no copy of every
    gradient into and out of the buckets). lorentz_rag's models hold no buffers that training changes (no
    running statistics), so DDP skips broadcasting buffers before each forward. With
    ``ddp_sparse_embedding_hook`` (training/ddp_hooks.py states the rule) a communication hook all-reduces
    only the token-embedding rows some rank touched; rank 0 logs which weights."""
    ddp = nn.parallel.DistributedDataParallel(
        step_module,
        device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=args.ddp_bucket_cap_mb,
        gradient_as_bucket_view=True,
        broadcast_buffers=False,
    )
    backend = torch.distributed.get_backend(ddp.process_group)
    weights, line = choose_weights(step_module, args.ddp_sparse_embedding_hook, backend)
    if weights:
        register_sparse_embedding_hook(ddp, weights.values())
    if torch.distributed.get_rank() == 0:
        print(line, flush=True)
    return ddp


def deepspeed_engine(
    step_module: TrainStep,
    optimizer: Any,
    scheduler: Any,
    deepspeed_config: dict,
    args: Any,
    world_size: int,
) -> tuple[Any, Any, Any]:
    """``deepspeed.initialize`` with our optimizer and schedule: ``(engine, optimizer, scheduler)``."""
    import deepspeed

    ds = fill_deepspeed_config(deepspeed_config, args, world_size)
    # Learnt scalars have shape [1] (nn/curvature.py): DeepSpeed's weight broadcast takes them as they are.
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=step_module, optimizer=optimizer, lr_scheduler=scheduler, config=ds
    )
    return engine, optimizer, scheduler
