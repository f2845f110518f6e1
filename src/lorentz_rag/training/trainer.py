"""The one training loop: masked-LM or contrastive, one process, DDP (torchrun) or DeepSpeed.

Read it top to bottom: :func:`train` claims the output folder and calls :func:`_train`, which is the whole
story in four calls:

1. :func:`_setup`: processes and device (``init_distributed``: gloo on CPU, NCCL on GPU), seeds; the model
   (``build_mlm_model`` for task ``mlm``, ``build_model`` for ``contrastive``; ``model_args.init_from`` loads an
   MLM output's trunk explicitly, and a mismatch raises) and its objective as a module (:class:`TrainStep`:
   one ``forward(batch) -> loss`` so DDP and DeepSpeed wrap a single call; geometry and loss in float32, only
   the encoder's matrix products in bf16/fp16); the data (rows -> this rank's share in a seeded, resumable
   order -> MLM masking or query-document pools); AdamW (no decay on norms, biases, ``log c``, logit
   scale), warmup + schedule, GradScaler for fp16; the backend (one process, DDP, or a DeepSpeed engine);
2. :func:`_resume`: model, optimizer, scheduler, scaler, RNG per rank and data position from
   ``train_args.checkpoint``;
3. :func:`_loop`: :func:`_optimizer_step` (gradient accumulation, clipping, divergence checks) until
   ``total_steps``, logging every ``log_every`` steps (:func:`_metrics`), atomic checkpoints every
   ``save_every`` steps (:func:`_save_checkpoint`);
4. :func:`_finish`: the last checkpoint and the model written with ``save_pretrained`` to
   ``output_dir/final.tmp``, renamed to ``output_dir/final`` once complete.

Nothing non-finite is ever published: every step checks its loss, gradient norm and parameters, and before
a checkpoint or the final model is written the model's outputs on a few fixed texts of the run must be
finite (:class:`~lorentz_rag.training.probe.FiniteProbe`).

On CPU an interrupted-and-resumed run ends with the same weights as an uninterrupted one: every random
draw after step ``k`` depends only on state the checkpoint restores (RNGs, sampler position, optimizer).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.profiler import record_function

from lorentz_rag.errors import on_interrupt, read_json_file, run_entry_point, user_error
from lorentz_rag.folder_lock import RUN_LOCK_NAME, exclusive_lock
from lorentz_rag.models.factory import build_mlm_model, build_model, save_mlm_model
from lorentz_rag.models.hf_base import cached_base_states
from lorentz_rag.models.io import WeightsMismatchError, check_and_load_state_dict
from lorentz_rag.training import checkpoint as ckpt
from lorentz_rag.training.compile_policy import AutoCompile
from lorentz_rag.training.config import (
    ConfigError,
    TrainConfig,
    check_local_paths,
    parse_command_line,
    write_config,
)
from lorentz_rag.training.data_stream import DataStream
from lorentz_rag.training.ddp_hooks import choose_weights, register_sparse_embedding_hook
from lorentz_rag.training.distributed import barrier, command_process_group, init_distributed
from lorentz_rag.training.hierarchy import (
    HierarchyLoss,
    WordNetHierarchy,
    hierarchy_triplets,
    resolve_hierarchy_path,
)
from lorentz_rag.training.logging import MetricsLogger, read_metrics
from lorentz_rag.training.losses import InfoNCELoss
from lorentz_rag.training.objective import TrainStep, grad_cache_micro_step
from lorentz_rag.training.optim import build_optimizer, build_scheduler
from lorentz_rag.training.probe import FiniteProbe
from lorentz_rag.training.taxonomy_recipe import prepare_taxonomy_run

__all__ = [
    "TrainResult",
    "TrainStep",
    "TrainingDivergedError",
    "build_training_model",
    "fill_deepspeed_config",
    "main",
    "train",
]

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


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


# --- helpers ----------------------------------------------------------------------------------------


def _pick_device(name: str, local_rank: int) -> torch.device:
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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _count_tokens(batch: dict[str, Any]) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return sum(int(batch[k]["attention_mask"].sum()) for k in ("query", "documents") if k in batch)


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


def _all_finite(tensors: Iterator[Tensor]) -> bool:
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


def _diverged(step: int, quantity: str, value: float, args: Any, output_dir: Path) -> TrainingDivergedError:
    found = ckpt.list_checkpoints(output_dir)
    last = (
        f"the last good checkpoint is {found[-1]} (resume with --train_args.checkpoint={output_dir} and, "
        "e.g., a lower --train_args.learning_rate)"
        if found
        else "no checkpoint was written before it"
    )
    return TrainingDivergedError(
        f"training diverged at step {step}: {quantity} is {value} (learning_rate {args.learning_rate:g}, dtype "
        f"{args.dtype}); the update was not saved and no checkpoint or final model was written from it; {last}"
    )


#: Keys a resumed run may change freely: where and how often it writes, not what it computes.
_RESUME_BOOKKEEPING = {
    ("train_args", key)
    for key in (
        "checkpoint",
        "output_dir",
        "overwrite",
        "save_every",
        "keep_last",
        "log_every",
        "wandb_project",
        "wandb_run_name",
        "device",
        "num_workers",
        "optimizer_kernel",
        "num_threads",
        "ddp_bucket_cap_mb",
        "ddp_sparse_embedding_hook",
    )
} | {("model_args", "compile")}  # compiled and eager steps agree to float32 rounding (compile_policy.py)
#: Keys a resumed run applies explicitly (the learning-rate schedule from the resumed step on).
_RESUME_APPLIED = {
    ("train_args", key)
    for key in ("learning_rate", "warmup_steps", "schedule_type", "min_lr_ratio", "max_steps", "num_epochs")
}


def config_differences(saved_yaml: str, config: TrainConfig) -> dict[tuple[str, str], tuple[Any, Any]]:
    """``{(section, key): (checkpoint value, current value)}`` for every key that differs, except bookkeeping
    keys (:data:`_RESUME_BOOKKEEPING`) and keys the checkpoint's config does not have (newer fields)."""
    saved = yaml.safe_load(saved_yaml) or {}
    differences = {}
    for section, body in config.model_dump(mode="json").items():
        old = saved.get(section)
        if not isinstance(old, dict) or not isinstance(body, dict):
            continue
        for key, value in body.items():
            if (section, key) not in _RESUME_BOOKKEEPING and key in old and old[key] != value:
                differences[(section, key)] = (old[key], value)
    return differences


