"""The one training loop: masked-LM or contrastive, one process, DDP (torchrun) or DeepSpeed.

Read it top to bottom; :func:`train` is the whole story:

1. processes and device: ``init_distributed`` (gloo on CPU, NCCL on GPU), seeds;
2. the model: ``build_mlm_model`` (task ``mlm``) or ``build_model`` (task ``contrastive``; ``model_args.init_from``
   loads an MLM output's trunk explicitly, and a mismatch raises);
3. the data: rows -> :class:`ResumableSampler` (this rank's share, in a seeded order, resumable mid-epoch) ->
   collator (MLM masking / query-document pools with explicit positive positions);
4. the objective as a module (:class:`TrainStep`): one ``forward(batch) -> loss`` so DDP and DeepSpeed wrap a
   single call; geometry and loss run in float32, only the encoder's matrix products in bf16/fp16;
5. AdamW (no decay on norms, biases, ``log c``, logit scale), warmup + schedule, GradScaler for fp16;
6. resume (model, optimizer, scheduler, scaler, RNG per rank, data position) from ``train_args.checkpoint``;
7. the loop: gradient accumulation, clipping, logging every ``log_every`` steps, atomic checkpoints every
   ``save_every`` steps; at the end the model is written with ``save_pretrained`` to ``output_dir/final``.

On CPU an interrupted-and-resumed run ends with the same weights as an uninterrupted one: every random
draw after step ``k`` depends only on state the checkpoint restores (RNGs, sampler position, optimizer).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from hyprag.errors import user_error
from hyprag.folder_lock import RUN_LOCK_NAME, exclusive_lock
from hyprag.models.io import WeightsMismatchError, check_and_load_state_dict
from hyprag.training import checkpoint as ckpt
from hyprag.training.config import ConfigError, TrainConfig, check_local_paths, write_config
from hyprag.training.data_stream import DataStream
from hyprag.training.distributed import barrier, init_distributed
from hyprag.training.hierarchy import (
    HierarchyLoss,
    WordNetHierarchy,
    hierarchy_triplets,
    resolve_wordnet_path,
)
from hyprag.training.logging import MetricsLogger
from hyprag.training.losses import InfoNCELoss, mlm_loss
from hyprag.training.optim import build_optimizer, build_scheduler

__all__ = [
    "KILL_AFTER_STEP_ENV",
    "TrainResult",
    "TrainStep",
    "TrainingDivergedError",
    "build_training_model",
    "fill_deepspeed_config",
    "main",
    "train",
]

#: Test hook: a process that finishes optimizer step N (and its checkpoint, if one is due) kills itself
#: with SIGKILL, exactly like a pre-empted job. Only read when set.
KILL_AFTER_STEP_ENV = "HYPRAG_KILL_AFTER_STEP"

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


# --- the objective ----------------------------------------------------------------------------------


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
        (:mod:`hyprag.training.hierarchy`)."""
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
            loss = mlm_loss(out.logits, batch["labels"])
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


