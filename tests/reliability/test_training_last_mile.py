"""The last mile of training: a bare override, a diverged last step, a full disk during a checkpoint or
the final save, Ctrl-C, a folder with no complete checkpoint, a malformed DeepSpeed JSON, an edited
curvature and the loss a finished run reports on resume. Each reproduces the fault and checks on disk."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorentz_rag.data.readers import RowDataset
from lorentz_rag.folder_lock import RUN_LOCK_NAME, exclusive_lock
from lorentz_rag.models import build_model, load_model
from lorentz_rag.models.factory import ModelFolderError
from lorentz_rag.training import checkpoint as ckpt
from lorentz_rag.training import run_output, trainer
from lorentz_rag.training.config import ConfigError, parse_command_line
from lorentz_rag.training.losses import InfoNCELoss
from lorentz_rag.training.objective import TrainStep
from lorentz_rag.training.probe import FiniteProbe
from lorentz_rag.training.trainer import TrainingDivergedError, train

from .conftest import REPO, TINY_FH, edit_config, run_main
from .test_training_failures import TINY, _all_finite, _config

CONFIG = f"--config={REPO / 'configs/train/cpu_tiny_mlm.yaml'}"


def _argv(out: Path, **overrides) -> list[str]:
    values = {**TINY, "train_args.output_dir": str(out), **overrides}
    return [CONFIG, *(f"--{k}={v}" for k, v in values.items())]


def _lock_is_free(out: Path) -> bool:
    with exclusive_lock(out / RUN_LOCK_NAME, "test"):
        return True


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --- 1. an override with no value ----------------------------------------------------------------------


def test_an_override_without_a_value_is_refused_naming_the_key_unless_it_is_a_bool(tmp_path, capsys):
    out = tmp_path / "run"
    status, _, err = run_main(trainer.main, [*_argv(out), "--train_args.learning_rate"], capsys)
    assert status == 2
    line = _one_error_line(err)
    assert "--train_args.learning_rate has no value; write --train_args.learning_rate=VALUE (float)" in line
    assert not out.exists()  # refused before anything was created
    with pytest.raises(ConfigError, match=r"--train_args.max_steps has no value"):  # followed by a flag
        parse_command_line([CONFIG, "--train_args.max_steps", "--train_args.seed=1"], dotenv_dir=None)
    with pytest.raises(ConfigError, match=r"--config needs a value"):
        parse_command_line(["--config"], dotenv_dir=None)
    parsed = parse_command_line(
        [CONFIG, "--train_args.overwrite", "--train_args.symmetric_loss"], dotenv_dir=None
    )
    assert parsed.config.train_args.overwrite is True and parsed.config.train_args.symmetric_loss is True
    # an unknown bare key is still named with its closest valid key
    with pytest.raises(
        ConfigError, match=r"unknown .*train_args.overwrit.*did you mean 'train_args.overwrite'"
    ):
        parse_command_line([CONFIG, "--train_args.overwrit"], dotenv_dir=None)


# --- 2. a diverged step is never published ---------------------------------------------------------------


def test_a_diverged_last_step_writes_no_checkpoint_and_no_final_model(tmp_path, capsys):
    """Before: lr 1e6 for one step exited 0 and wrote final/ whose every embedding was NaN."""
    out = tmp_path / "run"
    argv = _argv(
        out,
        **{"train_args.learning_rate": 1e6, "train_args.max_steps": 1, "train_args.warmup_steps": 0},
    )
    status, _, err = run_main(trainer.main, argv, capsys)
    assert status == 2
    line = _one_error_line(err)
    assert line.startswith("error: training diverged at step 1: the model's output on 4 fixed training texts")
    assert "no checkpoint was written before it" in line
    assert sorted(p.name for p in out.iterdir()) == sorted([RUN_LOCK_NAME, "config.yaml", "metrics.jsonl"])
    assert _lock_is_free(out)


def test_the_checkpoint_called_last_good_was_probed_and_the_diverged_one_is_not_written(
    tmp_path, monkeypatch
):
    real_update = trainer._update

    def explode_at_step_2(run):  # the update of step 2 runs at lr 1e6, after ckpt-1 was written
        if run.step == 1:
            for group in run.optimizer.param_groups:
                group["lr"] = 1e6
        return real_update(run)

    monkeypatch.setattr(trainer, "_update", explode_at_step_2)
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"at step 2: the model's output on 4 fixed") as caught:
        train(_config(out))
    assert f"the last good checkpoint is {out / 'ckpt-1'}" in str(caught.value)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["ckpt-1"]
    assert not list(out.glob("*.tmp")) and not (out / "final").exists()
    assert (out / "latest").read_text().strip() == "ckpt-1" and _all_finite(out / "ckpt-1")


def test_the_probe_draws_no_random_numbers_and_catches_non_finite_outputs(tiny_model_dir):
    torch.manual_seed(0)
    model = build_model(TINY_FH)
    step_module = TrainStep(model, "contrastive", InfoNCELoss("geodesic"))
    rows = [{"query": f"question {i}", "document": f"answer number {i}"} for i in range(6)]
    probe = FiniteProbe.from_dataset(
        "contrastive", model, RowDataset(rows, "contrastive"), 32, torch.device("cpu")
    )
    assert probe.rows == 4 and probe.batch["query"]["input_ids"].shape[0] == 4
    step_module.train()
    rng = torch.get_rng_state()
    assert probe.check(step_module, torch.device("cpu")) is None
    assert torch.equal(rng, torch.get_rng_state()) and step_module.training  # no draw, mode restored
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "final_norm" in n).fill_(float("nan"))
    assert probe.check(step_module, torch.device("cpu")) == (
        "output",
        pytest.approx(float("nan"), nan_ok=True),
    )
    stream = FiniteProbe.from_dataset("contrastive", model, None, 32, torch.device("cpu"))
    assert stream.describe() == "4 fixed sentences (streamed data cannot be read twice)"


# --- 4. and 5. a full disk during a checkpoint or the final save -------------------------------------------


def _fill_disk_on(monkeypatch, name: str, error: BaseException) -> None:
    """``torch.save`` of file ``name`` writes part of it, then fails with ``error`` (as a full disk does)."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith(name):
            Path(f).write_bytes(b"\0" * 4096)  # the half-written file that kept filling the disk
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("errno_lost", [False, True], ids=["oserror", "torch-runtimeerror"])
def test_a_full_disk_during_a_checkpoint_removes_the_partial_folder_and_names_it(
    tmp_path, monkeypatch, capsys, errno_lost
):
    out = tmp_path / "run"
    if errno_lost:  # torch.save's own message, with the disk (as shutil sees it) full
        error: BaseException = RuntimeError("basic_ios::clear: iostream error")
        real_usage = shutil.disk_usage
        monkeypatch.setattr(
            shutil,
            "disk_usage",
            lambda p: real_usage(p)._replace(free=0) if str(out) in str(p) else real_usage(p),
        )
    else:
        error = OSError(
            errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "ckpt-2.tmp" / "training_state.pt")
        )

    def fill_at_step_2(step):
        if step == 1:
            _fill_disk_on(monkeypatch, "ckpt-2.tmp/training_state.pt", error)

    with pytest.raises(ckpt.CheckpointError) as caught:
        train(_config(out, **{"train_args.max_steps": 3}), after_step=fill_at_step_2)
    message = str(caught.value)
    assert message.startswith(f"could not write checkpoint {out / 'ckpt-2.tmp'}: ")
    assert "no space left on device" in message and "removed the partial folder" in message
    assert (
        f"the previous checkpoint {out / 'ckpt-1'} is intact (resume from it with --train_args.checkpoint={out})"
        in message
    )
    assert not list(out.glob("*.tmp")), "the half-written checkpoint is still on disk"
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["ckpt-1"] and not (out / "final").exists()
    assert (out / "latest").read_text().strip() == "ckpt-1" and _lock_is_free(out)