def _describe_differences(differences: dict[tuple[str, str], tuple[Any, Any]]) -> str:
    return "\n  ".join(
        f"{section}.{key}: {old!r} in the checkpoint, {new!r} now"
        for (section, key), (old, new) in differences.items()
    )


def _apply_schedule(scheduler: Any, optimizer: Any, peak_lrs: list[float]) -> None:
    """After a resume: the current config's peak learning rates and schedule from the checkpoint's step on.

    ``load_state_dict`` restored the checkpoint's peaks (``base_lrs``/``initial_lr``); the schedule's shape is
    the current config's already (the lambda is built from it), so only the peaks and this step's rates are set.
    """
    scheduler.base_lrs = list(peak_lrs)
    for group, peak, factor in zip(optimizer.param_groups, peak_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = peak
        group["lr"] = peak * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _claim_output_folder(output_dir: Path, args: Any) -> None:
    """Refuse a folder that holds files unless the run resumes or ``overwrite`` is set; with ``overwrite``,
    remove the previous run's files (config, metrics, checkpoints, final model, wandb)."""
    entries = sorted(p.name for p in output_dir.iterdir() if p.name != RUN_LOCK_NAME)
    if not entries or args.checkpoint is not None:
        return
    if not args.overwrite:
        shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
        if not ckpt.list_checkpoints(output_dir):  # nothing to resume: say so, not "resume it"
            raise ConfigError(
                f"train_args.output_dir={output_dir} is not empty ({shown}) and holds no complete checkpoint "
                "(a run stopped before its first save), so it cannot be resumed either; pass "
                "--train_args.overwrite=true to replace it, or choose another output_dir"
            )
        raise ConfigError(
            f"train_args.output_dir={output_dir} is not empty ({shown}); a new run would destroy it. Resume it "
            f"with --train_args.checkpoint={output_dir}, choose another output_dir, or pass "
            "--train_args.overwrite=true to replace it"
        )
    run_files = {ckpt.CONFIG_FILE, "metrics.jsonl", ckpt.LATEST_FILE, "wandb", "resumes.jsonl"}
    run_files |= {"final", "final.tmp", "final.old.tmp"}
    for name in entries:
        if name in run_files or name.startswith(ckpt.CHECKPOINT_PREFIX) or name == ckpt.LATEST_FILE + ".tmp":
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    print(f"overwrite: removed the previous run's files from {output_dir}", flush=True)


def build_training_model(config: TrainConfig) -> nn.Module:
    """The model a run starts from: ``build_mlm_model`` for MLM, ``build_model`` for contrastive training.

    ``model_args.init_from`` is honoured by the factory: an MLM output's trunk weights are loaded explicitly
    and any missing, unexpected or mis-shaped weight raises (never a silent fresh start).
    """
    if config.train_args.task == "mlm":
        return build_mlm_model(config.model_args)
    return build_model(config.model_args)


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one process trains with: built by :func:`_setup`, advanced by :func:`_optimizer_step`."""

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


def train(
    config: TrainConfig,
    *,
    deepspeed_config: str | os.PathLike[str] | dict | None = None,
    after_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Run the training described by ``config``; returns where the final model is. See the module docstring.

    Rank 0 holds an exclusive lock on ``output_dir`` for the run's life (a second run there fails at once,
    naming the holder's pid), and a new run refuses a non-empty ``output_dir`` unless ``train_args.overwrite``
    is set or it resumes (``train_args.checkpoint``). ``after_step(step)`` is called after every optimizer
    step and the checkpoint due at it (tests use it to interrupt a run like a pre-empted job).

    A DeepSpeed JSON file is read before anything else (a malformed one names file:line and touches no
    folder). Ctrl-C raises :class:`lorentz_rag.errors.Interrupted` saying which checkpoint was kept and how to
    resume; the lock is released either way.
    """
    if deepspeed_config is not None and config.train_args.grad_cache_chunk is not None:
        # The engine owns backward (engine.backward(loss)); GradCache's two-pass backward cannot run in it.
        raise ValueError(
            "train_args.grad_cache_chunk is not supported under DeepSpeed; use torchrun (DDP) for GradCache "
            "or pass --train_args.grad_cache_chunk=null"
        )
    if deepspeed_config is not None and not isinstance(deepspeed_config, dict):
        deepspeed_config = read_json_file(deepspeed_config, "--deepspeed_config")
    check_local_paths(config)
    output_dir = Path(config.train_args.output_dir)
    with contextlib.ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) == 0:
            stack.enter_context(exclusive_lock(output_dir / RUN_LOCK_NAME, f"output folder {output_dir}"))
            _claim_output_folder(output_dir, config.train_args)
        if config.train_args.cache_base_states:
            # Frozen base states per text for the whole run: the same numbers, fewer forwards (hf_base.py).
            stack.enter_context(cached_base_states())
        # taxonomy_args: the mixture and edges of the taxonomy's train split (unchanged without a path).
        config = prepare_taxonomy_run(config)
        with on_interrupt(lambda: _what_was_kept(output_dir)):
            return _train(config, deepspeed_config, after_step)


