"""Training checkpoints: written atomically, found again through a ``latest`` pointer, pruned to ``keep_last``.

Layout of an output folder::

    output_dir/
      config.yaml            the effective configuration of the run
      metrics.jsonl          one JSON object per logged step
      latest                 one line, the name of the newest complete checkpoint ("ckpt-200")
      ckpt-100/  ckpt-200/   complete checkpoints
      ckpt-300.tmp/          a checkpoint being written (or left behind by a crash; never read, removed
                             by the next save)
      final/                 the trained model, ``save_pretrained`` format (loadable with lorentz_rag.load_model)

A checkpoint folder holds ``config.yaml``, ``trainer_state.json`` (step, epoch, data position, world size),
``training_state.pt`` (model, optimizer, scheduler, GradScaler and logit-scale states; absent under
DeepSpeed, whose engine writes ``deepspeed/`` itself) and ``rank{r}.pt`` per rank: its random generators
(python, numpy, torch, CUDA) and what the caller adds (the trainer: its data position and masking RNG). A checkpoint is complete once its folder has been renamed from ``.tmp``;
``latest`` is rewritten (temp file + ``os.replace``) only after that, so a crash at any point leaves the
previous checkpoint loadable.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorentz_rag.atomic_files import write_text
from lorentz_rag.errors import describe_error, user_error

__all__ = [
    "CHECKPOINT_PREFIX",
    "LATEST_FILE",
    "CheckpointError",
    "LoadedCheckpoint",
    "capture_rng_state",
    "list_checkpoints",
    "load_checkpoint",
    "publish_folder",
    "resolve_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "write_error_reason",
]

CHECKPOINT_PREFIX = "ckpt-"
LATEST_FILE = "latest"
TRAINER_STATE_FILE = "trainer_state.json"
TRAINING_STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.yaml"
DEEPSPEED_TAG = "deepspeed"


@user_error
class CheckpointError(RuntimeError):
    """A checkpoint cannot be found, read or written; the message names the path."""


def _rank_file(rank: int) -> str:
    return f"rank{rank}.pt"


def capture_rng_state() -> dict[str, Any]:
    """The state of every generator a training step may draw from (python, numpy, torch CPU and CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX) or name.endswith(".tmp"):
        return None
    try:
        return int(name[len(CHECKPOINT_PREFIX) :])
    except ValueError:
        return None


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint folders of ``output_dir``, oldest first (``.tmp`` folders excluded)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(step, p) for p in folder.iterdir() if p.is_dir() and (step := _step_of(p)) is not None]
    return [p for _, p in sorted(found)]


def _fsync_dir(path: Path) -> None:
    # Make the rename itself durable; not every platform allows opening a folder.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then the folders: the data is on disk before the rename publishes it."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [*sorted(p for p in folder.rglob("*") if p.is_dir()), folder]:
        _fsync_dir(path)


#: Below this many free bytes, a write error without an errno (torch.save's ``basic_ios::clear: iostream
#: error``) is reported as a full disk.
_NEARLY_FULL_BYTES = 1 << 20


def write_error_reason(error: BaseException, folder: Path) -> str:
    """Why writing into ``folder`` failed, in words: ``describe_error`` for an OS error; for a
    ``RuntimeError`` of ``torch.save`` (which loses the errno), "no space left on device" when the disk
    holding ``folder`` is (nearly) full. A safetensors error carries its OS error in its text ("No space
    left on device (os error 28)"), read by ``describe_error``; one without is treated like ``torch.save``'s."""
    safetensors_error = type(error).__name__ == "SafetensorError"
    if safetensors_error and "(os error " in str(error):
        return describe_error(error)
    if isinstance(error, OSError) or not (isinstance(error, RuntimeError) or safetensors_error):
        return describe_error(error)
    try:
        full = shutil.disk_usage(folder if folder.exists() else folder.parent).free < _NEARLY_FULL_BYTES
    except OSError:
        full = False
    reason = os.strerror(errno.ENOSPC).lower() if full else "write failed"
    return f"{reason} ({str(error).strip() or type(error).__name__})"