def test_a_full_disk_during_the_final_save_leaves_no_final_folder_and_the_run_resumes(
    tmp_path, monkeypatch, capsys
):
    """Before: an empty final/ was left behind. Now final.tmp is written, then renamed."""
    out = tmp_path / "run"
    real_write_config = run_output.write_config

    def full_disk(config, path):  # after the weights were written into final.tmp
        if Path(path).parent.name == "final.tmp":
            assert (Path(path).parent / "model.safetensors").is_file()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write_config(config, path)

    monkeypatch.setattr(run_output, "write_config", full_disk)
    status, _, err = run_main(trainer.main, _argv(out), capsys)
    assert status == 2
    line = _one_error_line(err)
    assert (
        f"could not write the final model to {out / 'final'}: " in line and "no space left on device" in line
    )
    assert (
        f"the checkpoint of step 2 is intact: free space and resume with --train_args.checkpoint={out}"
        in line
    )
    assert not (out / "final").exists() and not (out / "final.tmp").exists()
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["ckpt-1", "ckpt-2"]

    monkeypatch.setattr(run_output, "write_config", real_write_config)  # space freed: resume
    status, printed, err = run_main(trainer.main, _argv(out, **{"train_args.checkpoint": out}), capsys)
    assert status == 0, err
    recorded = json.loads((out / "ckpt-2" / ckpt.TRAINER_STATE_FILE).read_text())["loss"]
    assert f"(step 2, loss {recorded:.4f})" in printed  # 16: the recorded loss, not nan
    weights = load_file(out / "final" / "model.safetensors")
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    assert (out / "final" / "training_config.yaml").is_file() and not (out / "final.tmp").exists()