def _what_was_kept(output_dir: Path) -> str:
    """The line printed after Ctrl-C: the last complete checkpoint and how to resume, or that none exists."""
    found = ckpt.list_checkpoints(output_dir)
    if not found:
        return (
            f"training stopped before its first checkpoint: {output_dir} holds nothing to resume; start again "
            "with --train_args.overwrite=true"
        )
    step = found[-1].name.removeprefix(ckpt.CHECKPOINT_PREFIX)
    return (
        f"training stopped; kept the last complete checkpoint {found[-1]} (step {step}); resume with "
        f"--train_args.checkpoint={output_dir}"
    )


def _train(
    config: TrainConfig,
    deepspeed_config: dict | None,
    after_step: Callable[[int], None] | None,
) -> TrainResult:
    run = _setup(config, deepspeed_config)
    if run.args.checkpoint is not None:
        _resume(run)
    if run.is_main:
        write_config(config, run.output_dir / "config.yaml")
    logger = MetricsLogger(
        run.output_dir,
        total_steps=run.total_steps,
        start_step=run.step,
        enabled=run.is_main,
        wandb_project=run.args.wandb_project,
        wandb_run_name=run.args.wandb_run_name,
        config=config.model_dump(mode="json"),
    )
    _loop(run, logger, after_step)
    final_dir = _finish(run)
    logger.close()
    return TrainResult(
        output_dir=run.output_dir, final_model_dir=final_dir, steps=run.step, last_loss=run.last_loss
    )


