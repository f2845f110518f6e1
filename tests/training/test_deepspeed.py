"""DeepSpeed: "auto" values filled from train_args, and a real ZeRO-2 run on CPU (gloo, torch AdamW)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _tiny_run import TINY_RUN_OVERRIDES

from lorentz_rag.data.bundled import pair_paths
from lorentz_rag.training.config import load_config
from lorentz_rag.training.logging import read_metrics
from lorentz_rag.training.trainer import fill_deepspeed_config

REPO = Path(__file__).resolve().parents[2]
DS_CONFIG = REPO / "configs" / "deepspeed" / "ds_config.json"


def _train_args(**overrides):
    cfg = load_config(
        REPO / "configs" / "train" / "cpu_tiny_contrastive.yaml",
        {"data_args.data_path": "x", **{f"train_args.{k}": v for k, v in overrides.items()}},
        dotenv_dir=None,
    )
    return cfg.train_args


def test_auto_values_come_from_train_args():
    shipped = json.loads(DS_CONFIG.read_text())
    assert shipped["zero_optimization"]["stage"] == 2
    filled = fill_deepspeed_config(
        shipped, _train_args(batch_size=8, gradient_accumulation_steps=3, dtype="bf16", max_grad_norm=0.5), 4
    )
    assert filled["train_micro_batch_size_per_gpu"] == 8
    assert filled["gradient_accumulation_steps"] == 3
    assert filled["train_batch_size"] == 8 * 3 * 4
    assert filled["gradient_clipping"] == 0.5
    assert filled["bf16"]["enabled"] is True and filled["fp16"]["enabled"] is False
    assert shipped["bf16"]["enabled"] == "auto"  # the input is not modified
    fp32 = fill_deepspeed_config(shipped, _train_args(dtype="fp32"), 1)
    assert fp32["bf16"]["enabled"] is False and fp32["fp16"]["enabled"] is False


def test_explicit_values_that_contradict_train_args_are_errors():
    with pytest.raises(ValueError, match=r"train_micro_batch_size_per_gpu=16 contradicts train_args"):
        fill_deepspeed_config({"train_micro_batch_size_per_gpu": 16}, _train_args(batch_size=8), 1)
    with pytest.raises(ValueError, match=r"bf16\.enabled=True contradicts train_args\.dtype"):
        fill_deepspeed_config({"bf16": {"enabled": True}}, _train_args(dtype="fp32"), 1)
    with pytest.raises(ValueError, match="remove 'optimizer'"):
        fill_deepspeed_config({"optimizer": {"type": "Adam"}}, _train_args(), 1)


@pytest.mark.slow
def test_zero2_run_on_cpu(tmp_path):
    out = tmp_path / "ds"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    pairs = next(p for p in pair_paths() if "python_docs" in p.name)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=1",
        "train.py",
        "--config=configs/train/cpu_tiny_contrastive.yaml",
        f"--deepspeed_config={DS_CONFIG}",
        f"--train_args.output_dir={out}",
        f"--data_args.data_path={pairs}",
        "--train_args.max_steps=3",
        *TINY_RUN_OVERRIDES,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in records)
    # The engine steps our scheduler once per optimizer step: warmup 5 -> step k uses k/6 of the peak.
    peak = 2.0e-3
    assert [r["lr"] for r in records] == pytest.approx([peak * 1 / 6, peak * 2 / 6, peak * 3 / 6])
    assert (out / "ckpt-2" / "deepspeed").is_dir()  # the engine's (ZeRO-partitioned) states
    from lorentz_rag.models.factory import load_model

    model = load_model(out / "final")
    assert model.embedding_dim == 33


def test_grad_cache_under_deepspeed_is_refused_before_any_work(tmp_path):
    from lorentz_rag.training.trainer import train

    config = load_config(
        REPO / "configs" / "train" / "cpu_tiny_contrastive.yaml",
        {
            "data_args.data_path": "x",
            "train_args.grad_cache_chunk": 4,
            "train_args.output_dir": str(tmp_path),
        },
        dotenv_dir=None,
    )
    with pytest.raises(ValueError, match="grad_cache_chunk is not supported under DeepSpeed"):
        train(config, deepspeed_config=str(DS_CONFIG))
    assert not any(tmp_path.iterdir())
