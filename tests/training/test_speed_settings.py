"""Speed settings of the trainer (AdamW kernel, threads, the per-step finiteness check) change how fast a
step runs, never what it computes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_run import TINY_RUN_OVERRIDES
from safetensors.torch import load_file
from torch import nn

from lorentz_rag.data.bundled import pair_paths
from lorentz_rag.training.config import load_config
from lorentz_rag.training.logging import read_metrics
from lorentz_rag.training.optim import build_optimizer
from lorentz_rag.training.run import all_finite
from lorentz_rag.training.trainer import train

REPO = Path(__file__).resolve().parents[2]
PYTHON_PAIRS = next(p for p in pair_paths() if "python_docs" in p.name)


def _trained_weights(kernel: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    optimizer = build_optimizer(model, learning_rate=1e-2, weight_decay=0.1, kernel=kernel)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        tokens = torch.randint(0, 50, (4, 6), generator=generator)
        model(tokens).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_foreach_adamw_computes_the_for_loop_numbers_and_fused_agrees_to_rounding():
    loop, foreach, fused = (_trained_weights(k) for k in ("for_loop", "foreach", "fused"))
    for name, value in loop.items():
        assert torch.equal(foreach[name], value), name  # bit for bit
        torch.testing.assert_close(fused[name], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(loop["2.weight"], _initial_weight())  # the steps did move the weights


def _initial_weight() -> torch.Tensor:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(50, 8), nn.LayerNorm(8), nn.Linear(8, 3))[2].weight.detach()


def test_an_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="foreach, for_loop or fused"):
        build_optimizer(nn.Linear(2, 2), learning_rate=1e-3, weight_decay=0.0, kernel="apex")


def test_all_finite_is_exact():
    tensors = [torch.randn(300, 4), torch.randn(7), torch.zeros(1, dtype=torch.float64)]
    assert all_finite(iter(tensors))
    assert all_finite(iter([]))
    for bad in (float("nan"), float("inf"), -float("inf")):
        tensors[0][17, 2] = bad
        assert not all_finite(iter(tensors)), bad
    tensors[0][17, 2] = 0.0
    tensors[0][:4] = 3e38  # every value finite, their sum is not: still finite
    assert all_finite(iter(tensors))
    tensors[1][3] = float("nan")
    assert not all_finite(iter(tensors))


def test_num_threads_sets_the_processes_torch_threads(tmp_path):
    before = torch.get_num_threads()
    overrides = [flag.removeprefix("--") for flag in TINY_RUN_OVERRIDES] + [
        f"train_args.output_dir={tmp_path / 'run'}",
        f"data_args.data_path={PYTHON_PAIRS}",
        "train_args.max_steps=2",
        "train_args.num_threads=1",
        "train_args.optimizer_kernel=fused",
    ]
    config = load_config(REPO / "configs/train/cpu_tiny_contrastive.yaml", overrides, dotenv_dir=None)
    try:
        torch.set_num_threads(2)
        train(config)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]


@pytest.mark.slow
def test_ddp_settings_and_foreach_train_the_same_weights_as_plain_ddp_and_the_for_loop(tmp_path):
    """2 processes, 2 micro-batches per step: the trainer's DDP (buckets as gradient views, no buffer
    broadcast) with foreach AdamW ends with the same bits as DDP's defaults with the for-loop AdamW."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    weights = {}
    for name, entry, kernel in (
        ("plain", "tests/training/_plain_ddp_train.py", "for_loop"),
        ("trainer", "train.py", "foreach"),
    ):
        out = tmp_path / name
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", entry,
            "--config=configs/train/cpu_tiny_contrastive.yaml", f"--train_args.output_dir={out}",
            f"--data_args.data_path={PYTHON_PAIRS}", "--train_args.max_steps=3",
            "--train_args.gradient_accumulation_steps=2", f"--train_args.optimizer_kernel={kernel}",
            *TINY_RUN_OVERRIDES,
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-4000:]
        weights[name] = load_file(out / "final" / "model.safetensors")
    assert weights["plain"].keys() == weights["trainer"].keys()
    for key, value in weights["plain"].items():
        assert torch.equal(weights["trainer"][key], value), key


def test_train_max_seq_length_cuts_the_batches_and_the_saved_model_keeps_its_own(tmp_path):
    """train_args.max_seq_length=8 under model_args.max_seq_length=32 trains the very bits of a run with
    model_args.max_seq_length=8 (checkpoints every 2 steps, so the probe ran in between), and the saved model
    reads 32 tokens."""
    import lorentz_rag

    def run(name: str, *extra: str) -> Path:
        overrides = [flag.removeprefix("--") for flag in TINY_RUN_OVERRIDES] + [
            f"train_args.output_dir={tmp_path / name}",
            f"data_args.data_path={PYTHON_PAIRS}",
            "train_args.max_steps=4",
            *extra,
        ]
        config = load_config(REPO / "configs/train/cpu_tiny_contrastive.yaml", overrides, dotenv_dir=None)
        return train(config).final_model_dir

    short = run("short", "model_args.max_seq_length=8")
    cut = run("cut", "model_args.max_seq_length=32", "train_args.max_seq_length=8")
    a, b = load_file(short / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert lorentz_rag.load_model(cut).settings.max_seq_length == 32
    assert lorentz_rag.load_model(short).settings.max_seq_length == 8
    saved = (cut / "training_config.yaml").read_text()
    assert "max_seq_length: 32" in saved and "max_seq_length: 8" in saved  # model_args, train_args
