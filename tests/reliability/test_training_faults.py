"""Training and model faults that used to blame the wrong thing or leave something behind: a full disk while
safetensors writes the final model, a damaged curvature inside ``model.safetensors``, sequence lengths the
model cannot read, a checkpoint called good that a resume cannot continue, and a mistyped
``--judge_embeddings``. Each reproduces the fault and checks the one error line and what is on disk."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lorentz_rag import cli
from lorentz_rag.eval.rag import command as rag_command
from lorentz_rag.models import io as model_io
from lorentz_rag.models import load_model
from lorentz_rag.models.factory import (
    DamagedWeightsError,
    ModelFolderError,
    check_position_limit,
    position_limit,
)
from lorentz_rag.training import checkpoint as ckpt
from lorentz_rag.training import trainer
from lorentz_rag.training.config import ConfigError, parse_command_line
from lorentz_rag.training.trainer import TrainingDivergedError, train

from .conftest import REPO, TINY_FH, copy_with_weights, edit_config, run_main
from .test_rag_failures import _closed_port_url, _rag
from .test_training_failures import _config
from .test_training_last_mile import CONFIG, _argv, _lock_is_free, _one_error_line

pytestmark = pytest.mark.filterwarnings("ignore:FUNCTIONS is deprecated:DeprecationWarning")

# --- a full disk while the final model is written ------------------------------------------------------------


def _fail_final_weights(monkeypatch, error: BaseException) -> None:
    """safetensors' ``save_file`` into ``final.tmp`` writes part of its file, then raises ``error``."""
    real_save_file = model_io.save_file

    def save_file(tensors, filename, *args, **kwargs):
        if Path(filename).parent.name == "final.tmp":
            Path(filename).write_bytes(b"\0" * 4096)
            raise error
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(model_io, "save_file", save_file)


@pytest.mark.parametrize("with_path", [False, True], ids=["no-path", "temp-path"])
def test_a_full_disk_while_safetensors_writes_the_final_model_names_the_folder_and_how_to_resume(
    tmp_path, monkeypatch, capsys, with_path
):
    """Before: 'error: no space left on device: free space ...' named no path, said nothing of the
    checkpoint, and left final.tmp/ behind (safetensors' error is neither an OSError nor a RuntimeError)."""
    out = tmp_path / "run"
    where = f' at path "{out / "final.tmp" / ".tmpAbC12"}"' if with_path else ""
    _fail_final_weights(
        monkeypatch,
        SafetensorError(f"Error while serializing: I/O error: No space left on device (os error 28){where}"),
    )
    status, _, err = run_main(trainer.main, _argv(out), capsys)
    assert status == 2
    line = _one_error_line(err)
    assert line.startswith(f"error: could not write the final model to {out / 'final'}: ")
    assert "no space left on device" in line
    assert f"the partial {out / 'final.tmp'} was removed" in line
    assert f"free space and resume with --train_args.checkpoint={out}" in line
    assert f"it resumes from {out / 'ckpt-2'}" in line
    assert not (out / "final.tmp").exists() and not (out / "final").exists()
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["ckpt-1", "ckpt-2"] and _lock_is_free(out)

    monkeypatch.undo()  # space freed: the advice works
    status, printed, err = run_main(trainer.main, _argv(out, **{"train_args.checkpoint": out}), capsys)
    assert status == 0, err
    assert f"final model: {out / 'final'} (step 2," in printed
    assert load_file(out / "final" / "model.safetensors") and not (out / "final.tmp").exists()


def test_ctrl_c_during_the_final_save_leaves_no_partial_final_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _fail_final_weights(monkeypatch, KeyboardInterrupt())
    status, _, err = run_main(trainer.main, _argv(out), capsys)
    assert status == 130 and "Traceback" not in err
    assert err.strip().startswith("interrupted: training stopped; kept the last complete checkpoint")
    assert not (out / "final.tmp").exists() and not (out / "final").exists()


def test_the_message_of_a_safetensors_write_error_without_an_os_error_is_not_corruption(tmp_path):
    error = SafetensorError("Error while serializing: something else")
    reason = ckpt.write_error_reason(error, tmp_path)
    assert "corrupt" not in reason and "something else" in reason


