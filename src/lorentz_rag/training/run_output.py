"""A run's output folder: claiming it, its atomic checkpoints, and the final model.

Layout and atomicity are ``training/checkpoint.py``'s; this module decides what a run writes there and
refuses to write weights that are not finite (:func:`save_checkpoint`, :func:`finish`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lorentz_rag.folder_lock import RUN_LOCK_NAME
from lorentz_rag.models.factory import save_mlm_model
from lorentz_rag.training import checkpoint as ckpt
from lorentz_rag.training.config import ConfigError, write_config
from lorentz_rag.training.distributed import barrier
from lorentz_rag.training.run import Run, all_finite, diverged

__all__ = ["claim_output_folder", "finish", "save_checkpoint", "save_final", "what_was_kept"]


def claim_output_folder(output_dir: Path, args: Any) -> None:
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


def what_was_kept(output_dir: Path) -> str:
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


def save_checkpoint(run: Run) -> None:
    """An atomic checkpoint of step ``run.step``, only of a state a run can resume from (checked on every
    rank): finite trained parameters and optimizer state, and finite outputs, loss and loss gradient on the
    run's fixed probe texts (``training/probe.py``); a step whose own loss or gradient norm was not finite
    never gets here (the trainer stops at it). Otherwise the run stops as diverged and nothing is written."""
    args, step = run.args, run.step
    if not all_finite(p for p in run.step_module.parameters() if p.requires_grad):
        raise diverged(step, "a parameter (before saving)", float("nan"), args, run.output_dir)
    if run.engine is None and not all_finite(_optimizer_tensors(run.optimizer)):
        raise diverged(step, "the optimizer state (before saving)", float("nan"), args, run.output_dir)
    # The gradient check needs the whole parameters: under DeepSpeed (ZeRO-partitioned) only the outputs.
    failed = run.probe.check(run.step_module, run.device, gradients=run.engine is None)
    if failed is not None:
        what, value = failed
        thing = "the gradient of the model's loss" if what == "gradient" else f"the model's {what}"
        quantity = f"{thing} on {run.probe.describe()} (checked before saving)"
        raise diverged(step, quantity, value, args, run.output_dir)
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


def _optimizer_tensors(optimizer: Any) -> Iterator[Tensor]:
    """The tensors of an optimizer's per-parameter state (AdamW: step, exp_avg, exp_avg_sq)."""
    for state in getattr(optimizer, "state", {}).values():
        for value in state.values():
            if isinstance(value, Tensor) and value.is_floating_point():
                yield value


def finish(run: Run) -> Path:
    """The last checkpoint, then the model with ``save_pretrained`` in ``output_dir/final.tmp``, renamed to
    ``output_dir/final`` once complete. A failed save (a full disk, whichever library was writing: ``open``,
    ``torch``, ``safetensors``; or Ctrl-C) leaves no ``final/`` and removes ``final.tmp``; a write error ends
    the run with a :class:`~lorentz_rag.training.checkpoint.CheckpointError` naming the folder, the reason,
    the intact checkpoint and how to resume."""
    save_checkpoint(run)
    final_dir = run.output_dir / "final"
    tmp_dir = run.output_dir / "final.tmp"
    if hasattr(run.model, "settings"):
        # The saved model reads texts up to model_args.max_seq_length (train_args.max_seq_length cut the batches)
        # and its card reports this run.
        run.model.settings.max_seq_length = run.config.model_args.max_seq_length
        run.model.card_data = {"training_data": run.config.data_args.data_path, "training_steps": run.step}
    try:
        if run.is_main:
            shutil.rmtree(tmp_dir, ignore_errors=True)  # left by a crashed save
        save_final(run.model, run.engine, tmp_dir, run.is_main)
        if run.is_main:
            write_config(run.config, tmp_dir / "training_config.yaml")
            ckpt.publish_folder(tmp_dir, final_dir)
    except BaseException as error:
        if run.is_main:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if not _is_write_error(error):
            raise
        removed = "was removed" if not tmp_dir.exists() else "could not be removed: delete it"
        last = run.output_dir / f"{ckpt.CHECKPOINT_PREFIX}{run.step}"
        raise ckpt.CheckpointError(
            f"could not write the final model to {final_dir}: {ckpt.write_error_reason(error, tmp_dir)}; the "
            f"checkpoint of step {run.step} is intact: free space and resume with --train_args.checkpoint="
            f"{run.output_dir} (it resumes from {last} and only writes the final model); the partial "
            f"{tmp_dir} {removed}"
        ) from error
    barrier()
    return final_dir


def _is_write_error(error: BaseException) -> bool:
    """An error of writing files: ``OSError`` (errno), ``RuntimeError`` (``torch.save`` loses the errno) or
    safetensors' own error type (its text carries the OS error, e.g. ``No space left on device (os error 28)``)."""
    return isinstance(error, (OSError, RuntimeError)) or type(error).__name__ == "SafetensorError"


def save_final(model: nn.Module, engine: Any, final_dir: Path, is_main: bool) -> None:
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