def _grad_cache_micro_step(
    runner: nn.Module, step_module: TrainStep, batch: dict[str, Any], args: Any, scaler: Any, world_size: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """One contrastive micro-batch through GradCache: the full-batch loss, embedded in chunks.

    The gradients equal the plain loss's (tested in tests/training/test_grad_cache.py); the loss is divided
    by the accumulation steps like the plain path. Returns the undivided loss for logging.
    """
    from hyprag.training.grad_cache import grad_cache_backward

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
    loss = grad_cache_backward(
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


@contextlib.contextmanager
def _deepspeed_zero_dim_broadcast() -> Iterator[None]:
    """Let DeepSpeed's initial weight broadcast handle 0-d parameters (``log c``, the log logit scale).

    DeepSpeed 0.19's ``DeepSpeedEngine._broadcast_model`` broadcasts ``p.data.view(torch.uint8)``, which
    raises for 0-d tensors ("self.dim() cannot be 0 to view Float as Byte"). During ``initialize`` we swap
    in the same broadcast with 0-d parameters sent as they are (every backend handles 0-d float tensors).
    """
    from deepspeed import comm as ds_dist
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.utils import groups

    original = DeepSpeedEngine._broadcast_model

    def broadcast_model(engine: Any) -> None:
        if any(p.dim() == 0 for p in engine.module.parameters()) and not engine.has_moe_layers:
            for p in engine.module.parameters():
                if getattr(p, "ds_status", None) is not None or hasattr(p, "ds_optim_param"):
                    continue  # partitioned (ZeRO-3) or per-shard: not replicated, as in DeepSpeed
                data = p.data.view(torch.uint8) if p.dim() else p.data
                ds_dist.broadcast(
                    data, groups._get_broadcast_src_rank(), group=engine.seq_data_parallel_group
                )
            return
        original(engine)

    DeepSpeedEngine._broadcast_model = broadcast_model
    try:
        yield
    finally:
        DeepSpeedEngine._broadcast_model = original


def _all_finite(tensors: Iterator[Tensor]) -> bool:
    """One device sync for the whole model: are all values of all ``tensors`` finite?"""
    flags = [torch.isfinite(t.detach()).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


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
    )
}
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
        raise ConfigError(
            f"train_args.output_dir={output_dir} is not empty ({shown}); a new run would destroy it. Resume it "
            f"with --train_args.checkpoint={output_dir}, choose another output_dir, or pass "
            "--train_args.overwrite=true to replace it"
        )
    import shutil

    run_files = {ckpt.CONFIG_FILE, "metrics.jsonl", ckpt.LATEST_FILE, "final", "wandb", "resumes.jsonl"}
    for name in entries:
        if name in run_files or name.startswith(ckpt.CHECKPOINT_PREFIX) or name == ckpt.LATEST_FILE + ".tmp":
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    print(f"overwrite: removed the previous run's files from {output_dir}", flush=True)


def _maybe_kill_self(step: int) -> None:
    target = os.environ.get(KILL_AFTER_STEP_ENV)
    if target is not None and step == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


def build_training_model(config: TrainConfig) -> nn.Module:
    """The model a run starts from: ``build_mlm_model`` for MLM, ``build_model`` for contrastive training.

    ``model_args.init_from`` is honoured by the factory: an MLM output's trunk weights are loaded explicitly
    and any missing, unexpected or mis-shaped weight raises (never a silent fresh start).
    """
    from hyprag.models.factory import build_mlm_model, build_model

    if config.train_args.task == "mlm":
        return build_mlm_model(config.model_args)
    return build_model(config.model_args)


# --- the loop ---------------------------------------------------------------------------------------


def train(
    config: TrainConfig, *, deepspeed_config: str | os.PathLike[str] | dict | None = None
) -> TrainResult:
    """Run the training described by ``config``; returns where the final model is. See the module docstring.

    Rank 0 holds an exclusive lock on ``output_dir`` for the run's life (a second run there fails at once,
    naming the holder's pid), and a new run refuses a non-empty ``output_dir`` unless ``train_args.overwrite``
    is set or it resumes (``train_args.checkpoint``).
    """
    if deepspeed_config is not None and config.train_args.grad_cache_chunk is not None:
        # The engine owns backward (engine.backward(loss)); GradCache's two-pass backward cannot run in it.
        raise ValueError(
            "train_args.grad_cache_chunk is not supported under DeepSpeed; use torchrun (DDP) for GradCache "
            "or pass --train_args.grad_cache_chunk=null"
        )
    check_local_paths(config)
    output_dir = Path(config.train_args.output_dir)
    with contextlib.ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) == 0:
            stack.enter_context(exclusive_lock(output_dir / RUN_LOCK_NAME, f"output folder {output_dir}"))
            _claim_output_folder(output_dir, config.train_args)
        return _train(config, deepspeed_config)