# --- 16. resuming a finished run ----------------------------------------------------------------------------


def test_resuming_a_finished_run_reports_the_recorded_loss_not_nan(tmp_path, capsys):
    out = tmp_path / "run"
    result = train(_config(out))
    assert json.loads((out / "ckpt-2" / ckpt.TRAINER_STATE_FILE).read_text())["loss"] == result.last_loss
    status, printed, err = run_main(trainer.main, _argv(out, **{"train_args.checkpoint": out}), capsys)
    assert status == 0, err
    assert f"final model: {out / 'final'} (step 2, loss {result.last_loss:.4f})" in printed
    # a checkpoint written before the loss was saved in it: the run's metrics.jsonl has it
    state_file = out / "ckpt-2" / ckpt.TRAINER_STATE_FILE
    state = json.loads(state_file.read_text())
    del state["loss"]
    state_file.write_text(json.dumps(state))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    status, printed, _ = run_main(trainer.main, _argv(out, **{"train_args.checkpoint": out}), capsys)
    assert status == 0 and f"(step 2, loss {logged['loss']:.4f})" in printed and "nan" not in printed


# --- 8. a folder with no complete checkpoint ------------------------------------------------------------------


class _Stop(Exception):
    pass


def _stop_at(step: int):
    def hook(current: int) -> None:
        if current == step:
            raise _Stop

    return hook


def test_a_folder_without_a_complete_checkpoint_is_neither_resumed_nor_reused_in_a_loop(tmp_path, capsys):
    """Before: resuming said 'no checkpoint', a fresh run said 'not empty, resume it', each pointing to the other."""
    stopped = tmp_path / "stopped"  # a run stopped before its first checkpoint (save_every 5)
    with pytest.raises(_Stop):
        train(
            _config(stopped, **{"train_args.save_every": 5, "train_args.max_steps": 6}),
            after_step=_stop_at(1),
        )
    partial = tmp_path / "partial"  # a folder holding only an interrupted save
    (partial / "ckpt-3.tmp").mkdir(parents=True)
    (partial / "ckpt-3.tmp" / "rank0.pt").write_bytes(b"\0" * 64)
    for out, held in (
        (stopped, "a run stopped before its first checkpoint"),
        (partial, "only an interrupted save (ckpt-3.tmp)"),
    ):
        status, _, err = run_main(trainer.main, _argv(out, **{"train_args.checkpoint": out}), capsys)
        line = _one_error_line(err)
        assert status == 2 and f"no complete checkpoint to resume ({out} holds {held})" in line
        assert "--train_args.overwrite=true" in line
        status, _, err = run_main(trainer.main, _argv(out), capsys)
        line = _one_error_line(err)
        assert status == 2 and "holds no complete checkpoint" in line and "cannot be resumed either" in line
        assert "--train_args.overwrite=true" in line and "Resume it" not in line
        assert _lock_is_free(out)
    status, _, err = run_main(trainer.main, _argv(partial, **{"train_args.overwrite": "true"}), capsys)
    assert status == 0, err
    assert not (partial / "ckpt-3.tmp").exists() and (partial / "final" / "model.safetensors").is_file()


