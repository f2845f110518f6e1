"""Training failures and the training cases of the one error boundary: divergence, resume with changed
settings, output folders that hold a run or are in use, and the config mistakes a run must refuse early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorentz_rag.data.bundled import mlm_text_path
from lorentz_rag.folder_lock import RUN_LOCK_NAME, FolderInUseError
from lorentz_rag.training import checkpoint as ckpt
from lorentz_rag.training import run_output
from lorentz_rag.training.config import ConfigError, load_config, parse_command_line
from lorentz_rag.training.logging import read_metrics
from lorentz_rag.training.trainer import TrainingDivergedError, train

from .conftest import REPO, hold_lock

TINY = {
    "model_args.hidden_size": 32,
    "model_args.num_hidden_layers": 1,
    "model_args.num_attention_heads": 2,
    "model_args.intermediate_size": 48,
    "model_args.max_seq_length": 32,
    "train_args.batch_size": 4,
    "train_args.max_steps": 2,
    "train_args.save_every": 1,
    "train_args.log_every": 1,
    "train_args.warmup_steps": 0,
    "train_args.schedule_type": "constant",
    "data_args.max_rows": 32,
    "data_args.data_path": str(mlm_text_path()),
}


def _config(out: Path, **overrides):
    values = {**TINY, "train_args.output_dir": str(out), **overrides}
    return load_config(REPO / "configs/train/cpu_tiny_mlm.yaml", values, dotenv_dir=None)


def _train_py(*argv: str) -> subprocess.CompletedProcess:
    tiny = [f"--{k}={v}" for k, v in TINY.items()]
    cmd = [sys.executable, "train.py", "--config=configs/train/cpu_tiny_mlm.yaml", *tiny, *argv]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def _all_finite(folder: Path) -> bool:
    state = torch.load(folder / ckpt.TRAINING_STATE_FILE, weights_only=False)["model"]
    return all(torch.isfinite(t).all() for t in state.values())


# --- 1. divergence ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_divergence_stops_the_run_before_anything_non_finite_is_saved(tmp_path):
    out = tmp_path / "run"
    result = _train_py(
        f"--train_args.output_dir={out}",
        "--train_args.learning_rate=1e6",
        "--train_args.max_steps=6",
        "--train_args.keep_last=1",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: training diverged at step "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (out / "final").exists()
    saved = ckpt.list_checkpoints(out)
    for folder in saved:  # whatever was saved holds finite weights, and `latest` points at one of them
        assert _all_finite(folder), folder
    if saved:
        assert (out / "latest").read_text().strip() == saved[-1].name
        assert f"the last good checkpoint is {saved[-1]}" in line
    else:
        assert "no checkpoint was written before it" in line


def test_a_non_finite_gradient_is_caught_before_the_optimizer_step(tmp_path, monkeypatch):
    """Poison one gradient: the run stops naming the step and the gradient norm, and the weights that a
    checkpoint would hold are the last finite ones (the update was never applied). ckpt-1 is not called good:
    the gradient of step 2 is computed from its weights, so a resume would meet it again."""
    original = torch.nn.utils.clip_grad_norm_
    calls = []

    def poisoned(parameters, *args, **kwargs):
        params = [p for p in parameters if p.grad is not None]
        calls.append(1)
        if len(calls) == 2:
            params[-1].grad.view(-1)[0] = float("nan")
        return original(params, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"at step 2: the gradient norm is nan") as caught:
        train(_config(out, **{"train_args.max_steps": 3}))
    assert f"{out / 'ckpt-1'} is not: its weights give that non-finite value again" in str(caught.value)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["ckpt-1"]
    assert (out / "latest").read_text().strip() == "ckpt-1" and not (out / "final").exists()
    assert _all_finite(out / "ckpt-1")


# --- 2. resume with changed settings ----------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    train(_config(out))
    return out


def test_resume_refuses_changed_settings_listing_each(finished_run):
    config = _config(
        finished_run,
        **{
            "train_args.checkpoint": str(finished_run),
            "train_args.batch_size": 8,
            "mlm_args.mlm_probability": 0.2,
        },
    )
    with pytest.raises(ConfigError) as caught:
        train(config)
    message = str(caught.value)
    assert f"train_args.checkpoint={finished_run / 'ckpt-2'} was written with other settings" in message
    assert "train_args.batch_size: 4 in the checkpoint, 8 now" in message
    assert "mlm_args.mlm_probability: 0.3 in the checkpoint, 0.2 now" in message


def test_resume_applies_a_new_learning_rate_explicitly_and_records_it(finished_run, tmp_path, capsys):
    out = tmp_path / "continued"
    config = _config(
        out,
        **{
            "train_args.checkpoint": str(finished_run),
            "train_args.learning_rate": 1e-4,
            "train_args.max_steps": 3,
        },
    )
    train(config)
    printed = capsys.readouterr().out
    assert "resume: applying the new schedule from step 2 on" in printed
    assert "train_args.learning_rate: 0.003 in the checkpoint, 0.0001 now" in printed
    step3 = next(r for r in read_metrics(out) if r["step"] == 3)
    assert step3["lr"] == pytest.approx(1e-4)  # constant schedule: the new peak, not the checkpoint's 3e-3
    record = json.loads((out / "resumes.jsonl").read_text())
    assert record["step"] == 2 and record["changed"]["train_args.learning_rate"] == [3e-3, 1e-4]


def test_resume_from_another_model_size_names_the_tensors(finished_run, tmp_path):
    config = _config(
        tmp_path / "other",
        **{
            "train_args.checkpoint": str(finished_run),
            "model_args.hidden_size": 64,
            "model_args.intermediate_size": 96,
        },
    )
    with pytest.raises(ckpt.CheckpointError) as caught:
        train(config)
    message = str(caught.value)
    assert "holds another model than this run builds" in message
    assert "model_args.hidden_size: 32 in the checkpoint, 64 now" in message
    assert "wrong shape: model.model.embeddings.tok_embeddings.weight" in message or "wrong shape" in message


# --- 3. and 4. output folders ------------------------------------------------------------------------


def test_a_new_run_refuses_a_folder_that_holds_a_run_unless_overwrite(finished_run, tmp_path):
    metrics = (finished_run / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"is not empty \(.*ckpt-1.*\); a new run would destroy it"):
        train(_config(finished_run))
    assert (finished_run / "metrics.jsonl").read_text() == metrics  # untouched

    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    (copy / "ckpt-7").mkdir()  # a stale checkpoint of the old run must not survive an overwrite
    train(_config(copy, **{"train_args.overwrite": True, "train_args.max_steps": 1}))
    assert [p.name for p in ckpt.list_checkpoints(copy)] == ["ckpt-1"]
    assert [r["step"] for r in read_metrics(copy)] == [1]


def test_a_second_run_on_the_same_folder_fails_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "shared"
    holder = hold_lock(out / RUN_LOCK_NAME)
    try:
        with pytest.raises(
            FolderInUseError, match=rf"output folder {out} is in use by another process \(pid {holder.pid}"
        ):
            train(_config(out))
        assert sorted(p.name for p in out.iterdir()) == [RUN_LOCK_NAME]  # nothing else was touched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train(_config(out, **{"train_args.max_steps": 1}))  # the kernel released the lock with the process
    assert (out / "final" / "model.safetensors").is_file()


# --- the config mistakes a run must refuse, naming file:line --------------------------------------


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_bytes(text.encode("latin-1") if "\xe9" in text else text.encode())
    return path


BASE = "train_args:\n  task: mlm\n  max_steps: 2\nmodel_args:\n  model_type: hyte_fh\ndata_args:\n  data_path: rows.jsonl\n"


def test_config_file_mistakes_name_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml:3: not UTF-8 text \(byte 0xe9"):
        load_config(_yaml(tmp_path, BASE.replace("max_steps: 2", "max_steps: 2 # caf\xe9")), dotenv_dir=None)
    duplicate = BASE.replace("  max_steps: 2\n", "  max_steps: 2\n  max_steps: 5\n")
    with pytest.raises(
        ConfigError, match=r"run\.yaml:4: duplicate key 'train_args.max_steps' \(first set on line 3\)"
    ):
        load_config(_yaml(tmp_path, duplicate), dotenv_dir=None)
    with pytest.raises(ConfigError, match=r"bad value inf for 'train_args.learning_rate' \(.*run\.yaml:4\)"):
        load_config(
            _yaml(tmp_path, BASE.replace("  max_steps: 2\n", "  max_steps: 2\n  learning_rate: .inf\n")),
            dotenv_dir=None,
        )
    # Kept: an unknown key names file:line and the closest valid key.
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'train_args.max_step' \(.*run\.yaml:3\); did you mean 'train_args.max_steps'",
    ):
        load_config(_yaml(tmp_path, BASE.replace("max_steps", "max_step")), dotenv_dir=None)


def test_a_run_refuses_missing_local_paths_before_building_anything(tmp_path):
    missing = tmp_path / "no-such-mlm-output"
    config = load_config(
        _yaml(tmp_path, BASE + "  \nmlm_args:\n  mlm_probability: 0.3\n"),
        {"model_args.init_from": str(missing)},
        dotenv_dir=None,
    )
    with pytest.raises(
        ConfigError, match=rf"model_args.init_from={missing} \(command line.*\): no such folder"
    ):
        train(config)
    config = _config(tmp_path / "o", **{"data_args.data_path": str(tmp_path / "rows.jsonl")})
    with pytest.raises(
        ConfigError, match=rf"data_args.data_path={tmp_path / 'rows.jsonl'} \(command line.*\): no such file"
    ):
        train(config)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match=r"--deepspeed_config=no/such/ds.json: file not found"):
        parse_command_line(
            ["--config=configs/train/cpu_tiny_mlm.yaml", "--deepspeed_config=no/such/ds.json"],
            dotenv_dir=None,
        )


def test_fewer_rows_than_one_batch_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"gives 3 rows: 0 full batches of train_args.batch_size=4"):
        train(_config(tmp_path / "o", **{"data_args.max_rows": 3}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_config_error(tmp_path):
    with pytest.raises(
        ConfigError, match=r"train_args.device=cuda, but this machine has no usable CUDA device"
    ):
        train(_config(tmp_path / "o", **{"train_args.device": "cuda"}))


# --- disk full, fsync ----------------------------------------------------------------------------------


def test_a_full_disk_during_a_checkpoint_names_the_path_and_keeps_the_previous(tmp_path, monkeypatch):
    def save(step):
        return ckpt.save_checkpoint(
            tmp_path, step, trainer_state={"step": step}, training_state={"w": torch.ones(2)}, config_yaml=""
        )

    save(1)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if str(f).endswith(ckpt.TRAINING_STATE_FILE):
            raise OSError(28, os.strerror(28), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ckpt.CheckpointError) as caught:
        save(2)
    assert str(caught.value) == (
        f"could not write checkpoint {tmp_path / 'ckpt-2.tmp'}: {tmp_path / 'ckpt-2.tmp' / 'training_state.pt'}: "
        f"no space left on device; removed the partial folder; the previous checkpoint {tmp_path / 'ckpt-1'} "
        f"is intact (resume from it with --train_args.checkpoint={tmp_path})"
    )
    assert not (tmp_path / "ckpt-2.tmp").exists()  # a half-written checkpoint would keep filling the disk
    assert (tmp_path / "latest").read_text().strip() == "ckpt-1"
    assert ckpt.load_checkpoint(tmp_path).path == tmp_path / "ckpt-1"


def test_a_full_disk_during_the_final_save_says_so_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    def full_disk(model, engine, final_dir, is_main):
        raise OSError(28, os.strerror(28), str(final_dir / "model.safetensors"))

    monkeypatch.setattr(run_output, "save_final", full_disk)
    out = tmp_path / "run"
    with pytest.raises(
        ckpt.CheckpointError, match="no space left on device; the checkpoint of step 2 is intact"
    ):
        train(_config(out))
    assert ckpt.load_checkpoint(out).trainer_state["step"] == 2


def test_checkpoint_files_are_fsynced_before_the_folder_rename(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))
    )
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b)))
    ckpt.save_checkpoint(
        tmp_path, 1, trainer_state={"step": 1}, training_state={"w": torch.ones(2)}, config_yaml=""
    )
    rename = events.index(("replace", str(tmp_path / "ckpt-1.tmp")))
    synced = {path for kind, path in events[:rename] if kind == "fsync"}
    for name in ("rank0.pt", "training_state.pt", "config.yaml", "trainer_state.json"):
        assert str(tmp_path / "ckpt-1.tmp" / name) in synced, name
