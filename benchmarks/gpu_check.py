"""One-shot GPU check: the paper-size measurements a first CUDA machine should produce.

Sections (each in its own try-block with its own time budget; one failure is recorded and the rest run):

1. ``twins``: HyTE-FH (OEM pooling) vs its Euclidean twin (transformers' ModernBertModel, mean pooling) at
   the paper's size (configs/train/albert_mlm_modernbert.yaml: 12 layers x 768, 12 heads, intermediate
   1152), forward + backward of the embedding model under bf16 autocast at sequence 512: tokens/s, peak
   memory (``torch.cuda.max_memory_allocated``), time ratio. Builders shared with ``bench_models.py``.
2. ``mlm_zero2``: 20 masked-LM steps of the paper's stage-1 config under DeepSpeed ZeRO-2
   (configs/deepspeed/ds_config.json), 1 process launched by torchrun, through the real ``train.py``.
3. ``contrastive``: 20 contrastive steps of the stage-2 config (geodesic InfoNCE, batch 512, GradCache)
   under torchrun with 1 process, starting from section 2's model (from scratch if that failed).
   Sections 2 and 3 check that the loss is finite at every logged step (log_every=1) and falls (last
   logged < first logged), reading the trainer's ``metrics.jsonl``.
4. ``encode``: HyTE-H on the packaged all-MiniLM-L6-v2 vs sentence-transformers encoding the same FAQ texts
   with the same model on the same device (fp32 both): texts/s and ratio (``bench_models.py``'s code).
5. ``pairwise``: :func:`lorentz_rag.geometry.lorentz.pairwise_geodesic_distance` at n x n (d = 768) with its
   float64 angular term (the default) vs ``angular_dtype=torch.float32``: time of each and max abs error
   against a float64 reference computed on the same stored float32 points, off the diagonal and of
   d(x, x) on it, at several radii (c = 1).

The vocabulary is the packaged MiniLM tokenizer's (30,522 tokens; ModernBERT-base's 50,368 needs the hub,
which the GPU machine cannot reach); every other size is ModernBERT-base's.

``--tiny`` runs every section end to end at tiny sizes (2 layers x 64, seq 32, batch 8, a few steps, a
short encode, pairwise at 256) on CPU (or on the GPU if there is one): the same code path, only sizes and
device differ. bf16 autocast becomes CPU bf16 (fp32 where this CPU cannot run bf16; the JSON says which).
Without CUDA and without ``--tiny`` the script exits with a message (status 2).

Writes ``gpu_check.json`` and ``gpu_check.md`` (default ``benchmarks/results/``; ``--out DIR``); exit
status 1 when any section failed or any check did not pass. ``--set FIELD=VALUE`` changes one size of the
profile (e.g. ``--set contrastive_seq=512``), ``--sections`` runs a subset. Run:

    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py                 # one CUDA GPU, under 8 minutes
    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check_tiny
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

# The GPU machine reaches no network: everything used is packaged or in data/. bench_models (imported
# before anything imports transformers) sets HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE and TOKENIZERS_PARALLELISM.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package

import torch
from bench_models import _interleaved, _params, _sync, bench_hyte_h_encode, build_twins
from geometry_precision import DELTA as NEAR
from geometry_precision import make_pairs

import lorentz_rag
from lorentz_rag.errors import closest_key
from lorentz_rag.geometry import lorentz as L
from lorentz_rag.models import packaged_minilm_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DS_CONFIG = ROOT / "configs" / "deepspeed" / "ds_config.json"
MLM_CONFIG = ROOT / "configs" / "train" / "albert_mlm_modernbert.yaml"
CONTRASTIVE_CONFIG = ROOT / "configs" / "train" / "contrastive_pretrain_albert.yaml"
MLM_DATA = ROOT / "data" / "train" / "mlm_python_docs.jsonl.gz"
PAIRS_DATA = ROOT / "data" / "train" / "pairs_python_docs.jsonl.gz"
TORCHRUN_1 = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1")
SECTIONS = ("twins", "mlm_zero2", "contrastive", "encode", "pairwise")


@dataclass(frozen=True)
class Profile:
    """Every size of a run; ``gpu`` and ``tiny`` differ only here (and in the device)."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int
    seq: int  # twins section
    batch: int
    reps: int
    warmup: int
    mlm_steps: int
    mlm_batch: int
    mlm_seq: int
    mlm_lr: float
    contrastive_steps: int
    contrastive_batch: int
    contrastive_seq: int
    contrastive_lr: float
    grad_cache_chunk: int
    warmup_steps: int
    max_rows: int | None  # of the MLM data
    contrastive_rows: int | None
    encode_texts: int
    encode_batch: int
    encode_reps: int
    pair_n: int
    pair_d: int
    radii: tuple[float, ...]
    pair_reps: int
    budgets_s: dict[str, int]
    total_budget_s: float

    def sizes(self) -> dict[str, int]:
        return {
            "num_hidden_layers": self.layers,
            "hidden_size": self.hidden,
            "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate,
        }