# --- 9. a malformed DeepSpeed JSON -------------------------------------------------------------------------------


def test_a_malformed_deepspeed_config_names_the_file_and_line_and_leaves_the_folder_free(tmp_path, capsys):
    """Before: 'error: Expecting value: line 2 column 1' with no file name, after the output folder was locked."""
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2},\n  ,"bf16": {}}\n')
    out = tmp_path / "run"
    status, _, err = run_main(trainer.main, [*_argv(out), f"--deepspeed_config={ds}"], capsys)
    line = _one_error_line(err)
    assert status == 2 and line.startswith(f"error: --deepspeed_config={ds}:2: not valid JSON")
    assert not out.exists()
    with pytest.raises(ValueError, match=rf"--deepspeed_config={ds}:2: not valid JSON"):  # the Python API too
        train(_config(out), deepspeed_config=ds)
    assert not out.exists() or _lock_is_free(out)
    ds.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match=r"expected a JSON object of DeepSpeed settings"):
        parse_command_line([CONFIG, f"--deepspeed_config={ds}"], dotenv_dir=None)


# --- 11. an edited curvature ----------------------------------------------------------------------------------------


def test_a_curvature_edited_in_config_json_that_disagrees_with_the_weights_is_refused(
    tiny_model_dir, tmp_path
):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    learned = float(load_model(folder).curvature().detach())
    edit_config(folder, lambda config: config["lorentz_rag"].update(curvature=2.5))
    with pytest.raises(ModelFolderError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'config.json'}: lorentz_rag.curvature=2.5, but the weights in ")
    assert f"hold the learned curvature c={learned:.6g}" in message
    edit_config(folder, lambda config: config["lorentz_rag"].update(curvature=learned))
    assert float(load_model(folder).curvature().detach()) == pytest.approx(learned)


# --- 7. Ctrl-C during training --------------------------------------------------------------------------------------


def _train_until_then_interrupt(out: Path, ready: Path, *extra: str) -> subprocess.CompletedProcess:
    """``train.py`` in a subprocess, sent SIGINT once ``ready`` exists; returns what it printed."""
    cmd = [sys.executable, "train.py", *_argv(out, **{"train_args.max_steps": 500}), *extra]
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out_text, err_text = process.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, process.returncode, out_text, err_text)


@pytest.mark.slow
def test_ctrl_c_during_training_says_what_was_kept_and_how_to_resume(tmp_path):
    out = tmp_path / "run"
    result = _train_until_then_interrupt(
        out, out / "ckpt-2", "--train_args.save_every=2", "--train_args.keep_last=1"
    )
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    kept = ckpt.list_checkpoints(out)[-1]
    step = json.loads((kept / ckpt.TRAINER_STATE_FILE).read_text())["step"]
    assert line == (
        f"interrupted: training stopped; kept the last complete checkpoint {kept} (step {step}); resume with "
        f"--train_args.checkpoint={out}"
    )
    assert ckpt.load_checkpoint(out).path == kept and _all_finite(kept) and _lock_is_free(out)

    early = tmp_path / "early"  # before the first checkpoint
    result = _train_until_then_interrupt(early, early / "metrics.jsonl", "--train_args.save_every=400")
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"interrupted: training stopped before its first checkpoint: {early} holds nothing to resume; start "
        "again with --train_args.overwrite=true"
    )
    assert not ckpt.list_checkpoints(early) and _lock_is_free(early)
