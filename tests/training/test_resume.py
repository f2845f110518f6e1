"""Checkpoints: atomic writes, the latest pointer, pruning, and exact resume after a real SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorentz_rag.data.bundled import mlm_text_path
from lorentz_rag.training import checkpoint as ckpt
from lorentz_rag.training.logging import read_metrics

REPO = Path(__file__).resolve().parents[2]


def _save(out: Path, step: int, value: float, **kwargs) -> Path:
    return ckpt.save_checkpoint(
        out,
        step,
        trainer_state={"step": step},
        training_state={"model": {"w": torch.full((2,), value)}},
        config_yaml="train_args: {}\n",
        **kwargs,
    )


def test_save_is_atomic_and_latest_points_at_the_newest(tmp_path):
    first = _save(tmp_path, 1, 1.0)
    assert first == tmp_path / "ckpt-1"
    assert (tmp_path / "latest").read_text().strip() == "ckpt-1"
    assert not list(tmp_path.glob("*.tmp"))
    _save(tmp_path, 2, 2.0)
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.path == tmp_path / "ckpt-2"
    assert loaded.trainer_state["step"] == 2
    assert torch.equal(loaded.training_state["model"]["w"], torch.full((2,), 2.0))
    assert loaded.config_yaml == "train_args: {}\n"
    assert set(loaded.rank_state) == {"rng"}


def test_a_crash_inside_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    _save(tmp_path, 1, 1.0)
    with pytest.raises(Exception, match=r"pickle|lambda"):
        # A lambda cannot be pickled: torch.save fails after the RNG file was already written.
        ckpt.save_checkpoint(
            tmp_path,
            2,
            trainer_state={"step": 2},
            training_state={"model": {"w": torch.zeros(2)}, "broken": lambda: None},
            config_yaml="",
        )
    assert (tmp_path / "ckpt-2.tmp").is_dir()  # the half-written folder is left behind ...
    assert (tmp_path / "latest").read_text().strip() == "ckpt-1"  # ... and never pointed at
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.path.name == "ckpt-1"
    assert torch.equal(loaded.training_state["model"]["w"], torch.full((2,), 1.0))
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        (tmp_path / "ckpt-2.tmp" / "trainer_state.json").write_text("{}")
        ckpt.resolve_checkpoint(tmp_path / "ckpt-2.tmp")
    _save(tmp_path, 3, 3.0)  # the next save removes the leftover
    assert not (tmp_path / "ckpt-2.tmp").exists()
    assert ckpt.load_checkpoint(tmp_path).trainer_state["step"] == 3


def test_missing_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    _save(tmp_path, 5, 5.0)
    _save(tmp_path, 10, 10.0)
    (tmp_path / "latest").unlink()  # e.g. killed between the rename and the pointer update
    assert ckpt.resolve_checkpoint(tmp_path) == tmp_path / "ckpt-10"


def test_keep_last_prunes_old_checkpoints(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, float(step), keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-3", "ckpt-4"]


def test_resolve_errors_name_the_path(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such folder"):
        ckpt.resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(ckpt.CheckpointError, match=str(tmp_path)):
        ckpt.resolve_checkpoint(tmp_path)


def test_rng_state_round_trip():
    state = ckpt.capture_rng_state()
    expected = (torch.rand(3), torch.randint(0, 10**6, (1,)).item())
    torch.manual_seed(123)
    ckpt.restore_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert torch.randint(0, 10**6, (1,)).item() == expected[1]


# --- a real interruption: SIGKILL after step k, resume, compare with an uninterrupted run -------------

TINY = [
    "--model_args.hidden_size=32",
    "--model_args.num_hidden_layers=1",
    "--model_args.num_attention_heads=2",
    "--model_args.intermediate_size=48",
    "--model_args.max_seq_length=32",
    "--train_args.batch_size=8",
    "--train_args.max_steps=7",
    "--train_args.warmup_steps=2",
    "--train_args.save_every=3",
    "--train_args.log_every=1",
    "--train_args.keep_last=5",
    "--data_args.max_rows=120",
]


def _train(out: Path, *extra: str, kill_after: int | None = None) -> subprocess.CompletedProcess:
    # The killed run goes through a wrapper that SIGKILLs the process after step `kill_after`.
    entry = ["train.py"] if kill_after is None else ["tests/training/_kill_after_step.py", str(kill_after)]
    cmd = [
        sys.executable,
        *entry,
        "--config=configs/train/cpu_tiny_mlm.yaml",
        f"--train_args.output_dir={out}",
        f"--data_args.data_path={mlm_text_path()}",
        *TINY,
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_exactly_the_same_weights(tmp_path):
    straight = _train(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = _train(tmp_path / "resumed", kill_after=5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "resumed" / "final").exists()
    assert (tmp_path / "resumed" / "latest").read_text().strip() == "ckpt-3"  # step 4-5 work is lost

    resumed = _train(tmp_path / "resumed", f"--train_args.checkpoint={tmp_path / 'resumed'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout

    a, b = _weights(tmp_path / "straight" / "final"), _weights(tmp_path / "resumed" / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The runs really trained (the final weights differ from the step-3 checkpoint's).
    at_3 = torch.load(tmp_path / "resumed" / "ckpt-3" / "training_state.pt", weights_only=False)["model"]
    head = next(k for k in a if k.endswith("embeddings.weight"))
    assert not torch.equal(at_3[f"model.{head}"], a[head])
    # One metrics record per step, with identical losses.
    la = [r["loss"] for r in read_metrics(tmp_path / "straight")]
    lb = [r["loss"] for r in read_metrics(tmp_path / "resumed")]
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == list(range(1, 8))
    assert la == lb
    saved = json.loads((tmp_path / "resumed" / "ckpt-6" / "trainer_state.json").read_text())
    assert saved["step"] == 6 and saved["data"]["samples_in_epoch"] == 6 * 8