# --- 1-4. setup: processes, model and objective, data, optimizer, backend -----------------------------


def _setup(config: TrainConfig, deepspeed_config: dict | None) -> _Run:
    args = config.train_args
    if deepspeed_config is not None:
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    world = init_distributed()
    device = _pick_device(args.device, world.local_rank)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    # Same seed on every rank for the weights (DDP also broadcasts them); then per-rank streams for
    # dropout and masking.
    _seed_everything(args.seed)
    model = build_training_model(config)
    model.to(device)
    step_module, hierarchy = _build_objective(config, model, device)
    _seed_everything(args.seed + world.rank)

    data = DataStream(config, model, world.rank, world.world_size)
    total_steps = _total_steps(config, data, world.world_size)

    optimizer = build_optimizer(
        model,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_eps,
        extra_modules={"loss": step_module.loss} if step_module.loss is not None else None,
        kernel=args.optimizer_kernel,
    )
    scheduler = build_scheduler(
        optimizer,
        warmup_steps=args.warmup_steps,
        total_steps=total_steps,
        schedule_type=args.schedule_type,
        min_ratio=args.min_lr_ratio,
    )
    autocast_dtype = _AUTOCAST_DTYPES[args.dtype]
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16" and deepspeed_config is None)

    engine = None
    if deepspeed_config is not None:
        engine, optimizer, scheduler = _deepspeed_engine(
            step_module, optimizer, scheduler, deepspeed_config, args, world.world_size
        )
        runner: nn.Module = engine
        autocast_dtype = None  # the engine casts the model itself (bf16/fp16 sections)
    elif world.world_size > 1:
        runner = _ddp(step_module, device, args)
    else:
        runner = step_module
    return _Run(
        config=config,
        rank=world.rank,
        world_size=world.world_size,
        device=device,
        model=model,
        step_module=step_module,
        runner=runner,
        engine=engine,
        data=data,
        hierarchy=hierarchy,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        autocast_dtype=autocast_dtype,
        total_steps=total_steps,
        probe=FiniteProbe.from_dataset(
            args.task, model, data.dataset, config.model_args.max_seq_length, device
        ),
    )


def _ddp(step_module: TrainStep, device: torch.device, args: Any) -> nn.Module:
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


def _build_objective(
    config: TrainConfig, model: nn.Module, device: torch.device
) -> tuple[TrainStep, WordNetHierarchy | None]:
    """The :class:`TrainStep` (model + InfoNCE for contrastive runs + the optional hierarchy term) and the
    WordNet hierarchy its triplets are drawn from (None when ``hierarchy_args.enabled`` is off)."""
    args = config.train_args
    loss_module = None
    if args.task == "contrastive":
        loss_module = InfoNCELoss(
            args.distance,
            logit_scale=args.logit_scale,
            trainable_logit_scale=args.trainable_logit_scale,
            symmetric=args.symmetric_loss,
        ).to(device)
    hierarchy_loss, hierarchy = None, None
    if config.hierarchy_args.enabled:
        h = config.hierarchy_args
        hierarchy = WordNetHierarchy.load(
            resolve_hierarchy_path(h.taxonomy_path, h.wordnet_path), h.max_children, h.pool_seed
        )
        hierarchy_loss = HierarchyLoss(
            weight=h.weight,
            margin=h.margin,
            centripetal_weight=h.centripetal_weight,
            centripetal_margin=h.centripetal_margin,
            variant=h.variant,
            cone_k=h.cone_k,
        )
    return TrainStep(model, args.task, loss_module, hierarchy_loss), hierarchy


