"""benchmarks/gpu_check.py --tiny: every section of the GPU check end to end at tiny sizes,
so that the first GPU run is not the script's first run. Without CUDA and without --tiny it refuses."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ("twins", "mlm_zero2", "contrastive", "encode", "pairwise")


def _env() -> dict[str, str]:
    # The offline variables and cache folders come from tests/conftest.py (all inside pytest's temporary
    # space); TORCH_EXTENSIONS_DIR is shared with tests/training/test_deepspeed.py, so DeepSpeed compiles
    # its CPU shared-memory op once per session.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    return env


def _numbers(value, path="") -> list[tuple[str, float]]:
    """Every int/float leaf of a JSON value, with its path (booleans excluded)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [(path, float(value))]
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _numbers(v, f"{path}.{k}")]
    return [n for i, v in enumerate(value) for n in _numbers(v, f"{path}[{i}]")]


@pytest.mark.slow
def test_tiny_run_covers_every_section(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--set", "encode_texts=12", f"--out={tmp_path}"],
        cwd=tmp_path,  # the script finds the repository from its own path
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["profile"] == "tiny" and result["all_checks_passed"] is True
    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["device"] and env["precision"]
    assert list(result["sections"]) == list(SECTIONS)
    for name, section in result["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"))
        assert section["checks"] and all(section["checks"].values()), (name, section["checks"])
        bad = [(p, v) for p, v in _numbers(section) if not math.isfinite(v)]
        assert not bad, (name, bad)

    sizes = result["sizes"]
    twins = result["sections"]["twins"]
    assert twins["sizes"]["num_hidden_layers"] == 2 and twins["sizes"]["hidden_size"] == 64
    assert twins["tokens_per_s"]["hyte_fh"] > 0 and twins["time_ratio_hyte_fh_over_euclidean"] > 0
    for name, steps in (("mlm_zero2", sizes["mlm_steps"]), ("contrastive", sizes["contrastive_steps"])):
        run = result["sections"][name]
        assert run["steps_logged"] == list(range(1, steps + 1))
        assert run["checks"]["loss_finite_every_step"] and run["checks"]["loss_falls"]
        assert run["last_loss"] < run["first_loss"]
    assert result["sections"]["mlm_zero2"]["zero_stage"] == 2
    assert result["sections"]["contrastive"]["init"] == "the mlm_zero2 section's final model"
    encode = result["sections"]["encode"]
    assert sizes["encode_texts"] == 12 and encode["texts"] == 12  # --set reached the section
    assert encode["throughput_ratio_hyte_h_over_st"] > 0
    pairwise = result["sections"]["pairwise"]
    assert [row["radius"] for row in pairwise["rows"]] == sizes["radii"]
    for row in pairwise["rows"]:
        assert row["max_abs_err"]["float64_reference"] == 0.0
        # The float64 angular term keeps d(x, x) near 0; float32's cancellation leaves more there.
        assert row["diag_max"]["float32_in_float64_angular"] < row["diag_max"]["float32_in_float32_angular"]

    markdown = (tmp_path / "gpu_check.md").read_text()
    for title in (
        "HyTE-FH vs its Euclidean twin",
        "ZeRO-2",
        "geodesic InfoNCE",
        "sentence-transformers",
        "Pairwise",
    ):
        assert title in markdown


@pytest.fixture(scope="module")
def gpu_check():
    saved = list(sys.path)
    sys.path.insert(0, str(SCRIPT.parent))  # benchmarks/ is not a package
    try:
        import gpu_check as module
    finally:
        sys.path[:] = saved
    return module


def test_without_cuda_it_needs_tiny(gpu_check, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full check would run")
    assert gpu_check.main([f"--out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA device" in err and "--tiny" in err
    assert not any(tmp_path.iterdir())


def test_set_changes_one_size_and_names_a_misspelt_one(gpu_check):
    changed = gpu_check.with_settings(gpu_check.GPU, ["contrastive_seq=128", "radii=[1, 2.5]", "mlm_lr=1"])
    assert (changed.contrastive_seq, changed.radii, changed.mlm_lr) == (128, (1, 2.5), 1)
    assert changed.layers == 12 and gpu_check.GPU.contrastive_seq == 256  # the profile itself is unchanged
    with pytest.raises(ValueError, match="did you mean contrastive_seq"):
        gpu_check.with_settings(gpu_check.GPU, ["contrastive_sq=128"])
    with pytest.raises(ValueError, match="layers takes int values"):
        gpu_check.with_settings(gpu_check.GPU, ["layers=1.5"])
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--tiny", "--set", "batch=x y"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("after_mlm", [True, False])
def test_the_gpu_training_runs_are_valid_configurations(gpu_check, tmp_path, monkeypatch, after_mlm):
    # The GPU profile's train.py arguments pass the trainer's own validation here, before any GPU sees them.
    from lorentz_rag.training.config import parse_command_line

    monkeypatch.chdir(REPO)
    final = tmp_path / "mlm_zero2" / "final"
    if after_mlm:
        final.mkdir(parents=True)
        (final / "config.json").write_text("{}")
    mlm = parse_command_line(gpu_check.mlm_train_args(gpu_check.GPU, "cuda", "bf16", tmp_path / "m"))
    args, note = gpu_check.contrastive_train_args(gpu_check.GPU, "cuda", "bf16", tmp_path / "c", final)
    contrastive = parse_command_line(args)
    assert (
        mlm.deepspeed_config
        and json.loads(Path(mlm.deepspeed_config).read_text())["zero_optimization"]["stage"] == 2
    )
    m = mlm.config
    assert (m.train_args.task, m.train_args.dtype, m.train_args.device, m.train_args.max_steps) == (
        "mlm",
        "bf16",
        "cuda",
        20,
    )
    assert (m.model_args.num_hidden_layers, m.model_args.hidden_size, m.model_args.num_attention_heads) == (
        12,
        768,
        12,
    )
    assert (m.model_args.intermediate_size, m.model_args.max_seq_length) == (1152, 512)
    c = contrastive.config
    assert contrastive.deepspeed_config is None
    assert (c.train_args.task, c.train_args.distance, c.train_args.batch_size) == (
        "contrastive",
        "geodesic",
        512,
    )
    assert (c.train_args.max_steps, c.train_args.log_every, c.train_args.grad_cache_chunk) == (20, 1, 128)
    assert (c.model_args.init_from == str(final)) is after_mlm
    assert note.startswith("the mlm_zero2") is after_mlm
    if not after_mlm:
        assert c.model_args.num_hidden_layers == 12 and c.model_args.hidden_size == 768
