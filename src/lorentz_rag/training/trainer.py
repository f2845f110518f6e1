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
2. ``resume`` (``training/resume.py``): model, optimizer, scheduler, scaler, RNG per rank and data position
   from ``train_args.checkpoint``;
3. :func:`_loop`: :func:`_optimizer_step` (gradient accumulation, clipping, divergence checks) until
   ``total_steps``, logging every ``log_every`` steps (``log_record``, ``training/run.py``), atomic
   checkpoints every ``save_every`` steps (``save_checkpoint``, ``training/run_output.py``);
4. ``finish`` (``training/run_output.py``): the last checkpoint and the model written with
   ``save_pretrained`` to ``output_dir/final.tmp``, renamed to ``output_dir/final`` once complete.

The run's state is a :class:`~lorentz_rag.training.run.Run`; its device and wrapper (DDP, DeepSpeed) come
from ``training/backends.py``.

Nothing non-finite is ever published: every step checks its loss, gradient norm and parameters, and before
a checkpoint or the final model is written the model's outputs on a few fixed texts of the run must be
finite (:class:`~lorentz_rag.training.probe.FiniteProbe`).

On CPU an interrupted-and-resumed run ends with the same weights as an uninterrupted one: every random
draw after step ``k`` depends only on state the checkpoint restores (RNGs, sampler position, optimizer).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import record_function

from lorentz_rag.errors import on_interrupt, read_json_file, run_entry_point
from lorentz_rag.folder_lock import RUN_LOCK_NAME, exclusive_lock
from lorentz_rag.models.factory import build_mlm_model, build_model, check_position_limit
from lorentz_rag.models.hf_base import cached_base_states
from lorentz_rag.training.backends import ddp_wrapper, deepspeed_engine, fill_deepspeed_config, pick_device
from lorentz_rag.training.channel_recipe import run_channel_recipe
from lorentz_rag.training.compile_policy import AutoCompile
from lorentz_rag.training.config import (
    ConfigError,
    TrainConfig,
    check_local_paths,
    check_sequence_lengths,
    parse_command_line,
    write_config,
)
from lorentz_rag.training.data_stream import DataStream
from lorentz_rag.training.distributed import command_process_group, init_distributed
from lorentz_rag.training.hierarchy import (
    HierarchyLoss,
    WordNetHierarchy,
    hierarchy_triplets,
    resolve_hierarchy_path,
)
from lorentz_rag.training.logging import MetricsLogger
from lorentz_rag.training.losses import InfoNCELoss
from lorentz_rag.training.objective import TrainStep, grad_cache_micro_step
from lorentz_rag.training.optim import build_optimizer, build_scheduler
from lorentz_rag.training.probe import FiniteProbe
from lorentz_rag.training.resume import resume
from lorentz_rag.training.run import (
    Run,
    StepOutcome,
    TrainingDivergedError,
    TrainResult,
    Window,
    all_finite,
    diverged,
    log_record,
    main_print,
)
from lorentz_rag.training.run_output import claim_output_folder, finish, save_checkpoint, what_was_kept
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


# --- helpers ----------------------------------------------------------------------------------------


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


def build_training_model(config: TrainConfig) -> nn.Module:
    """The model a run starts from: ``build_mlm_model`` for MLM, ``build_model`` for contrastive training.

    ``model_args.init_from`` is honoured by the factory: an MLM output's trunk weights are loaded explicitly
    and any missing, unexpected or mis-shaped weight raises (never a silent fresh start).
    """
    if config.train_args.task == "mlm":
        return build_mlm_model(config.model_args)
    return build_model(config.model_args)


# --- the run ----------------------------------------------------------------------------------------


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
    # Lengths the model cannot read fail at the first long batch: refused before anything is created.
    check_sequence_lengths(config)
    check_position_limit(config.model_args)
    output_dir = Path(config.train_args.output_dir)
    with contextlib.ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) == 0:
            stack.enter_context(exclusive_lock(output_dir / RUN_LOCK_NAME, f"output folder {output_dir}"))
            claim_output_folder(output_dir, config.train_args)
        if config.train_args.task == "hierarchy_channel":
            # Only a channel over the frozen model trains: no trainer loop, checkpoints or data files.
            return run_channel_recipe(config)
        if config.train_args.cache_base_states:
            # Frozen base states per text for the whole run: the same numbers, fewer forwards (hf_base.py).
            stack.enter_context(cached_base_states())
        # taxonomy_args: the mixture and edges of the taxonomy's train split (unchanged without a path).
        config = prepare_taxonomy_run(config)
        with on_interrupt(lambda: what_was_kept(output_dir)):
            return _train(config, deepspeed_config, after_step)