def _total_steps(config: TrainConfig, data: DataStream, world_size: int) -> int:
    """``max_steps``, else ``num_epochs`` times the optimizer steps in one epoch of this rank's share."""
    args = config.train_args
    accum = args.gradient_accumulation_steps
    micro_per_epoch = data.batches_per_epoch()
    if args.max_steps is None and micro_per_epoch is None:
        raise ValueError("streamed data has no known length: set train_args.max_steps instead of num_epochs")
    if micro_per_epoch is not None and micro_per_epoch < accum:
        rows = len(data.dataset) if hasattr(data, "dataset") else "?"
        raise ConfigError(
            f"data_args.data_path={config.data_args.data_path} gives {rows} rows: {micro_per_epoch} full batches "
            f"of train_args.batch_size={args.batch_size} per rank (world size {world_size}), fewer than one "
            f"optimizer step (gradient_accumulation_steps={accum}); use more rows or a smaller batch_size"
        )
    return args.max_steps or args.num_epochs * (micro_per_epoch // accum)


def _deepspeed_engine(
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


# --- 5. resume --------------------------------------------------------------------------------------


def _resume(run: _Run) -> None:
    """Restore model, optimizer, scheduler, scaler, RNGs and data position from ``train_args.checkpoint``.

    Settings that change what is computed must match the checkpoint's; the learning-rate schedule may change
    (:data:`_RESUME_APPLIED`) and is applied from the checkpoint's step on, recorded in ``resumes.jsonl``.
    """
    loaded = ckpt.load_checkpoint(run.args.checkpoint, rank=run.rank)
    differences = config_differences(loaded.config_yaml, run.config)
    refused = {k: v for k, v in differences.items() if k not in _RESUME_APPLIED}
    peak_lrs = list(run.scheduler.base_lrs)
    if run.engine is not None:
        run.engine.load_checkpoint(str(loaded.path), tag=ckpt.DEEPSPEED_TAG)
    else:
        _load_training_state(run, loaded, refused)
    if refused:
        raise ConfigError(
            f"train_args.checkpoint={loaded.path} was written with other settings, and a resumed run cannot "
            f"change them (the checkpoint's are in {loaded.path / ckpt.CONFIG_FILE}):\n  "
            + _describe_differences(refused)
        )
    if differences:
        _apply_schedule(run.scheduler, run.optimizer, peak_lrs)
        if run.is_main:
            _record_resume(run.output_dir, loaded, differences)
    trainer_state = loaded.trainer_state
    run.step, run.tokens_seen = trainer_state["step"], trainer_state.get("tokens_seen", 0)
    run.last_loss = _recorded_loss(loaded)
    if loaded.rank_state is not None:
        run.data.load_state_dict(loaded.rank_state["data"])
        ckpt.restore_rng_state(loaded.rank_state["rng"])
    else:  # another world size: the data position is rank 0's, the random streams start afresh
        run.data.load_state_dict(trainer_state["data"])
    if run.is_main:
        print(f"resumed from {loaded.path} at step {run.step}", flush=True)


def _recorded_loss(loaded: Any) -> float:
    """The loss of the checkpoint's step: saved in its trainer state, or (older checkpoints) the run's
    ``metrics.jsonl`` record of that step; NaN when neither has it."""
    loss = loaded.trainer_state.get("loss")
    if loss is not None:
        return float(loss)
    step = loaded.trainer_state["step"]
    with contextlib.suppress(OSError, ValueError):
        for record in read_metrics(loaded.path.parent):
            if record.get("step") == step and "loss" in record:
                loss = record["loss"]
    return math.nan if loss is None else float(loss)


def _load_training_state(run: _Run, loaded: Any, refused: dict[tuple[str, str], tuple[Any, Any]]) -> None:
    state = loaded.training_state
    try:
        check_and_load_state_dict(
            run.step_module, state["model"], f"{loaded.path / ckpt.TRAINING_STATE_FILE}"
        )
    except WeightsMismatchError as error:
        model_diffs = {k: v for k, v in refused.items() if k[0] == "model_args"}
        settings = f" ({_describe_differences(model_diffs)})" if model_diffs else ""
        raise ckpt.CheckpointError(
            f"train_args.checkpoint={loaded.path} holds another model than this run builds{settings}:\n{error}"
        ) from None
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])