# field: (gpu, tiny). The two profiles side by side; nothing else differs between a GPU and a --tiny run.
_PROFILES: dict[str, tuple[Any, Any]] = {
    "layers": (12, 2),  # the GPU sizes are albert_mlm_modernbert.yaml's (ModernBERT-base's, 12 layers)
    "hidden": (768, 64),
    "heads": (12, 4),
    "intermediate": (1152, 96),
    "seq": (512, 32),
    "batch": (16, 8),
    "reps": (5, 2),
    "warmup": (2, 1),
    "mlm_steps": (20, 6),
    "mlm_batch": (32, 8),
    "mlm_seq": (512, 32),
    "mlm_lr": (5.0e-4, 3.0e-3),  # the stage-1 config's peak rate; cpu_tiny_mlm.yaml's
    "contrastive_steps": (20, 6),
    "contrastive_batch": (512, 8),
    # The stage-2 config has 512; 256 keeps 20 steps of batch 512 inside the budget.
    "contrastive_seq": (256, 32),
    "contrastive_lr": (2.0e-4, 2.0e-3),  # the stage-2 config's peak rate; cpu_tiny_contrastive.yaml's
    "grad_cache_chunk": (128, 4),
    "warmup_steps": (5, 2),
    "max_rows": (None, 64),
    # GPU: all 4069 pairs, about 8 batches of 512 per epoch. Tiny: one batch of pairs, seen every step (at
    # batch 8 the loss of different batches varies more than 6 steps of training move it, so the tiny run
    # checks that the model learns: its loss falls towards 0).
    "contrastive_rows": (None, 8),
    "encode_texts": (604, 16),  # 604: every FAQ dev text (corpus + queries)
    "encode_batch": (64, 8),
    "encode_reps": (5, 1),
    "pair_n": (4096, 256),
    "pair_d": (768, 768),
    "radii": ((1.0, 3.0, 5.0, 8.0), (1.0, 5.0)),
    "pair_reps": (5, 2),
    # Tiny budgets are generous: on CPU DeepSpeed first compiles its shared-memory op (about a minute of
    # CPU), and the CPUs are shared.
    "budgets_s": (
        {"twins": 80, "mlm_zero2": 120, "contrastive": 130, "encode": 50, "pairwise": 50},
        {"twins": 120, "mlm_zero2": 400, "contrastive": 240, "encode": 120, "pairwise": 60},
    ),
    # GPU: + about 30 s of imports and CUDA start-up, under 8 minutes in all.
    "total_budget_s": (420.0, 900.0),
}
GPU = Profile(name="gpu", **{k: v[0] for k, v in _PROFILES.items()})
TINY = Profile(name="tiny", **{k: v[1] for k, v in _PROFILES.items()})


