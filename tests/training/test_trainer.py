"""The trainer on real bundled text: MLM then contrastive from its weights, precision, curvature, optimizer."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_run import TINY_RUN_OVERRIDES
from safetensors.torch import load_file

from lorentz_rag.data.bundled import mlm_text_path, pair_paths
from lorentz_rag.models.factory import load_mlm_model, load_model
from lorentz_rag.training.config import load_config
from lorentz_rag.training.logging import read_metrics
from lorentz_rag.training.optim import build_optimizer, build_scheduler, lr_factor, parameter_groups
from lorentz_rag.training.trainer import build_training_model, train

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "train"
PYTHON_PAIRS = next(p for p in pair_paths() if "python_docs" in p.name)


# The shipped CPU configs at test size (a 2-core machine shared with other jobs): same data, objective
# and code path, a smaller trunk and fewer steps.
TEST_SIZE = {
    "model_args.hidden_size": 32,
    "model_args.num_hidden_layers": 1,
    "model_args.num_attention_heads": 2,
    "model_args.intermediate_size": 48,
    "model_args.max_seq_length": 32,
}


def _config(name: str, out: Path, **overrides):
    base = {"train_args.output_dir": str(out)}
    if "mlm" in name:
        base["data_args.data_path"] = str(mlm_text_path())
    else:
        base["data_args.data_path"] = str(PYTHON_PAIRS)
    return load_config(CONFIGS / name, {**base, **overrides}, dotenv_dir=None)


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm")
    config = _config(
        "cpu_tiny_mlm.yaml",
        out,
        **TEST_SIZE,
        **{
            "train_args.batch_size": 8,
            "train_args.max_steps": 30,
            "train_args.learning_rate": 1e-2,
            "train_args.warmup_steps": 3,
        },
    )
    result = train(config)
    return config, result


@pytest.mark.slow
def test_mlm_with_the_head_tied_to_the_embeddings_trains_and_saves_tied(tmp_path):
    """model_args.tie_mlm_head through the trainer: the step's loss is the model's fused loss, it falls,
    and the final folder loads with head.z and the embedding table one tensor."""
    overrides = {"train_args.batch_size": 8, "train_args.max_steps": 15, "train_args.learning_rate": 1e-2}
    config = _config(
        "cpu_tiny_mlm.yaml", tmp_path, **TEST_SIZE, **overrides, **{"model_args.tie_mlm_head": True}
    )
    result = train(config)
    losses = [r["loss"] for r in read_metrics(result.output_dir)]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.5, losses
    model = load_mlm_model(result.final_model_dir)
    assert model.config.tie_mlm_head and model.config.fused_mlm_loss
    assert model.head.z is model.model.embeddings.weight


@pytest.fixture(scope="module")
def contrastive_run(tmp_path_factory, mlm_run):
    _, mlm = mlm_run
    out = tmp_path_factory.mktemp("contrastive")
    config = _config(
        "cpu_tiny_contrastive.yaml",
        out,
        **{
            "model_args.init_from": str(mlm.final_model_dir),
            "model_args.max_seq_length": 32,
            "train_args.max_steps": 30,
            "train_args.learning_rate": 1e-2,
            "train_args.warmup_steps": 3,
        },
    )
    return config, train(config)


@pytest.mark.slow
def test_mlm_loss_falls_on_real_text(mlm_run):
    _, result = mlm_run
    records = read_metrics(result.output_dir)
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    first, last = records[0]["loss"], records[-1]["loss"]
    # Starts near ln(30522) = 10.3 (uniform over the vocabulary); token frequencies alone take it far lower.
    assert first > 9.0
    assert last < first - 1.0, [r["loss"] for r in records]
    for r in records:
        assert {"lr", "tokens_per_s", "curvature", "x0_mean", "x0_max"} <= r.keys()
        assert r["tokens_per_s"] > 0 and 1.0 <= r["x0_mean"] <= r["x0_max"]
        # Radius drift is visible per layer of the HyTE-FH trunk.
        assert r["radius/layer_0/x0_mean"] <= r["radius/layer_0/x0_max"]
        assert r["x0_mean"] == r["radius/final_norm/x0_mean"]
    # The final folder is an MLM model that loads strictly; the effective config is saved with it.
    model = load_mlm_model(result.final_model_dir)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert (result.output_dir / "config.yaml").is_file()
    assert (result.final_model_dir / "training_config.yaml").is_file()


@pytest.mark.slow
def test_trainable_curvature_moves_and_stays_in_bounds(mlm_run):
    _, result = mlm_run
    curvatures = [r["curvature"] for r in read_metrics(result.output_dir)]
    assert all(0.1 <= c <= 10.0 for c in curvatures)
    assert abs(curvatures[-1] - 1.0) > 1e-3, curvatures  # initialised at 1.0, trained with lr 3e-3


@pytest.mark.slow
def test_contrastive_stage_starts_from_the_mlm_weights(mlm_run, contrastive_run):
    _, mlm = mlm_run
    config, _ = contrastive_run
    # The model exactly as the trainer builds it at step 0.
    model = build_training_model(config)
    trunk = load_mlm_model(mlm.final_model_dir).model.state_dict()
    start = model.model.state_dict()
    assert trunk.keys() == start.keys()
    for name, tensor in trunk.items():
        assert torch.equal(tensor, start[name]), name
    # ... and not by accident: a fresh model differs.
    fresh = build_training_model(
        config.model_copy(update={"model_args": config.model_args.model_copy(update={"init_from": None})})
    )
    name = next(k for k in trunk if k.endswith("embeddings.weight"))
    assert not torch.equal(fresh.model.state_dict()[name], trunk[name])


@pytest.mark.slow
def test_contrastive_loss_falls_and_the_model_saves_with_its_similarity(contrastive_run):
    config, result = contrastive_run
    losses = [r["loss"] for r in read_metrics(result.output_dir)]  # means over windows of 5 steps
    assert losses[0] > 2.3  # ~ln(16) = 2.77 for 16 in-batch candidates at the start
    assert sum(losses[-2:]) / 2 < 0.85 * losses[0], losses
    model = load_model(result.final_model_dir)
    assert model.settings.similarity == config.train_args.distance == "geodesic"
    card = (result.final_model_dir / "README.md").read_text()  # the card reports this run
    assert f"| Training steps | {result.steps} |" in card and "| Training data |" in card
    records = read_metrics(result.output_dir)
    assert all("logit_scale" in r and 1.0 <= r["logit_scale"] <= 100.0 for r in records)


@pytest.mark.slow
def test_init_from_a_mismatched_model_fails_loudly(mlm_run, tmp_path):
    _, mlm = mlm_run
    config = _config(
        "cpu_tiny_contrastive.yaml",
        tmp_path,
        **{
            "model_args.init_from": str(mlm.final_model_dir),
            "model_args.hidden_size": 48,
            "model_args.num_attention_heads": 2,
        },
    )
    with pytest.raises(ValueError, match="hidden_size"):
        train(config)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_runs_finish_with_finite_loss(dtype, tmp_path):
    config = _config(
        "cpu_tiny_mlm.yaml",
        tmp_path,
        **{
            "train_args.dtype": dtype,
            "train_args.max_steps": 3,
            "train_args.log_every": 1,
            "train_args.batch_size": 4,
            **TEST_SIZE,
            "data_args.max_rows": 64,
        },
    )
    result = train(config)
    records = read_metrics(result.output_dir)
    assert len(records) == 3
    assert all(isinstance(r["loss"], float) and math.isfinite(r["loss"]) for r in records)
    if dtype == "fp16":
        assert all(r["grad_scale"] > 0 for r in records)  # the GradScaler is in use
    # The saved weights are float32 (autocast never changes parameter dtype) and finite.
    weights = load_file(result.final_model_dir / "model.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())


# --- optimizer and schedule ---------------------------------------------------------------------------


def test_no_weight_decay_on_norms_biases_curvature_and_logit_scale():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.log_c = torch.nn.Parameter(torch.tensor(0.0))
            self.log_logit_scale = torch.nn.Parameter(torch.tensor(3.0))

    model = Tiny()
    groups = parameter_groups(model.named_parameters(), learning_rate=1e-3, weight_decay=0.1)
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert by_id[id(model.linear.weight)] == 0.1
    for p in (model.linear.bias, model.norm.weight, model.norm.bias, model.log_c, model.log_logit_scale):
        assert by_id[id(p)] == 0.0


@pytest.mark.slow
def test_embedding_model_groups_are_used_with_extra_modules(mlm_run):
    _, result = mlm_run
    contrastive = load_config(
        CONFIGS / "cpu_tiny_contrastive.yaml",
        {"model_args.init_from": str(result.final_model_dir), "data_args.data_path": str(PYTHON_PAIRS)},
        dotenv_dir=None,
    )
    model = build_training_model(contrastive)
    scale = torch.nn.Module()
    scale.log_logit_scale = torch.nn.Parameter(torch.tensor(3.0))
    opt = build_optimizer(model, learning_rate=1e-3, weight_decay=0.1, extra_modules={"loss": scale})
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(scale.log_logit_scale)] == 0.0
    assert decay[id(model.model.curvature.log_c)] == 0.0
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad) + 1
    assert len(decay) == n_trainable


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedules_are_honoured(schedule):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p], "lr": 1.0}])
    sched = build_scheduler(opt, warmup_steps=4, total_steps=14, schedule_type=schedule)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # warmup (step+1)/(warmup+1)
    assert lrs[4] == pytest.approx(1.0)
    expected_mid = {"cosine": 0.5, "linear": 0.5, "constant": 1.0}[schedule]
    assert lrs[9] == pytest.approx(expected_mid)  # half-way through the decay
    assert lr_factor(
        14, warmup_steps=4, total_steps=14, schedule_type=schedule, min_ratio=0.1
    ) == pytest.approx({"cosine": 0.1, "linear": 0.1, "constant": 1.0}[schedule])


# --- launchers --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_end_to_end(tmp_path):
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--standalone",
        "train.py",
        "--config=configs/train/cpu_tiny_contrastive.yaml",
        f"--train_args.output_dir={out}",
        f"--data_args.data_path={PYTHON_PAIRS}",
        "--train_args.max_steps=4",
        *TINY_RUN_OVERRIDES,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in records)
    # Both ranks wrote their own state into each checkpoint; only rank 0 wrote the model.
    assert {p.name for p in (out / "ckpt-2").glob("rank*.pt")} == {"rank0.pt", "rank1.pt"}
    model = load_model(out / "final")
    assert model.embedding_dim == 33


@pytest.mark.slow
def test_grad_cache_trains_like_the_plain_loss(tmp_path, monkeypatch):
    """Chunked (GradCache) and plain contrastive steps give the same weights (float32 round-off apart)."""
    import lorentz_rag.training.grad_cache as grad_cache

    calls = []
    original = grad_cache.grad_cache_backward

    def counting(*args, **kwargs):
        calls.append(kwargs["chunk_size"])
        return original(*args, **kwargs)

    monkeypatch.setattr(grad_cache, "grad_cache_backward", counting)
    finals = {}
    for name, chunk in (("plain", None), ("chunked", 3)):
        config = _config(
            "cpu_tiny_contrastive.yaml",
            tmp_path / name,
            **TEST_SIZE,
            **{
                "model_args.init_from": None,
                "train_args.batch_size": 8,
                "train_args.max_steps": 2,
                "train_args.symmetric_loss": True,
                "train_args.grad_cache_chunk": chunk,
                "data_args.max_rows": 32,
            },
        )
        finals[name] = load_file(train(config).final_model_dir / "model.safetensors")
    assert calls == [3, 3]  # the chunked run really went through GradCache, once per step
    moved = 0
    torch.manual_seed(config.train_args.seed)  # the trainer seeds like this before building the model
    start = build_training_model(config)
    for key, plain in finals["plain"].items():
        torch.testing.assert_close(finals["chunked"][key], plain, rtol=1e-4, atol=1e-5)
        moved += not torch.equal(plain, start.state_dict()[key])
    assert moved > 0  # the steps changed the weights


@pytest.mark.slow
def test_metrics_file_and_offline_wandb(tmp_path, monkeypatch):
    from lorentz_rag.training.logging import MetricsLogger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no key anywhere -> offline
    logger = MetricsLogger(tmp_path, total_steps=2, wandb_project="lorentz_rag-test", config={"a": 1})
    logger.log(1, {"loss": 2.5, "lr": 1e-3})
    logger.log(2, {"loss": float("nan"), "lr": 1e-3})
    logger.close()
    assert read_metrics(tmp_path) == [
        {"step": 1, "loss": 2.5, "lr": 1e-3},
        {"step": 2, "loss": "nan", "lr": 1e-3},  # JSON has no NaN: kept visible as a string
    ]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    # A resumed run drops the records after its checkpoint's step.
    MetricsLogger(tmp_path, total_steps=2, start_step=1).close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]


@pytest.mark.slow
def test_hybrid_model_trains_with_a_smaller_base_learning_rate(tmp_path):
    """HyTE-H on the packaged MiniLM: the base gets lr * base_lr_multiplier, and two steps run end to end."""
    config = load_config(
        CONFIGS / "contrastive_pretrain_hybrid.yaml",
        {
            "model_args.model_name": "sentence-transformers/all-MiniLM-L6-v2",
            "model_args.max_seq_length": 32,
            "model_args.base_lr_multiplier": 0.1,
            "train_args.dtype": "fp32",
            "train_args.batch_size": 4,
            "train_args.max_steps": 2,
            "train_args.warmup_steps": 0,
            "train_args.schedule_type": "constant",
            "train_args.log_every": 1,
            "train_args.grad_cache_chunk": None,
            "train_args.num_workers": 0,
            "train_args.output_dir": str(tmp_path),
            "data_args.data_path": str(PYTHON_PAIRS),
            "data_args.data_format": "auto",
            "data_args.max_rows": 16,
        },
        dotenv_dir=None,
    )
    model = build_training_model(config)
    opt = build_optimizer(model, learning_rate=1e-4, weight_decay=0.01)
    base = {id(p) for p in model.base_parameters()}
    lrs = {(id(p) in base): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs == {True: pytest.approx(1e-5), False: pytest.approx(1e-4)}
    result = train(config)
    records = read_metrics(result.output_dir)
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)
    assert load_model(result.final_model_dir).settings.model_type == "hyte_h"