def _record_resume(
    output_dir: Path, loaded: Any, differences: dict[tuple[str, str], tuple[Any, Any]]
) -> None:
    print(
        f"resume: applying the new schedule from step {loaded.trainer_state['step']} on:\n  "
        f"{_describe_differences(differences)}",
        flush=True,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    changed = {f"{s}.{k}": [old, new] for (s, k), (old, new) in differences.items()}
    record = {"step": loaded.trainer_state["step"], "checkpoint": str(loaded.path), "changed": changed}
    with open(output_dir / "resumes.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


# --- 6. the loop: optimizer steps, logging, checkpoints ------------------------------------------------


@dataclass
class _Window:
    """Running sums between two log lines."""

    loss: float = 0.0
    steps: int = 0
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)


@dataclass
class _StepOutcome:
    loss: float
    tokens: int
    lr: float
    grad_norm: Tensor | None
    stats: dict[str, Tensor]


def _loop(run: _Run, logger: MetricsLogger, after_step: Callable[[int], None] | None) -> None:
    """Optimizer steps until ``total_steps`` (``run.last_loss``: the last step's loss)."""
    args = run.args
    batches = iter(run.data)
    run.runner.train()
    window = _Window()
    auto_compile = AutoCompile(
        run.model, run.config.model_args.compile, run.device, run.total_steps, _main_print(run)
    )
    auto_compile.start(run.step)
    while run.step < run.total_steps:
        started = time.perf_counter()
        outcome = _optimizer_step(run, batches)
        run.step += 1
        auto_compile.after_step(run.step, time.perf_counter() - started)
        run.tokens_seen += outcome.tokens
        run.last_loss = outcome.loss
        window.loss += outcome.loss
        window.steps += 1
        window.tokens += outcome.tokens
        logger.advance()
        if run.step % args.log_every == 0 or run.step == run.total_steps:
            logger.log(run.step, _metrics(run, window, outcome))
            window = _Window()
        if run.step % args.save_every == 0 and run.step < run.total_steps:
            _save_checkpoint(run)
        if after_step is not None:
            after_step(run.step)


def _main_print(run: _Run) -> Callable[[str], None]:
    """``print`` (flushed) on rank 0, nothing elsewhere: the run's log lines."""
    return (lambda line: print(line, flush=True)) if run.is_main else (lambda line: None)


def _optimizer_step(run: _Run, batches: Iterator[dict[str, Any]]) -> _StepOutcome:
    """``gradient_accumulation_steps`` micro-batches, then one update; stops the run on divergence."""
    args, accum = run.args, run.args.gradient_accumulation_steps
    lr = run.scheduler.get_last_lr()[0]  # the rate this step uses (first group: the model's own)
    step_loss = torch.zeros((), device=run.device)
    step_tokens = 0
    stats: dict[str, Tensor] = {}
    for micro in range(accum):
        # The named ranges show up in torch.profiler traces (benchmarks/profile_ddp.py); free otherwise.
        with record_function("lorentz_rag.next_batch"):
            batch = _next_batch(run, batches, micro)
        with record_function("lorentz_rag.forward_backward"):
            loss, stats = _micro_step(run, batch, last_micro=micro == accum - 1)
        step_loss += loss.detach().float() / accum
        step_tokens += _count_tokens(batch) * run.world_size  # ranks see equal shares; no collective needed

    # Divergence is caught before the update is kept: a non-finite loss or gradient norm stops the run
    # (under fp16 the GradScaler skips such steps itself), and so do non-finite parameters after it.
    loss_value = float(step_loss)
    if not math.isfinite(loss_value) and args.dtype != "fp16":
        raise _diverged(run.step + 1, "the loss", loss_value, args, run.output_dir)
    grad_norm = None
    if run.engine is None:
        with record_function("lorentz_rag.update"):
            grad_norm = _update(run)
    # Only trained parameters can turn non-finite in a step (a frozen base is checked at no cost).
    with record_function("lorentz_rag.finite_check"):
        finite = _all_finite(p for p in run.step_module.parameters() if p.requires_grad)
    if not finite:
        raise _diverged(
            run.step + 1, "a parameter after the optimizer step", float("nan"), args, run.output_dir
        )
    return _StepOutcome(loss=loss_value, tokens=step_tokens, lr=lr, grad_norm=grad_norm, stats=stats)


def _next_batch(run: _Run, batches: Iterator[dict[str, Any]], micro: int) -> dict[str, Any]:
    """The next micro-batch on the device, with this step's hierarchy triplets when the objective has them."""
    batch = next(batches)
    if run.hierarchy is not None:
        h = run.config.hierarchy_args
        texts = hierarchy_triplets(
            run.hierarchy,
            h.edges_per_step,
            seed=run.args.seed,
            rank=run.rank,
            step=run.step,
            micro=micro,
            direct_fraction=h.direct_fraction,
            sibling_fraction=h.sibling_fraction,
        )
        batch["hierarchy"] = run.model.tokenize(texts, prompt_type="document")
    return _to_device(batch, run.device)


def _micro_step(run: _Run, batch: dict[str, Any], *, last_micro: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """Forward and backward of one micro-batch (the engine also steps); returns the undivided loss."""
    if run.engine is not None:
        loss, stats = run.engine(batch)
        run.engine.backward(loss)
        run.engine.step()
        return loss, stats
    args = run.args
    # DDP all-reduces gradients once per optimizer step, on the last micro-batch.
    sync = contextlib.nullcontext() if (last_micro or run.world_size == 1) else run.runner.no_sync()
    dtype = run.autocast_dtype
    autocast = torch.autocast(run.device.type, dtype=dtype, enabled=dtype is not None)
    with sync, autocast:
        if args.grad_cache_chunk is not None and args.task == "contrastive":
            return grad_cache_micro_step(run.runner, run.step_module, batch, args, run.scaler, run.world_size)
        loss, stats = run.runner(batch)
        run.scaler.scale(loss / args.gradient_accumulation_steps).backward()
    return loss, stats


def _update(run: _Run) -> Tensor:
    """Clip, step the optimizer (through the GradScaler), advance the schedule; returns the gradient norm."""
    args = run.args
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        run.step_module.parameters(), args.max_grad_norm if args.max_grad_norm is not None else math.inf
    )
    if not run.scaler.is_enabled() and not math.isfinite(float(grad_norm)):
        raise _diverged(run.step + 1, "the gradient norm", float(grad_norm), args, run.output_dir)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    return grad_norm


def _metrics(run: _Run, window: _Window, outcome: _StepOutcome) -> dict[str, Any]:
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
        # Per-layer radius drift of the HyTE-FH trunk (DESIGN.md section 3); x0_mean/x0_max stay the
        # pooled embeddings' where a contrastive step produced them, else the trunk's output tokens.
        metrics.update({f"radius/{name}": value for name, value in radius.items()})
        metrics.setdefault("x0_mean", radius.get("final_norm/x0_mean", float("nan")))
        metrics.setdefault("x0_max", radius.get("final_norm/x0_max", float("nan")))
    return metrics


def _save_checkpoint(run: _Run) -> None:
    """An atomic checkpoint of step ``run.step``: never of non-finite weights, nor of weights whose outputs
    on the run's fixed probe texts are not finite (checked on every rank)."""
    args, step = run.args, run.step
    if not _all_finite(p for p in run.step_module.parameters() if p.requires_grad):
        raise _diverged(step, "a parameter (before saving)", float("nan"), args, run.output_dir)
    failed = run.probe.check(run.step_module, run.device)
    if failed is not None:
        what, value = failed
        quantity = f"the model's {what} on {run.probe.describe()} (checked before saving)"
        raise _diverged(step, quantity, value, args, run.output_dir)
    data_state = run.data.state_dict()
    trainer_state = {
        "step": step,
        "epoch": data_state["epoch"],
        "data": {k: v for k, v in data_state.items() if k != "collator"},  # JSON-safe part
        "tokens_seen": run.tokens_seen,
        "world_size": run.world_size,
        "total_steps": run.total_steps,
        "loss": run.last_loss,  # what a resumed run that has nothing left to do reports
    }
    training_state = None
    if run.engine is None:
        training_state = {
            "model": run.step_module.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
        }
    ckpt.save_checkpoint(
        run.output_dir,
        step,
        trainer_state=trainer_state,
        training_state=training_state,
        config_yaml=run.config_yaml,
        rank_state={"data": data_state},
        rank=run.rank,
        keep_last=args.keep_last,
        barrier=barrier,
        deepspeed_engine=run.engine,
    )


# --- 7. the result ----------------------------------------------------------------------------------


def _finish(run: _Run) -> Path:
    """The last checkpoint, then the model with ``save_pretrained`` in ``output_dir/final.tmp``, renamed to
    ``output_dir/final`` once complete (a failed save leaves no ``final/``, and removes ``final.tmp``)."""
    _save_checkpoint(run)
    final_dir = run.output_dir / "final"
    tmp_dir = run.output_dir / "final.tmp"
    if hasattr(run.model, "settings"):  # what the model card reports about this run
        run.model.card_data = {"training_data": run.config.data_args.data_path, "training_steps": run.step}
    try:
        if run.is_main:
            shutil.rmtree(tmp_dir, ignore_errors=True)  # left by a crashed save
        _save_final(run.model, run.engine, tmp_dir, run.is_main)
        if run.is_main:
            write_config(run.config, tmp_dir / "training_config.yaml")
            ckpt.publish_folder(tmp_dir, final_dir)
    except (OSError, RuntimeError) as error:
        if run.is_main:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise ckpt.CheckpointError(
            f"could not write the final model to {final_dir}: {ckpt.write_error_reason(error, tmp_dir)}; the "
            f"checkpoint of step {run.step} is intact: free space and resume with --train_args.checkpoint="
            f"{run.output_dir} (it only writes the final model); the partial {tmp_dir.name} was removed"
        ) from error
    barrier()
    return final_dir


def _save_final(model: nn.Module, engine: Any, final_dir: Path, is_main: bool) -> None:
    """``save_pretrained`` on rank 0; under ZeRO-3 the partitioned weights are gathered first."""
    gather = contextlib.nullcontext()
    if engine is not None and engine.zero_optimization_stage() == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    with gather:
        if is_main and hasattr(model, "settings"):  # an EmbeddingModel
            model.save_pretrained(final_dir)
        elif is_main:
            save_mlm_model(model, final_dir)


# --- command line -----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """``train.py`` / ``lorentz-rag train``: parse and validate everything first, then train. Returns an exit code;
    user errors (config, data, checkpoint, divergence, a folder in use, a full disk) print one ``error:`` line
    and return 2 (``--debug`` or ``LORENTZ_RAG_DEBUG=1``: with the traceback)."""
    return run_entry_point(_main, argv)


def _main(argv: list[str]) -> int:
    parsed = parse_command_line(argv)
    # The command ends the process group it started, with every DDP wrapper gone (end_distributed).
    with command_process_group():
        result = train(parsed.config, deepspeed_config=parsed.deepspeed_config)
    if int(os.environ.get("RANK", "0")) == 0:
        loss = f"loss {result.last_loss:.4f}" if math.isfinite(result.last_loss) else "loss not recorded"
        print(f"final model: {result.final_model_dir} (step {result.steps}, {loss})")
    return 0