def with_settings(profile: Profile, settings: list[str]) -> Profile:
    """``profile`` with ``FIELD=VALUE`` settings applied (values are Python literals); a wrong field or value
    raises ValueError naming it."""
    changes: dict[str, Any] = {}
    names = [f.name for f in fields(Profile) if f.name != "name"]
    for item in settings:
        key, sep, text = item.partition("=")
        if not sep or key not in names:
            hint = closest_key(key, names)
            raise ValueError(
                f"--set {item}: not FIELD=VALUE with a profile field"
                + (f"; did you mean {hint}?" if hint else "")
            )
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"--set {item}: {text!r} is not a Python literal") from None
        if isinstance(value, list):
            value = tuple(value)
        current = getattr(profile, key)
        if not (
            value is None
            or current is None
            or isinstance(value, type(current))
            or (isinstance(current, float) and isinstance(value, int))
        ):
            raise ValueError(f"--set {item}: {key} takes {type(current).__name__} values")
        changes[key] = value
    return replace(profile, **changes)


def log(message: str) -> None:
    print(f"[gpu_check {time.perf_counter() - _T0:6.1f}s] {message}", flush=True)


_T0 = time.perf_counter()


# --- precision, time budgets -------------------------------------------------------------------------


def autocast_dtype(device: torch.device) -> tuple[torch.dtype | None, str]:
    """bf16 on CUDA; on CPU bf16 where a bf16 matmul runs under autocast, else fp32. With a note."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA bf16 autocast"
        return None, "fp32: this GPU has no bf16"
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a = torch.ones(4, 4)
            ok = bool(torch.isfinite(a @ a).all())
    except RuntimeError as error:  # an old CPU or build without bf16 kernels
        return None, f"fp32: CPU bf16 autocast unsupported ({error})"
    return (torch.bfloat16, "CPU bf16 autocast") if ok else (None, "fp32: CPU bf16 gave non-finite output")


class SectionTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise :class:`SectionTimeout` in this (main) thread after ``seconds`` (SIGALRM; Unix)."""

    def expire(signum, frame):
        raise SectionTimeout(f"over its budget of {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _median_s(fn: Callable[[], Any], reps: int, warmup: int) -> float:
    return statistics.median(_interleaved({"fn": fn}, reps, warmup)["fn"])


# --- 1. twins ----------------------------------------------------------------------------------------


def section_twins(p: Profile, device: torch.device, amp: torch.dtype | None) -> dict[str, Any]:
    hyte, twin = build_twins(p.sizes(), p.seq)
    models = {"hyte_fh": hyte.to(device), "euclidean": twin.to(device)}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, hyte.config.vocab_size, (p.batch, p.seq), generator=g).to(device)
    mask = torch.ones_like(ids)

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = model(ids, mask).float().sum()
            loss.backward()
            _sync(str(device))

        return run

    fns = {k: step(m) for k, m in models.items()}
    memory: dict[str, dict[str, int | None]] = {}
    for name, fn in fns.items():  # one step each alone, for its peak memory (and as a first warm-up)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            resident = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        fn()
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated()
            memory[name] = {"peak_bytes": peak, "peak_above_resident_bytes": peak - resident}
        else:
            memory[name] = {"peak_bytes": None, "peak_above_resident_bytes": None}  # CUDA only
    times = _interleaved(fns, p.reps, p.warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = p.batch * p.seq
    tps = {k: tokens / v for k, v in med.items()}
    ratio = med["hyte_fh"] / med["euclidean"]
    all_finite = all(math.isfinite(v) for v in [*med.values(), *tps.values(), ratio])
    return {
        "sizes": {**p.sizes(), "vocab_size": hyte.config.vocab_size},
        "batch": p.batch,
        "seq_len": p.seq,
        "median_s": med,
        "all_s": times,
        "tokens_per_s": tps,
        "time_ratio_hyte_fh_over_euclidean": ratio,
        "tokens_per_s_ratio_hyte_fh_over_euclidean": tps["hyte_fh"] / tps["euclidean"],
        "memory": memory,
        "params": {k: _params(m) for k, m in models.items()},
        "checks": {"finite_timings": all_finite},
    }


# --- 2, 3. training through train.py -----------------------------------------------------------------


def _run_train(
    name: str, args: list[str], work: Path, budget_s: float, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess | None, float, Path]:
    """``torchrun --standalone --nproc-per-node=1 train.py ARGS`` in its own process group (killed whole
    when over budget); stdout + stderr go to ``work/NAME.log``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.setdefault("OMP_NUM_THREADS", str(max(1, min(8, os.cpu_count() or 1))))
    env["PYTHONUNBUFFERED"] = "1"  # a run killed at its budget still leaves its log
    env.update(extra_env or {})
    cmd = [sys.executable, *TORCHRUN_1, str(ROOT / "train.py"), *args]
    log_path = work / f"{name}.log"
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as out:
        out.write(" ".join(cmd) + "\n\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, time.perf_counter() - t0, log_path
    return subprocess.CompletedProcess(cmd, proc.returncode), time.perf_counter() - t0, log_path


def _loss_report(name: str, cmd_args: list[str], run: tuple, output_dir: Path, steps: int) -> dict[str, Any]:
    from lorentz_rag.training.logging import read_metrics

    proc, wall, log_path = run
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    if proc is None:
        raise SectionTimeout(f"train.py over its budget ({wall:.0f} s); log tail:\n{tail}")
    if proc.returncode != 0:
        raise RuntimeError(f"train.py exited with {proc.returncode}; log tail:\n{tail}")
    records = read_metrics(output_dir)
    losses = [r["loss"] for r in records]
    finite = [isinstance(v, (int, float)) and math.isfinite(v) for v in losses]
    tps = [r["tokens_per_s"] for r in records[1:]] or [r["tokens_per_s"] for r in records]
    return {
        "command": " ".join(["python", *TORCHRUN_1, "train.py", *cmd_args]).replace(f"{ROOT}/", ""),
        "steps_logged": [r["step"] for r in records],
        "loss": losses,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "tokens_per_s_median": statistics.median(tps) if tps else None,
        "wall_s": wall,
        "checks": {
            "all_steps_logged": [r["step"] for r in records] == list(range(1, steps + 1)),
            "loss_finite_every_step": bool(losses) and all(finite),
            "loss_falls": bool(losses) and all(finite) and losses[-1] < losses[0],
        },
    }


def _common_overrides(
    p: Profile, device_type: str, dtype: str, output_dir: Path, steps: int, rows: int | None
) -> list[str]:
    return [
        f"--train_args.output_dir={output_dir}",
        f"--train_args.device={device_type}",
        f"--train_args.dtype={dtype}",
        f"--train_args.max_steps={steps}",
        f"--train_args.warmup_steps={p.warmup_steps}",
        f"--train_args.save_every={steps}",  # no checkpoint before the final one
        "--train_args.log_every=1",
        "--train_args.num_workers=0",
        "--data_args.data_format=auto",
        *([f"--data_args.max_rows={rows}"] if rows else []),
    ]


def _size_overrides(p: Profile) -> list[str]:
    return [f"--model_args.{k}={v}" for k, v in p.sizes().items()]


def mlm_train_args(p: Profile, device_type: str, dtype: str, out: Path) -> list[str]:
    """train.py's arguments for the mlm_zero2 section: the stage-1 config at the profile's sizes."""
    return [
        f"--config={MLM_CONFIG.relative_to(ROOT)}",
        f"--deepspeed_config={DS_CONFIG.relative_to(ROOT)}",
        f"--model_args.model_name={packaged_minilm_path()}",
        *_size_overrides(p),
        f"--model_args.max_seq_length={p.mlm_seq}",
        f"--data_args.data_path={MLM_DATA.relative_to(ROOT)}",
        f"--train_args.batch_size={p.mlm_batch}",
        f"--train_args.learning_rate={p.mlm_lr}",
        *_common_overrides(p, device_type, dtype, out, p.mlm_steps, p.max_rows),
    ]


def contrastive_train_args(
    p: Profile, device_type: str, dtype: str, out: Path, mlm_final: Path
) -> tuple[list[str], str]:
    """train.py's arguments for the contrastive section (the stage-2 config), and where its weights start:
    from the MLM section's model when it wrote one (as stage 2 starts from stage 1), else from scratch."""
    if (mlm_final / "config.json").is_file() or any(mlm_final.glob("*.safetensors")):
        init, note = [f"--model_args.init_from={mlm_final}"], "the mlm_zero2 section's final model"
    else:
        init, note = ["--model_args.init_from=null", *_size_overrides(p)], "from scratch (no mlm_zero2 model)"
    args = [
        f"--config={CONTRASTIVE_CONFIG.relative_to(ROOT)}",
        f"--model_args.model_name={packaged_minilm_path()}",
        *init,
        f"--model_args.max_seq_length={p.contrastive_seq}",
        f"--data_args.data_path={PAIRS_DATA.relative_to(ROOT)}",
        "--train_args.distance=geodesic",
        f"--train_args.batch_size={p.contrastive_batch}",
        f"--train_args.grad_cache_chunk={p.grad_cache_chunk}",
        f"--train_args.learning_rate={p.contrastive_lr}",
        *_common_overrides(p, device_type, dtype, out, p.contrastive_steps, p.contrastive_rows),
    ]
    return args, note


def section_mlm_zero2(p: Profile, device: torch.device, dtype: str, work: Path, budget_s: float) -> dict:
    out = work / "mlm_zero2"
    args = mlm_train_args(p, device.type, dtype, out)
    result = _loss_report("mlm_zero2", args, _run_train("mlm_zero2", args, work, budget_s), out, p.mlm_steps)
    result.update(batch=p.mlm_batch, seq_len=p.mlm_seq, dtype=dtype, zero_stage=2)
    return result


def section_contrastive(p: Profile, device: torch.device, dtype: str, work: Path, budget_s: float) -> dict:
    out = work / "contrastive"
    args, init_note = contrastive_train_args(p, device.type, dtype, out, work / "mlm_zero2" / "final")
    run = _run_train("contrastive", args, work, budget_s)
    result = _loss_report("contrastive", args, run, out, p.contrastive_steps)
    result.update(
        batch=p.contrastive_batch,
        seq_len=p.contrastive_seq,
        grad_cache_chunk=p.grad_cache_chunk,
        dtype=dtype,
        distance="geodesic",
        init=init_note,
    )
    return result


# --- 4. encode ---------------------------------------------------------------------------------------


def section_encode(p: Profile, device: torch.device) -> dict[str, Any]:
    args = argparse.Namespace(
        encode_texts=p.encode_texts, encode_batch=p.encode_batch, encode_reps=p.encode_reps
    )
    result = bench_hyte_h_encode(args, device=str(device))
    result["precision"] = "fp32 (both)"
    numbers = [*result["texts_per_s"].values(), result["throughput_ratio_hyte_h_over_st"]]
    result["checks"] = {"finite_throughput": all(math.isfinite(v) and v > 0 for v in numbers)}
    return result


# --- 5. pairwise distance ----------------------------------------------------------------------------


def pairwise_points(n: int, d: int, r: float, c: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` float64 points at geodesic radius ``r`` in random directions, where point ``i + n/2`` is at
    distance exactly ``NEAR`` (geometry_precision's 1e-2) from point ``i``, at the same radius a small angle
    apart: far pairs, and near pairs where the angular term cancels."""
    x, y = make_pairs("tangential", r, c, n // 2, d, gen)
    return torch.cat([x, y])


def section_pairwise(p: Profile, device: torch.device) -> dict[str, Any]:
    c = 1.0
    gen = torch.Generator().manual_seed(0)
    paths: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "float64_reference": lambda x: L.pairwise_geodesic_distance(x.double(), x.double(), c),
        "float32_in_float64_angular": lambda x: L.pairwise_geodesic_distance(x, x, c),  # the default
        "float32_in_float32_angular": lambda x: L.pairwise_geodesic_distance(
            x, x, c, angular_dtype=torch.float32
        ),
    }
    half = p.pair_n // 2
    near_i = torch.arange(half, device=device)
    rows = []
    for r in p.radii:
        # Stored in float32, as embeddings are; the reference is the float64 computation on the same stored
        # points, so the errors are the computation's, not the rounding's.
        x = pairwise_points(p.pair_n, p.pair_d, r, c, gen).float().to(device)
        ref = paths["float64_reference"](x)
        off = ~torch.eye(p.pair_n, dtype=torch.bool, device=device)
        near_ref = ref[near_i, near_i + half]
        row: dict[str, Any] = {"radius": r, "x0": math.cosh(r), "near_distance": NEAR}
        for key in ("median_s", "max_abs_err", "near_max_rel_err", "diag_max"):
            row[key] = {}
        for name, fn in paths.items():

            def run(fn=fn, x=x):
                fn(x)
                _sync(str(device))

            row["median_s"][name] = _median_s(run, p.pair_reps, 1)
            dist = fn(x).double()
            row["max_abs_err"][name] = float((dist - ref).abs()[off].max())
            near = dist[near_i, near_i + half]
            row["near_max_rel_err"][name] = float(((near - near_ref).abs() / near_ref).max())
            row["diag_max"][name] = float(dist.diagonal().abs().max())  # d(x, x): 0 ideally
        row["mean_far_distance"] = float(ref[off].mean())
        row["time_ratio_float64_angular_over_float32"] = (
            row["median_s"]["float32_in_float64_angular"] / row["median_s"]["float32_in_float32_angular"]
        )
        rows.append(row)
        log(
            f"pairwise r={r}: "
            + "; ".join(
                f"{k} {row['median_s'][k] * 1e3:.2f} ms, err {row['max_abs_err'][k]:.1e}, "
                f"near rel {row['near_max_rel_err'][k]:.1e}, d(x,x) {row['diag_max'][k]:.1e}"
                for k in ("float32_in_float64_angular", "float32_in_float32_angular")
            )
        )
    numbers = [
        v
        for row in rows
        for key in ("median_s", "max_abs_err", "near_max_rel_err", "diag_max")
        for v in row[key].values()
    ]
    return {
        "n": p.pair_n,
        "d": p.pair_d,
        "curvature": c,
        "rows": rows,
        "checks": {"finite": all(math.isfinite(v) for v in numbers)},
    }


# --- the run -----------------------------------------------------------------------------------------


def environment(device: torch.device, precision_note: str) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "lorentz_rag": lorentz_rag.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} cpus={os.cpu_count()}",
        "device": str(device),
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "precision": precision_note,
    }
    for module in ("deepspeed", "sentence_transformers"):
        try:
            env[module] = __import__(module).__version__
        except Exception as error:  # recorded, not fatal: the section that needs it fails on its own
            env[module] = f"unavailable: {error}"
    return env


def run_sections(p: Profile, device: torch.device, selected: list[str], total_budget_s: float) -> dict:
    amp, note = autocast_dtype(device)
    dtype = "bf16" if amp is torch.bfloat16 else "fp32"
    result: dict[str, Any] = {"environment": environment(device, note), "sections": {}}
    log(f"device {device} ({result['environment']['gpu_name'] or 'cpu'}), {note}, profile {p.name}")
    work = Path(tempfile.mkdtemp(prefix="gpu_check_runs-"))
    deadline = time.perf_counter() + total_budget_s
    try:
        for name in selected:
            budget = min(p.budgets_s[name], max(1.0, deadline - time.perf_counter()))
            log(f"{name}: start (budget {budget:.0f} s)")
            t0 = time.perf_counter()
            entry: dict[str, Any]
            try:
                if name == "mlm_zero2":
                    entry = section_mlm_zero2(p, device, dtype, work, budget)
                elif name == "contrastive":
                    entry = section_contrastive(p, device, dtype, work, budget)
                else:
                    with time_limit(budget):
                        if name == "twins":
                            entry = section_twins(p, device, amp)
                        elif name == "encode":
                            entry = section_encode(p, device)
                        else:
                            entry = section_pairwise(p, device)
                entry["status"] = "ok" if all(entry["checks"].values()) else "check failed"
            except Exception as error:  # recorded; the next section still runs
                status = "timeout" if isinstance(error, SectionTimeout) else "error"
                entry = {
                    "status": status,
                    "error": f"{type(error).__name__}: {error}",
                    "checks": {"ran": False},
                }
                entry["traceback"] = traceback.format_exc()[-4000:]
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            entry["elapsed_s"] = time.perf_counter() - t0
            entry["budget_s"] = budget
            result["sections"][name] = entry
            log(f"{name}: {entry['status']} in {entry['elapsed_s']:.1f} s; checks {entry['checks']}")
            if "error" in entry:
                log(f"{name}: {entry['error'][-1500:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["all_checks_passed"] = all(
        all(e["checks"].values()) and e["status"] == "ok" for e in result["sections"].values()
    )
    return result


# --- Markdown ----------------------------------------------------------------------------------------


def _mib(n: int | None) -> str:
    return "n/a (CUDA only)" if n is None else f"{n / 2**20:,.0f} MiB"


def _section_md(name: str, s: dict[str, Any]) -> list[str]:
    head = (
        f"Status: **{s['status']}** ({s['elapsed_s']:.1f} s of a {s['budget_s']:.0f} s budget); checks: "
        + (", ".join(f"{k} {'pass' if v else 'FAIL'}" for k, v in s["checks"].items()))
    )
    if "error" in s:
        return [head, "", "```", s["error"][-2000:], "```"]
    lines = [head, ""]
    if name == "twins":
        z = s["sizes"]
        lines += [
            f"{z['num_hidden_layers']} layers x {z['hidden_size']}, {z['num_attention_heads']} heads, "
            f"intermediate {z['intermediate_size']}, vocabulary {z['vocab_size']:,}; batch {s['batch']} x "
            f"seq {s['seq_len']}, forward + backward of the embedding model.",
            "",
            "| model | median s/step | tokens/s | peak memory | peak above resident | parameters |",
            "|---|---|---|---|---|---|",
        ]
        for k, label in (
            ("hyte_fh", "HyTE-FH (OEM pooling)"),
            ("euclidean", "Euclidean twin (ModernBertModel)"),
        ):
            m = s["memory"][k]
            lines.append(
                f"| {label} | {s['median_s'][k]:.4f} | {s['tokens_per_s'][k]:,.0f} | {_mib(m['peak_bytes'])} | "
                f"{_mib(m['peak_above_resident_bytes'])} | {s['params'][k]:,} |"
            )
        lines += ["", f"Time ratio HyTE-FH / twin: **{s['time_ratio_hyte_fh_over_euclidean']:.2f}**."]
    elif name in ("mlm_zero2", "contrastive"):
        extra = (
            f", GradCache chunk {s['grad_cache_chunk']}, init {s['init']}" if name == "contrastive" else ""
        )
        lines += [
            f"batch {s['batch']} x seq {s['seq_len']}, {s['dtype']}{extra}; `{s['command']}`",
            "",
            "| first loss | last loss | steps logged | median tokens/s | wall s |",
            "|---|---|---|---|---|",
            f"| {s['first_loss']:.4f} | {s['last_loss']:.4f} | {len(s['loss'])} | "
            f"{s['tokens_per_s_median']:,.0f} | {s['wall_s']:.1f} |",
        ]
    elif name == "encode":
        lines += [
            f"{s['texts']} FAQ texts, batch {s['batch_size']}, max {s['max_seq_length']} tokens, {s['precision']}.",
            "",
            "| encoder | texts/s |",
            "|---|---|",
            f"| HyTE-H `encode` | {s['texts_per_s']['hyte_h']:,.1f} |",
            f"| sentence-transformers `encode` (same model) | {s['texts_per_s']['sentence_transformers']:,.1f} |",
            "",
            f"Throughput ratio HyTE-H / sentence-transformers: **{s['throughput_ratio_hyte_h_over_st']:.2f}**.",
        ]
    elif name == "pairwise":
        lines += [
            f"{s['n']} x {s['n']} distances, d = {s['d']}, c = {s['curvature']}; float32 points at radius r in "
            "random directions, half of them paired at distance 0.01; errors against float64 on the same stored "
            "points; d(x, x) should be 0.",
            "",
            "| r | x0 | angular dtype | ms | max abs err | max rel err at d = 0.01 | max d(x, x) |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in s["rows"]:
            for key, label in (
                ("float32_in_float64_angular", "float64 (default)"),
                ("float32_in_float32_angular", "float32"),
                ("float64_reference", "float64 inputs (reference)"),
            ):
                lines.append(
                    f"| {row['radius']:g} | {row['x0']:.3g} | {label} | {row['median_s'][key] * 1e3:.2f} | "
                    f"{row['max_abs_err'][key]:.2e} | {row['near_max_rel_err'][key]:.2e} | "
                    f"{row['diag_max'][key]:.2e} |"
                )
    return lines


def write_markdown(result: dict[str, Any], path: Path) -> None:
    env = result["environment"]
    lines = [
        f"# GPU check ({result['profile']} profile)",
        "",
        f"Command: `{result['command']}`  ",
        f"Device: {env['device']} ({env['gpu_name'] or 'no GPU'}); {env['precision']}; torch {env['torch']}, "
        f"CUDA {env['cuda']}, DeepSpeed {env['deepspeed']}, transformers {env['transformers']}, "
        f"sentence-transformers {env['sentence_transformers']}; total {result['wall_s']:.0f} s.",
        "",
        f"All checks passed: **{result['all_checks_passed']}**.",
    ]
    titles = {
        "twins": "1. HyTE-FH vs its Euclidean twin, forward + backward",
        "mlm_zero2": "2a. Masked LM under DeepSpeed ZeRO-2 (1 process, train.py)",
        "contrastive": "2b. Contrastive, geodesic InfoNCE (torchrun, 1 process, train.py)",
        "encode": "3. HyTE-H encode vs sentence-transformers",
        "pairwise": "4. Pairwise geodesic distance: float64 vs float32 angular term",
    }
    for name, s in result["sections"].items():
        lines += ["", f"## {titles[name]}", "", *_section_md(name, s)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes; runs on CPU when there is no GPU")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu_check.json and .md")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock budget of all sections (default: the profile's)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change one size of the profile (a Python literal), e.g. --set contrastive_seq=128",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    profile = TINY if args.tiny else GPU
    try:
        profile = with_settings(profile, args.set)
    except ValueError as error:
        parser.error(str(error))
    selected = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in selected if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device={args.device}, but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if device.type != "cuda" and not args.tiny:
        print(
            "error: the GPU check needs a CUDA device (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}); run it with --tiny to exercise every section on CPU at tiny sizes",
            file=sys.stderr,
        )
        return 2
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t0 = time.perf_counter()
    result = {
        "command": " ".join(["python benchmarks/gpu_check.py", *argv]),
        "profile": profile.name,
        "sizes": asdict(profile),
        "started_utc": started,
    }
    result.update(run_sections(profile, device, selected, args.budget_s or profile.total_budget_s))
    result["wall_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_markdown(result, args.out / "gpu_check.md")
    log(
        f"wrote {args.out / 'gpu_check.json'} and gpu_check.md; all checks passed: {result['all_checks_passed']}"
    )
    return 0 if result["all_checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