def _write_failed(tmp: Path, output_dir: Path, error: BaseException) -> CheckpointError:
    """The error of a failed save, after removing the partial ``tmp`` folder (it would keep filling the disk
    and is never read)."""
    shutil.rmtree(tmp, ignore_errors=True)
    removed = "removed the partial folder" if not tmp.exists() else "could not remove the partial folder"
    latest = output_dir / LATEST_FILE
    previous = latest.read_text(encoding="utf-8").strip() if latest.is_file() else None
    kept = (
        f"the previous checkpoint {output_dir / previous} is intact (resume from it with "
        f"--train_args.checkpoint={output_dir})"
        if previous
        else "no earlier checkpoint exists"
    )
    return CheckpointError(
        f"could not write checkpoint {tmp}: {write_error_reason(error, tmp)}; {removed}; {kept}"
    )


def publish_folder(tmp: Path, final: Path) -> None:
    """Make the complete folder ``tmp`` appear as ``final`` in one rename, after its files are on disk; a
    previous ``final`` is replaced (moved aside, then removed). Raises ``OSError`` from the fsyncs or the
    renames."""
    _fsync_tree(tmp)
    if final.exists():
        old = final.with_name(f"{final.name}.old.tmp")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def save_checkpoint(
    output_dir: str | os.PathLike[str],
    step: int,
    *,
    trainer_state: dict[str, Any],
    training_state: dict[str, Any] | None,
    config_yaml: str,
    rank_state: dict[str, Any] | None = None,
    rank: int = 0,
    keep_last: int | None = None,
    barrier: Callable[[], None] = lambda: None,
    deepspeed_engine: Any = None,
) -> Path:
    """Write ``output_dir/ckpt-{step}`` atomically and point ``latest`` at it. Call it on every rank.

    ``training_state`` (model/optimizer/scheduler/scaler ``state_dict``s) is written by rank 0 with
    ``torch.save``; under DeepSpeed pass ``training_state=None`` and the engine, whose (possibly
    ZeRO-partitioned) states every rank writes into the same folder. Every rank writes its own RNG state
    plus ``rank_state`` (anything ``torch.save`` can write) to ``rank{r}.pt``.
    ``barrier`` synchronises the ranks (``torch.distributed.barrier`` in a distributed run).
    Returns the final checkpoint path.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f"{CHECKPOINT_PREFIX}{step}.tmp"
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        # Leftovers of a crashed save are incomplete by definition.
        for stale in output_dir.glob(f"{CHECKPOINT_PREFIX}*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.mkdir()
        except OSError as error:
            raise _write_failed(tmp, output_dir, error) from error
    barrier()

    # A full disk, a permission, a failed torch.save (a RuntimeError, e.g. "basic_ios::clear: iostream
    # error"): the .tmp folder is removed, never published.
    try:
        torch.save({"rng": capture_rng_state(), **(rank_state or {})}, tmp / _rank_file(rank))
        if deepspeed_engine is not None:
            deepspeed_engine.save_checkpoint(str(tmp), tag=DEEPSPEED_TAG)
        if rank == 0:
            if training_state is not None:
                torch.save(training_state, tmp / TRAINING_STATE_FILE)
            (tmp / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
            (tmp / TRAINER_STATE_FILE).write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
    except (OSError, RuntimeError) as error:
        raise _write_failed(tmp, output_dir, error) from error
    barrier()

    if rank == 0:
        try:  # re-saving a step after a resume replaces the old folder
            publish_folder(tmp, final)
        except OSError as error:
            raise _write_failed(tmp, output_dir, error) from error
        write_text(output_dir / LATEST_FILE, final.name + "\n")
        if keep_last is not None:
            for old in list_checkpoints(output_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint folder from a checkpoint folder or an output folder (-> its ``latest``).

    Falls back to the newest complete ``ckpt-N`` folder when ``latest`` is missing (a crash between the
    rename and the pointer update). Raises :class:`CheckpointError` naming the path otherwise; for an output
    folder that holds no complete checkpoint (only ``ckpt-N.tmp``, or a run stopped before its first
    save) the error says so and offers ``--train_args.overwrite=true``.
    """
    path = Path(path)
    if (path / TRAINER_STATE_FILE).is_file():
        if path.name.endswith(".tmp"):
            raise CheckpointError(
                f"{path}: an incomplete checkpoint (a save was interrupted); use its parent"
            )
        return path
    if not path.is_dir():
        raise CheckpointError(f"train_args.checkpoint={path}: no such folder")
    pointer = path / LATEST_FILE
    if pointer.is_file():
        target = path / pointer.read_text(encoding="utf-8").strip()
        if (target / TRAINER_STATE_FILE).is_file():
            return target
        warnings.warn(f"{pointer} points at {target}, which is not a complete checkpoint", stacklevel=2)
    found = [p for p in list_checkpoints(path) if (p / TRAINER_STATE_FILE).is_file()]
    if found:
        return found[-1]
    partial = sorted(p.name for p in path.glob(f"{CHECKPOINT_PREFIX}*.tmp"))
    if partial or (path / CONFIG_FILE).is_file():  # an output folder whose run saved no checkpoint
        held = (
            f"only an interrupted save ({', '.join(partial)})"
            if partial
            else "a run stopped before its first checkpoint"
        )
        raise CheckpointError(
            f"train_args.checkpoint={path}: no complete checkpoint to resume ({path} holds {held}); start "
            "the run afresh in it with --train_args.overwrite=true (and no --train_args.checkpoint), or choose "
            "another output_dir"
        )
    raise CheckpointError(
        f"train_args.checkpoint={path}: neither a checkpoint (no {TRAINER_STATE_FILE}) nor an output folder "
        f"with a '{LATEST_FILE}' pointer or {CHECKPOINT_PREFIX}N folders"
    )


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` read: the folder, its trainer state, states and this rank's own state
    (``{"rng": ..., **rank_state}``, None when the checkpoint has none for this rank)."""

    path: Path
    trainer_state: dict[str, Any]
    training_state: dict[str, Any] | None
    rank_state: dict[str, Any] | None
    config_yaml: str


def load_checkpoint(path: str | os.PathLike[str], *, rank: int = 0) -> LoadedCheckpoint:
    """Read a checkpoint (``path`` as in :func:`resolve_checkpoint`) onto the CPU.

    Rank states are per rank; a rank without one (the world size changed) gets ``rank_state=None`` and a
    warning: the run resumes, but not bit-exactly.
    """
    folder = resolve_checkpoint(path)
    try:
        trainer_state = json.loads((folder / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{folder / TRAINER_STATE_FILE}: not valid JSON ({error}); the checkpoint is damaged"
        ) from None
    state_file = folder / TRAINING_STATE_FILE
    # Our own files: optimizer states hold python scalars and lists, so the full unpickler is needed.
    training_state = (
        torch.load(state_file, map_location="cpu", weights_only=False) if state_file.is_file() else None
    )
    rank_file = folder / _rank_file(rank)
    rank_state = None
    if rank_file.is_file():
        rank_state = torch.load(rank_file, map_location="cpu", weights_only=False)
    else:
        warnings.warn(
            f"{folder}: no state for rank {rank} (saved with world size "
            f"{trainer_state.get('world_size')}); resuming without restoring it",
            stacklevel=2,
        )
    return LoadedCheckpoint(
        path=folder,
        trainer_state=trainer_state,
        training_state=training_state,
        rank_state=rank_state,
        config_yaml=(folder / CONFIG_FILE).read_text(encoding="utf-8"),
    )