# --- a damaged curvature in model.safetensors ----------------------------------------------------------------


@pytest.mark.parametrize("log_c", [math.nan, math.inf, -math.inf, 50.0, -50.0])
def test_a_damaged_curvature_in_the_weights_is_blamed_on_the_weights_not_on_config_json(
    log_c, tiny_model_dir, beir_dir, tmp_path, capsys
):
    """Before: 'config.json: lorentz_rag.curvature=1.0, but the weights ... hold c=nan; set it back to nan',
    and config.json then refused nan."""

    def damage(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model.curvature.log_c"] = torch.full_like(tensors["model.curvature.log_c"], log_c)

    folder = copy_with_weights(tiny_model_dir, tmp_path / "model", damage)
    config_before = (folder / "config.json").read_text()
    with pytest.raises(DamagedWeightsError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'model.safetensors'}: tensor model.curvature.log_c ")
    assert f"holds {float(log_c)!r}" in message and "the weights file is damaged" in message
    assert "config.json is not the cause" in message and "set it back" not in message
    assert "Restore model.safetensors from a copy" in message and "--train_args.checkpoint" in message
    status, _, err = run_main(
        cli.main, ["eval", "beir", "--model", str(folder), "--data", str(beir_dir)], capsys
    )
    assert status == 2 and _one_error_line(err) == f"error: {message}"
    assert (folder / "config.json").read_text() == config_before  # nothing rewritten


def test_an_edited_curvature_in_config_json_keeps_its_own_message(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    learned = float(load_model(folder).curvature().detach())
    edit_config(folder, lambda config: config["lorentz_rag"].update(curvature=2.5))
    with pytest.raises(ModelFolderError, match=rf"set it back to {learned:.6g} \(the curvature is changed"):
        load_model(folder)


def test_a_log_c_a_step_past_its_clamp_still_loads(tiny_model_dir, tmp_path):
    """An optimizer step can carry log c a little past its clamp (where it has no gradient); the model uses
    the bound, and config.json records it: that is a trained model, not damage."""
    past = math.log(10.0) + 0.05

    def nudge(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model.curvature.log_c"] = torch.full_like(tensors["model.curvature.log_c"], past)

    folder = copy_with_weights(tiny_model_dir, tmp_path / "model", nudge)
    edit_config(folder, lambda config: config["lorentz_rag"].update(curvature=10.0))
    assert float(load_model(folder).curvature().detach()) == pytest.approx(10.0)


# --- sequence lengths the model cannot read ---------------------------------------------------------------------


def test_a_training_length_above_the_models_is_refused_naming_both_keys(tmp_path, capsys):
    """Before: 128 for a model of 64 trained at 128 with no warning while the saved model read 64."""
    expected = (
        "train_args.max_seq_length=128 is above model_args.max_seq_length=64: it can only shorten training "
        "batches; raise model_args.max_seq_length instead"
    )
    with pytest.raises(ConfigError) as caught:
        parse_command_line([CONFIG, "--train_args.max_seq_length=128"], dotenv_dir=None)
    assert str(caught.value) == expected
    out = tmp_path / "run"
    status, _, err = run_main(
        trainer.main,
        [*_argv(out, **{"model_args.max_seq_length": 64}), "--train_args.max_seq_length=128"],
        capsys,
    )
    assert status == 2 and _one_error_line(err) == f"error: {expected}"
    assert not out.exists()  # refused before anything was created
    with pytest.raises(ConfigError, match=re.escape(expected)):  # a config built in Python, too
        config = _config(out, **{"model_args.max_seq_length": 64})
        config.train_args.max_seq_length = 128
        train(config)
    assert not out.exists()
    for shorter in (64, 16):  # equal or shorter is what the option is for
        parsed = parse_command_line([CONFIG, f"--train_args.max_seq_length={shorter}"], dotenv_dir=None)
        assert parsed.config.train_args.max_seq_length == shorter


def test_a_model_length_above_the_hyte_fh_position_limit_is_refused_before_the_run(tmp_path, capsys):
    """Before: 'error: sequence length 64 exceeds max_position_embeddings=32' at the first step, naming no
    key, with config.yaml and metrics.jsonl already written."""
    out = tmp_path / "run"
    argv = _argv(out, **{"model_args.max_seq_length": 64, "model_args.max_position_embeddings": 32})
    status, _, err = run_main(trainer.main, argv, capsys)
    assert status == 2
    assert _one_error_line(err) == (
        "error: model_args.max_seq_length=64 is above the 32 positions that model_args.max_position_embeddings "
        "reads (max_position_embeddings); set model_args.max_seq_length to 32 or less"
    )
    assert not out.exists()
    assert position_limit({**TINY_FH, "max_position_embeddings": 32}) == (
        32,
        "model_args.max_position_embeddings",
    )
    assert position_limit(TINY_FH) is None  # a trunk sized to max_seq_length: nothing limits it


def test_a_model_length_above_the_hyte_h_base_limit_is_refused_before_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        f"--config={REPO / 'configs/train/cpu_tiny_contrastive.yaml'}",
        "--model_args.model_type=hyte_h",
        "--model_args.init_from=null",
        "--model_args.pooling=null",
        "--model_args.max_seq_length=1024",
        f"--train_args.output_dir={out}",
    ]
    status, _, err = run_main(trainer.main, argv, capsys)
    assert status == 2
    line = _one_error_line(err)
    assert line.startswith(
        "error: model_args.max_seq_length=1024 is above the 512 positions that the base encoder of "
        "model_args.model_name=sentence-transformers/all-MiniLM-L6-v2 reads"
    )
    assert line.endswith("set model_args.max_seq_length to 512 or less")
    assert not out.exists()
    hyte_h = {"model_type": "hyte_h", "model_name": TINY_FH["model_name"], "max_seq_length": 512}
    check_position_limit(hyte_h)  # at the limit: accepted


# --- a checkpoint called good can be resumed -----------------------------------------------------------------------


def _checkpoint_is_finite(folder: Path) -> bool:
    state = torch.load(folder / ckpt.TRAINING_STATE_FILE, weights_only=False)
    tensors = list(state["model"].values())
    tensors += [v for s in state["optimizer"]["state"].values() for v in s.values() if torch.is_tensor(v)]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def test_a_huge_learning_rate_names_only_a_checkpoint_that_resumes(tmp_path):
    """Before: lr 10 with save_every 1 named ckpt-3 'the last good checkpoint'; its weights gave a NaN
    gradient on the next batch, so a resume at lr 1e-4 diverged again at once."""
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as caught:
        train(_config(out, **{"train_args.learning_rate": 10.0, "train_args.max_steps": 8}))
    message = str(caught.value)
    assert "learning_rate 10" in message
    named = re.search(
        r"the last good checkpoint is (\S+) \(resume with --train_args.checkpoint=(\S+) ", message
    )
    if named is None:
        assert (
            "start again with a lower --train_args.learning_rate and --train_args.overwrite=true" in message
        )
        return
    good = Path(named.group(1))
    assert good.parent == out and good.is_dir() and _checkpoint_is_finite(good)
    step = json.loads((good / ckpt.TRAINER_STATE_FILE).read_text())["step"]
    resumed = train(
        _config(
            out,
            **{
                "train_args.learning_rate": 1e-4,
                "train_args.max_steps": step + 2,
                "train_args.checkpoint": named.group(2),
            },
        )
    )
    assert resumed.steps == step + 2 and math.isfinite(resumed.last_loss)


def test_the_checkpoint_whose_weights_gave_a_non_finite_gradient_is_not_called_good(tmp_path, monkeypatch):
    """A loss or gradient norm at step k comes from the weights of step k-1: a resume from ckpt-(k-1) replays
    them on the same batch and meets the same value at any learning rate, so an earlier one is named (the
    folder itself, since `latest` points at the rejected one)."""
    original = torch.nn.utils.clip_grad_norm_
    calls = []

    def poisoned(parameters, *args, **kwargs):
        params = [p for p in parameters if p.grad is not None]
        calls.append(1)
        if len(calls) == 3:
            params[-1].grad.view(-1)[0] = float("nan")
        return original(params, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"at step 3: the gradient norm is nan") as caught:
        train(_config(out, **{"train_args.max_steps": 4}))
    message = str(caught.value)
    assert f"{out / 'ckpt-2'} is not: its weights give that non-finite value again on resume" in message
    assert (
        f"the last good checkpoint is {out / 'ckpt-1'} (resume with --train_args.checkpoint={out / 'ckpt-1'} "
        in message
    )

    early = tmp_path / "early"  # the first step after the first checkpoint: none is left
    calls.clear()
    with pytest.raises(TrainingDivergedError) as caught:
        train(_config(early, **{"train_args.max_steps": 4, "train_args.save_every": 2}))
    message = str(caught.value)
    assert f"{early / 'ckpt-2'} is not" in message and "no good checkpoint is left to resume" in message
    assert "start again with a lower --train_args.learning_rate and --train_args.overwrite=true" in message


def test_a_non_finite_optimizer_state_is_never_saved(tmp_path, monkeypatch):
    """An infinite second moment leaves the parameters finite (the update divides by it) but no resume
    recovers from it: the checkpoint is refused."""
    out = tmp_path / "run"
    runs = []
    real_save = trainer.save_checkpoint

    def remember_run(run):
        runs.append(run)
        return real_save(run)

    def poison(step: int) -> None:
        if step == 1:
            next(iter(runs[0].optimizer.state.values()))["exp_avg_sq"].fill_(float("inf"))

    monkeypatch.setattr(trainer, "save_checkpoint", remember_run)
    with pytest.raises(
        TrainingDivergedError, match=r"at step 2: the optimizer state \(before saving\) is nan"
    ):
        train(_config(out, **{"train_args.max_steps": 3}), after_step=poison)
    assert all(bool(torch.isfinite(p).all()) for p in runs[-1].step_module.parameters())
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["ckpt-1"] and _checkpoint_is_finite(
        out / "ckpt-1"
    )


# --- a mistyped --judge_embeddings -----------------------------------------------------------------------------


def _judged(tmp_path: Path, embeddings: str) -> list[str]:
    return _rag(
        tmp_path,
        *("--llm_base_url", _closed_port_url(), "--llm_model", "gen-model"),
        *("--judge_base_url", _closed_port_url(), "--judge_model", "judge-model"),
        *("--judge_embeddings", embeddings),
    )


@pytest.mark.parametrize("command", ["eval_ragas.py", "lorentz-rag eval rag"])
def test_a_judge_embeddings_path_that_does_not_exist_is_refused_before_the_run_folder(
    command, tmp_path, capsys
):
    """Before: a Hugging Face 'Repo id must use alphanumeric chars ...' error, after the run folder was made."""
    missing = str(tmp_path / "no-such-model")
    argv = _judged(tmp_path, missing)
    main = rag_command.main if command == "eval_ragas.py" else cli.main
    status, out, err = run_main(main, argv if main is rag_command.main else ["eval", "rag", *argv], capsys)
    assert status == 2 and out == ""
    assert _one_error_line(err) == (
        f"error: --judge_embeddings={missing}: no such folder; give an existing sentence-transformers model "
        "folder, a Hugging Face Hub model id (org/name), or leave the flag out for the packaged all-MiniLM-L6-v2"
    )
    assert not (tmp_path / "runs").exists()


def test_judge_embeddings_offline_hub_ids_and_files(tmp_path, capsys):
    # offline (the test environment), a Hub id that is not cached is refused naming the flag
    status, _, err = run_main(rag_command.main, _judged(tmp_path, "someone/not-cached-model"), capsys)
    assert status == 2
    assert _one_error_line(err).startswith(
        "error: --judge_embeddings=someone/not-cached-model: no such folder, and no Hub model "
        "'someone/not-cached-model' in the Hugging Face cache (HF_HUB_OFFLINE=1 forbids downloading it)"
    )
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"\0")
    status, _, err = run_main(rag_command.main, _judged(tmp_path, str(a_file)), capsys)
    assert status == 2 and "a file, not a model folder" in _one_error_line(err)
    assert not (tmp_path / "runs").exists()
    # an existing folder, or the packaged model's name offline, passes the check (the judge is then asked)
    for accepted in (str(tmp_path), "all-MiniLM-L6-v2"):
        status, _, err = run_main(rag_command.main, _judged(tmp_path, accepted), capsys)
        assert status == 2 and "judge_embeddings" not in err and "cannot reach the server" in err
    assert not (tmp_path / "runs").exists()