def _train(
    config: TrainConfig,
    deepspeed_config: dict | None,
    after_step: Callable[[int], None] | None,
) -> TrainResult:
    run = _setup(config, deepspeed_config)
    if run.args.checkpoint is not None:
        resume(run)
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
    final_dir = finish(run)
    logger.close()
    return TrainResult(
        output_dir=run.output_dir, final_model_dir=final_dir, steps=run.step, last_loss=run.last_loss
    )


# --- 1-4. setup: processes, model and objective, data, optimizer, backend -----------------------------


def _setup(config: TrainConfig, deepspeed_config: dict | None) -> Run:
    args = config.train_args
    if deepspeed_config is not None:
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    world = init_distributed()
    device = pick_device(args.device, world.local_rank)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    # Same seed on every rank for the weights (DDP also broadcasts them); then per-rank streams for
    # dropout and masking.
    _seed_everything(args.seed)
    model = build_training_model(config)
    model.to(device)
    if args.max_seq_length is not None and hasattr(model, "settings"):
        # Training batches are cut here; finish() gives the saved model model_args.max_seq_length back.
        model.settings.max_seq_length = args.max_seq_length
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
        engine, optimizer, scheduler = deepspeed_engine(
            step_module, optimizer, scheduler, deepspeed_config, args, world.world_size
        )
        runner: nn.Module = engine
        autocast_dtype = None  # the engine casts the model itself (bf16/fp16 sections)
    elif world.world_size > 1:
        runner = ddp_wrapper(step_module, device, args)
    else:
        runner = step_module
    return Run(
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


# --- 6. the loop: optimizer steps, logging, checkpoints ------------------------------------------------


def _loop(run: Run, logger: MetricsLogger, after_step: Callable[[int], None] | None) -> None:
    """Optimizer steps until ``total_steps`` (``run.last_loss``: the last step's loss)."""
    args = run.args
    batches = iter(run.data)
    run.runner.train()
    window = Window()
    auto_compile = AutoCompile(
        run.model, run.config.model_args.compile, run.device, run.total_steps, main_print(run)
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
            logger.log(run.step, log_record(run, window, outcome))
            window = Window()
        if run.step % args.save_every == 0 and run.step < run.total_steps:
            save_checkpoint(run)
        if after_step is not None:
            after_step(run.step)


def _optimizer_step(run: Run, batches: Iterator[dict[str, Any]]) -> StepOutcome:
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
        raise diverged(run.step + 1, "the loss", loss_value, args, run.output_dir, weights_of=run.step)
    grad_norm = None
    if run.engine is None:
        with record_function("lorentz_rag.update"):
            grad_norm = _update(run)
    # Only trained parameters can turn non-finite in a step (a frozen base is checked at no cost).
    with record_function("lorentz_rag.finite_check"):
        finite = all_finite(p for p in run.step_module.parameters() if p.requires_grad)
    if not finite:
        raise diverged(
            run.step + 1, "a parameter after the optimizer step", float("nan"), args, run.output_dir
        )
    return StepOutcome(loss=loss_value, tokens=step_tokens, lr=lr, grad_norm=grad_norm, stats=stats)


def _next_batch(run: Run, batches: Iterator[dict[str, Any]], micro: int) -> dict[str, Any]:
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


def _micro_step(run: Run, batch: dict[str, Any], *, last_micro: bool) -> tuple[Tensor, dict[str, Tensor]]:
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


def _update(run: Run) -> Tensor:
    """Clip, step the optimizer (through the GradScaler), advance the schedule; returns the gradient norm."""
    args = run.args
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        run.step_module.parameters(), args.max_grad_norm if args.max_grad_norm is not None else math.inf
    )
    if not run.scaler.is_enabled() and not math.isfinite(float(grad_norm)):
        raise diverged(
            run.step + 1, "the gradient norm", float(grad_norm), args, run.output_dir, weights_of=run.step
        )
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    return grad_norm


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
