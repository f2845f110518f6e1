"""Resuming a run from ``train_args.checkpoint``: which settings may change, and restoring every state.

Settings that change what is computed must match the checkpoint's (:func:`config_differences`); bookkeeping
may change freely (:data:`RESUME_BOOKKEEPING`), and the learning-rate schedule (:data:`RESUME_APPLIED`) is
applied from the checkpoint's step on and recorded in ``output_dir/resumes.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import yaml

from lorentz_rag.models.io import WeightsMismatchError, check_and_load_state_dict
from lorentz_rag.training import checkpoint as ckpt
from lorentz_rag.training.config import ConfigError, TrainConfig
from lorentz_rag.training.logging import read_metrics
from lorentz_rag.training.run import Run

__all__ = ["RESUME_APPLIED", "RESUME_BOOKKEEPING", "config_differences", "resume"]


#: Keys a resumed run may change freely: where and how often it writes, not what it computes.
RESUME_BOOKKEEPING = {
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
RESUME_APPLIED = {
    ("train_args", key)
    for key in ("learning_rate", "warmup_steps", "schedule_type", "min_lr_ratio", "max_steps", "num_epochs")
}


def config_differences(saved_yaml: str, config: TrainConfig) -> dict[tuple[str, str], tuple[Any, Any]]:
    """``{(section, key): (checkpoint value, current value)}`` for every key that differs, except bookkeeping
    keys (:data:`RESUME_BOOKKEEPING`) and keys the checkpoint's config does not have (newer fields)."""
    saved = yaml.safe_load(saved_yaml) or {}
    differences = {}
    for section, body in config.model_dump(mode="json").items():
        old = saved.get(section)
        if not isinstance(old, dict) or not isinstance(body, dict):
            continue
        for key, value in body.items():
            if (section, key) not in RESUME_BOOKKEEPING and key in old and old[key] != value:
                differences[(section, key)] = (old[key], value)
    return differences


def describe_differences(differences: dict[tuple[str, str], tuple[Any, Any]]) -> str:
    return "\n  ".join(
        f"{section}.{key}: {old!r} in the checkpoint, {new!r} now"
        for (section, key), (old, new) in differences.items()
    )


def apply_schedule(scheduler: Any, optimizer: Any, peak_lrs: list[float]) -> None:
    """After a resume: the current config's peak learning rates and schedule from the checkpoint's step on.

    ``load_state_dict`` restored the checkpoint's peaks (``base_lrs``/``initial_lr``); the schedule's shape is
    the current config's already (the lambda is built from it), so only the peaks and this step's rates are set.
    """
    scheduler.base_lrs = list(peak_lrs)
    for group, peak, factor in zip(optimizer.param_groups, peak_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = peak
        group["lr"] = peak * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def resume(run: Run) -> None:
    """Restore model, optimizer, scheduler, scaler, RNGs and data position from ``train_args.checkpoint``.

    Settings that change what is computed must match the checkpoint's; the learning-rate schedule may change
    (:data:`RESUME_APPLIED`) and is applied from the checkpoint's step on, recorded in ``resumes.jsonl``.
    """
    loaded = ckpt.load_checkpoint(run.args.checkpoint, rank=run.rank)
    differences = config_differences(loaded.config_yaml, run.config)
    refused = {k: v for k, v in differences.items() if k not in RESUME_APPLIED}
    peak_lrs = list(run.scheduler.base_lrs)
    if run.engine is not None:
        run.engine.load_checkpoint(str(loaded.path), tag=ckpt.DEEPSPEED_TAG)
    else:
        load_training_state(run, loaded, refused)
    if refused:
        raise ConfigError(
            f"train_args.checkpoint={loaded.path} was written with other settings, and a resumed run cannot "
            f"change them (the checkpoint's are in {loaded.path / ckpt.CONFIG_FILE}):\n  "
            + describe_differences(refused)
        )
    if differences:
        apply_schedule(run.scheduler, run.optimizer, peak_lrs)
        if run.is_main:
            _recordresume(run.output_dir, loaded, differences)
    trainer_state = loaded.trainer_state
    run.step, run.tokens_seen = trainer_state["step"], trainer_state.get("tokens_seen", 0)
    run.last_loss = recorded_loss(loaded)
    if loaded.rank_state is not None:
        run.data.load_state_dict(loaded.rank_state["data"])
        ckpt.restore_rng_state(loaded.rank_state["rng"])
    else:  # another world size: the data position is rank 0's, the random streams start afresh
        run.data.load_state_dict(trainer_state["data"])
    if run.is_main:
        print(f"resumed from {loaded.path} at step {run.step}", flush=True)


def recorded_loss(loaded: Any) -> float:
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


def load_training_state(run: Run, loaded: Any, refused: dict[tuple[str, str], tuple[Any, Any]]) -> None:
    state = loaded.training_state
    try:
        check_and_load_state_dict(
            run.step_module, state["model"], f"{loaded.path / ckpt.TRAINING_STATE_FILE}"
        )
    except WeightsMismatchError as error:
        model_diffs = {k: v for k, v in refused.items() if k[0] == "model_args"}
        settings = f" ({describe_differences(model_diffs)})" if model_diffs else ""
        raise ckpt.CheckpointError(
            f"train_args.checkpoint={loaded.path} holds another model than this run builds{settings}:\n{error}"
        ) from None
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])


def _recordresume(output_dir: Path, loaded: Any, differences: dict[tuple[str, str], tuple[Any, Any]]) -> None:
    print(
        f"resume: applying the new schedule from step {loaded.trainer_state['step']} on:\n  "
        f"{describe_differences(differences)}",
        flush=True,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    changed = {f"{s}.{k}": [old, new] for (s, k), (old, new) in differences.items()}
    record = {"step": loaded.trainer_state["step"], "checkpoint": str(loaded.path), "changed": changed}
    with open(output_dir / "resumes.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