def _train(config: TrainConfig, deepspeed_config: str | os.PathLike[str] | dict | None) -> TrainResult:
    args = config.train_args
    output_dir = Path(args.output_dir)

    # 1. processes, device, seeds ---------------------------------------------------------------------
    if deepspeed_config is not None:
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    world = init_distributed()
    rank, world_size = world.rank, world.world_size
    device = _pick_device(args.device, world.local_rank)
    is_main = rank == 0
    # Same seed on every rank for the weights (DDP also broadcasts them); then per-rank streams for
    # dropout and masking.
    _seed_everything(args.seed)

    # 2. model ----------------------------------------------------------------------------------------
    model = build_training_model(config)
    model.to(device)
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
        hierarchy = WordNetHierarchy.load(resolve_wordnet_path(h.wordnet_path), h.max_children, h.pool_seed)
        hierarchy_loss = HierarchyLoss(
            weight=h.weight,
            margin=h.margin,
            centripetal_weight=h.centripetal_weight,
            centripetal_margin=h.centripetal_margin,
            variant=h.variant,
            cone_k=h.cone_k,
        )
    step_module = TrainStep(model, args.task, loss_module, hierarchy_loss)
    _seed_everything(args.seed + rank)

    # 3. data -----------------------------------------------------------------------------------------
    data = DataStream(config, model, rank, world_size)
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
    total_steps = args.max_steps or args.num_epochs * (micro_per_epoch // accum)

    # 4. optimizer, schedule, precision ---------------------------------------------------------------
    optimizer = build_optimizer(
        model,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_eps,
        extra_modules={"loss": loss_module} if loss_module is not None else None,
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
        import deepspeed

        ds = deepspeed_config
        if not isinstance(ds, dict):
            ds = json.loads(Path(ds).read_text(encoding="utf-8"))
        ds = fill_deepspeed_config(ds, args, world_size)
        with _deepspeed_zero_dim_broadcast():
            engine, optimizer, _, scheduler = deepspeed.initialize(
                model=step_module, optimizer=optimizer, lr_scheduler=scheduler, config=ds
            )
        runner: nn.Module = engine
        autocast_dtype = None  # the engine casts the model itself (bf16/fp16 sections)
    elif world_size > 1:
        runner = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        runner = step_module

    # 5. resume ---------------------------------------------------------------------------------------
    step, tokens_seen = 0, 0
    if args.checkpoint is not None:
        loaded = ckpt.load_checkpoint(args.checkpoint, rank=rank)
        differences = config_differences(loaded.config_yaml, config)
        refused = {k: v for k, v in differences.items() if k not in _RESUME_APPLIED}
        peak_lrs = list(scheduler.base_lrs)
        if engine is not None:
            engine.load_checkpoint(str(loaded.path), tag=ckpt.DEEPSPEED_TAG)
        else:
            state = loaded.training_state
            try:
                check_and_load_state_dict(
                    step_module, state["model"], f"{loaded.path / ckpt.TRAINING_STATE_FILE}"
                )
            except WeightsMismatchError as error:
                model_diffs = {k: v for k, v in refused.items() if k[0] == "model_args"}
                settings = f" ({_describe_differences(model_diffs)})" if model_diffs else ""
                raise ckpt.CheckpointError(
                    f"train_args.checkpoint={loaded.path} holds another model than this run builds{settings}:\n{error}"
                ) from None
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        if refused:
            raise ConfigError(
                f"train_args.checkpoint={loaded.path} was written with other settings, and a resumed run cannot "
                f"change them (the checkpoint's are in {loaded.path / ckpt.CONFIG_FILE}):\n  "
                + _describe_differences(refused)
            )
        if differences:
            _apply_schedule(scheduler, optimizer, peak_lrs)
            if is_main:
                print(
                    "resume: applying the new schedule from step "
                    f"{loaded.trainer_state['step']} on:\n  {_describe_differences(differences)}",
                    flush=True,
                )
                output_dir.mkdir(parents=True, exist_ok=True)
                with open(output_dir / "resumes.jsonl", "a", encoding="utf-8") as handle:
                    changed = {f"{s}.{k}": [old, new] for (s, k), (old, new) in differences.items()}
                    record = {
                        "step": loaded.trainer_state["step"],
                        "checkpoint": str(loaded.path),
                        "changed": changed,
                    }
                    handle.write(json.dumps(record) + "\n")
        trainer_state = loaded.trainer_state
        step, tokens_seen = trainer_state["step"], trainer_state.get("tokens_seen", 0)
        if loaded.rank_state is not None:
            data.load_state_dict(loaded.rank_state["data"])
            ckpt.restore_rng_state(loaded.rank_state["rng"])
        else:  # another world size: the data position is rank 0's, the random streams start afresh
            data.load_state_dict(trainer_state["data"])
        if is_main:
            print(f"resumed from {loaded.path} at step {step}", flush=True)

    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    if is_main:
        write_config(config, output_dir / "config.yaml")
    logger = MetricsLogger(
        output_dir,
        total_steps=total_steps,
        start_step=step,
        enabled=is_main,
        wandb_project=args.wandb_project,
        wandb_run_name=args.wandb_run_name,
        config=config.model_dump(mode="json"),
    )

    def save(at_step: int) -> None:
        if not _all_finite(p for p in step_module.parameters() if p.requires_grad):  # never save NaN weights
            raise _diverged(at_step, "a parameter (before saving)", float("nan"), args, output_dir)
        data_state = data.state_dict()
        trainer_state = {
            "step": at_step,
            "epoch": data_state["epoch"],
            "data": {k: v for k, v in data_state.items() if k != "collator"},  # JSON-safe part
            "tokens_seen": tokens_seen,
            "world_size": world_size,
            "total_steps": total_steps,
        }
        training_state = None
        if engine is None:
            training_state = {
                "model": step_module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
            }
        ckpt.save_checkpoint(
            output_dir,
            at_step,
            trainer_state=trainer_state,
            training_state=training_state,
            config_yaml=config_yaml,
            rank_state={"data": data_state},
            rank=rank,
            keep_last=args.keep_last,
            barrier=barrier,
            deepspeed_engine=engine,
        )

    # 6. the loop -------------------------------------------------------------------------------------
    batches = iter(data)
    runner.train()
    last_loss = float("nan")
    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
    window_steps = 0
    while step < total_steps:
        step_lr = scheduler.get_last_lr()[0]  # the rate this step uses (first group: the model's own)
        step_loss = torch.zeros((), device=device)
        step_tokens = 0
        stats: dict[str, Tensor] = {}
        for micro in range(accum):
            batch = next(batches)
            if hierarchy is not None:
                h = config.hierarchy_args
                texts = hierarchy_triplets(
                    hierarchy,
                    h.edges_per_step,
                    seed=args.seed,
                    rank=rank,
                    step=step,
                    micro=micro,
                    direct_fraction=h.direct_fraction,
                    sibling_fraction=h.sibling_fraction,
                )
                batch["hierarchy"] = model.tokenize(texts, prompt_type="document")
            batch = _to_device(batch, device)
            tokens = _count_tokens(batch)
            if engine is not None:
                loss, stats = engine(batch)
                engine.backward(loss)
                engine.step()
            else:
                # DDP all-reduces gradients once per optimizer step, on the last micro-batch.
                last_micro = micro == accum - 1
                sync = contextlib.nullcontext() if (last_micro or world_size == 1) else runner.no_sync()
                autocast = torch.autocast(
                    device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
                )
                with sync, autocast:
                    if args.grad_cache_chunk is not None and args.task == "contrastive":
                        loss, stats = _grad_cache_micro_step(
                            runner, step_module, batch, args, scaler, world_size
                        )
                    else:
                        loss, stats = runner(batch)
                        scaler.scale(loss / accum).backward()
            step_loss += loss.detach().float() / accum
            step_tokens += tokens * world_size  # ranks see equal shares; no collective needed

        # Divergence is caught before the update is kept: a non-finite loss or gradient norm stops the run
        # (under fp16 the GradScaler skips such steps itself), and so do non-finite parameters after it.
        loss_value = float(step_loss)
        if not math.isfinite(loss_value) and args.dtype != "fp16":
            raise _diverged(step + 1, "the loss", loss_value, args, output_dir)
        grad_norm = None
        if engine is None:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                step_module.parameters(), args.max_grad_norm if args.max_grad_norm is not None else math.inf
            )
            if not scaler.is_enabled() and not math.isfinite(float(grad_norm)):
                raise _diverged(step + 1, "the gradient norm", float(grad_norm), args, output_dir)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        # Only trained parameters can turn non-finite in a step (a frozen base is checked at no cost).
        if not _all_finite(p for p in step_module.parameters() if p.requires_grad):
            raise _diverged(step + 1, "a parameter after the optimizer step", float("nan"), args, output_dir)
        step += 1
        tokens_seen += step_tokens
        window_tokens += step_tokens
        last_loss = loss_value
        window_loss += last_loss
        window_steps += 1
        logger.advance()

        if step % args.log_every == 0 or step == total_steps:
            elapsed = time.perf_counter() - window_start
            metrics: dict[str, Any] = {
                "loss": window_loss / window_steps,
                "lr": step_lr,
                "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                "epoch": data.epoch,
            }
            c = step_module.curvature()
            if c is not None:
                metrics["curvature"] = float(c.detach())
            if loss_module is not None:
                metrics["logit_scale"] = float(loss_module.logit_scale().detach())
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
            if scaler.is_enabled():
                metrics["grad_scale"] = float(scaler.get_scale())
            metrics.update({k: float(v) for k, v in stats.items()})
            trunk = getattr(model, "model", None)
            radius = getattr(trunk, "last_radius_stats", None)
            if radius:
                # Per-layer radius drift of the HyTE-FH trunk (DESIGN.md section 3); x0_mean/x0_max stay the
                # pooled embeddings' where a contrastive step produced them, else the trunk's output tokens.
                metrics.update({f"radius/{name}": value for name, value in radius.items()})
                metrics.setdefault("x0_mean", radius.get("final_norm/x0_mean", float("nan")))
                metrics.setdefault("x0_max", radius.get("final_norm/x0_max", float("nan")))
            logger.log(step, metrics)
            window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()

        if step % args.save_every == 0 and step < total_steps:
            save(step)
        _maybe_kill_self(step)

    # 7. the result -----------------------------------------------------------------------------------
    save(step)
    final_dir = output_dir / "final"
    if hasattr(model, "settings"):  # what the model card reports about this run
        model.card_data = {"training_data": config.data_args.data_path, "training_steps": step}
    try:
        _save_final(model, engine, final_dir, is_main)
    except (OSError, RuntimeError) as error:
        from hyprag.errors import describe_error

        raise ckpt.CheckpointError(
            f"could not write the final model to {final_dir}: {describe_error(error)}; the checkpoint of step "
            f"{step} is intact: free space and resume with --train_args.checkpoint={output_dir}"
        ) from error
    if is_main:
        write_config(config, final_dir / "training_config.yaml")
    barrier()
    logger.close()
    return TrainResult(output_dir=output_dir, final_model_dir=final_dir, steps=step, last_loss=last_loss)


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
            from hyprag.models.factory import save_mlm_model

            save_mlm_model(model, final_dir)


# --- command line -----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """``train.py`` / ``hyprag train``: parse and validate everything first, then train. Returns an exit code;
    user errors (config, data, checkpoint, divergence, a folder in use, a full disk) print one ``error:`` line
    and return 2 (``--debug`` or ``HYPRAG_DEBUG=1``: with the traceback)."""
    from hyprag.errors import run_entry_point

    return run_entry_point(_main, argv)


def _main(argv: list[str]) -> int:
    from hyprag.training.config import parse_command_line

    parsed = parse_command_line(argv)
    result = train(parsed.config, deepspeed_config=parsed.deepspeed_config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final model: {result.final_model_dir} (step {result.steps}, loss {result.last_loss:.4f})")
    return 0
