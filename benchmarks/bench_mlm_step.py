"""Training-step time of HyTE-FH vs its Euclidean twin on CPU: masked-LM and contrastive forward+backward.

Workloads (random token ids, every token real; seconds per forward+backward, gradients zeroed each time):

- ``mlm``: ``HyteFHForMaskedLM`` vs ``EuclideanForMaskedLM`` (ModernBertForMaskedLM, sparse prediction) at
  ``configs/train/cpu_tiny_mlm.yaml``'s sizes (2 x 64, 4 heads, intermediate 96) with the MiniLM tokenizer's
  vocabulary (30522), batch 16, seq 128, 30% of the tokens scored (the same positions for both models).
  HyTE-FH runs as configured by default (the fused MLR cross-entropy, ``fused_mlm_loss=True``); with
  ``--mlm-variants`` also ``hyte_fh_unfused`` (``fused_mlm_loss=False``, the same weights: logits, then
  cross-entropy) and ``hyte_fh_tied`` (``tie_mlm_head=True``).
- ``mlm_50k``: the same at ModernBERT's vocabulary, 50368 classes (random ids; both models' tables resized).
- ``contrastive_tiny`` / ``contrastive_4x256``: the embedding models (``build_model``; HyTE-FH with outward
  Einstein midpoint pooling, the twin with mean pooling), loss = sum of the pooled output, at the tiny sizes
  and at 4 x 256 (the sizes of ``benchmarks/bench_models.py``).

Repetitions of all models are interleaved and medians reported (the CPUs are shared). Each run is stored
under ``--label`` (with the git commit) in benchmarks/results/mlm_step.json; mlm_step.md shows every stored
run. ``--profile`` prints a torch.profiler table per workload instead of timing; ``--profile-out FILE``
writes the tables (top operators by self CPU time) to a Markdown file as well. ``--compile`` adds a third
model to each workload, HyTE-FH with the same weights and ``compile=True`` (torch.compile of its blocks and
MLM head), interleaved with the other two; its first call, which compiles, is timed on its own
(``compile_s``); ``--profile --compile`` profiles all three.

``--memory``: after the timing, each model's peak memory of one step (``peak_mb``, MiB above the resident
size before the step: the kernel's high-water mark ``VmHWM``, reset through ``/proc/self/clear_refs``),
median of 3 steps. For freed buffers to leave the resident size, glibc's mmap threshold is fixed at 64 KiB
first (``mallopt(M_MMAP_THRESHOLD)``: every buffer of 64 KiB or more is mapped and unmapped, not kept in
the heap, where the next step would reuse it unseen). Linux with glibc only. The load average before and after the run is stored with it (the machine is shared). Run:

    .venv/bin/python benchmarks/bench_mlm_step.py --label after [--threads 1] [--reps 7]
    .venv/bin/python benchmarks/bench_mlm_step.py --label L --workloads mlm,mlm_50k --mlm-variants --memory
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from lorentz_rag.models import build_model, packaged_minilm_path
from lorentz_rag.models.euclidean import EuclideanForMaskedLM
from lorentz_rag.models.factory import build_mlm_model
from lorentz_rag.models.hyte_fh import HyteFHForMaskedLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import _interleaved  # benchmarks/ is not a package

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96}
MEDIUM = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}
MODERNBERT_VOCAB = 50368
M_MMAP_THRESHOLD, MMAP_THRESHOLD = -3, 65536  # glibc's mallopt parameter and the value set


def _model_args(model_type: str, sizes: dict[str, int], seq_len: int, **extra: Any) -> dict[str, Any]:
    return {
        "model_type": model_type,
        "model_name": str(packaged_minilm_path()),
        "max_seq_length": seq_len,
        "curvature": 1.0,
        "trainable_curvature": True,
        **sizes,
        **extra,
    }


def _train_step(model: torch.nn.Module, loss_of: Callable[[torch.nn.Module], torch.Tensor]):
    """A callable running one forward + backward of ``loss_of(model)`` with fresh gradients."""

    def run() -> None:
        model.zero_grad(set_to_none=True)
        loss_of(model).backward()

    return run


def mlm_workloads(args: argparse.Namespace, vocab_size: int | None = None) -> dict[str, Any]:
    """``{"hyte_fh": step, "euclidean": step, ...}`` for the masked-LM forward+backward; ``vocab_size``
    resizes both models' vocabularies (random ids: the tokenizer is not used)."""
    torch.manual_seed(0)
    hyte = build_mlm_model(_model_args("hyte_fh", TINY, args.seq_len)).train()
    twin = build_mlm_model(_model_args("euclidean", TINY, args.seq_len)).train()
    if vocab_size is not None:
        torch.manual_seed(0)
        hyte = HyteFHForMaskedLM(dataclasses.replace(hyte.config, vocab_size=vocab_size)).train()
        twin_config = copy.deepcopy(twin.config)
        twin_config.vocab_size = vocab_size
        twin = EuclideanForMaskedLM(twin_config).train()
    vocab = hyte.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (args.batch, args.seq_len), generator=g)
    mask = torch.ones_like(ids)
    scored = torch.rand(ids.shape, generator=g) < args.mlm_probability
    labels = torch.where(scored, ids, torch.full_like(ids, -100))

    def mlm_loss(model):
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    variants = {}
    if args.mlm_variants:
        unfused = HyteFHForMaskedLM(dataclasses.replace(hyte.config, fused_mlm_loss=False)).train()
        unfused.load_state_dict(hyte.state_dict())  # the same weights: logits, then cross-entropy
        torch.manual_seed(0)
        tied = HyteFHForMaskedLM(dataclasses.replace(hyte.config, tie_mlm_head=True)).train()
        variants = {"hyte_fh_unfused": unfused, "hyte_fh_tied": tied}
    return _with_compiled(args, hyte, twin, mlm_loss, variants)


def contrastive_workloads(args: argparse.Namespace, sizes: dict[str, int]) -> dict[str, Any]:
    """``{"hyte_fh": step, "euclidean": step}`` for the embedding models' forward+backward."""
    torch.manual_seed(0)
    hyte = build_model(
        _model_args("hyte_fh", sizes, args.seq_len, pooling="outward_einstein_midpoint")
    ).train()
    twin = build_model(
        _model_args("euclidean", sizes, args.seq_len, euclidean_base="modernbert", pooling="mean")
    ).train()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, hyte.config.vocab_size, (args.batch, args.seq_len), generator=g)
    mask = torch.ones_like(ids)

    def pooled_sum(model):
        return model(ids, mask).sum()

    return _with_compiled(args, hyte, twin, pooled_sum)


def _with_compiled(args, hyte, twin, loss_of, variants=None) -> dict[str, Any]:
    """The workload's steps: eager HyTE-FH, the twin, ``variants`` (name -> model) and (``--compile``) a
    compiled copy of HyTE-FH."""
    fns = {"hyte_fh": _train_step(hyte, loss_of), "euclidean": _train_step(twin, loss_of)}
    fns.update({name: _train_step(model, loss_of) for name, model in (variants or {}).items()})
    if args.compile:
        compiled = copy.deepcopy(hyte)
        compiled.model.compile_switch.enabled = True  # the trunk's switch (shared with the MLM head)
        fns["hyte_fh_compiled"] = _train_step(compiled, loss_of)
    return fns


def _proc_status_bytes(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def fix_mmap_threshold() -> None:
    """Every allocation of 64 KiB or more mapped on its own and returned at free (see the docstring)."""
    if not ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed: --memory needs glibc")


def step_peak_mb(fn) -> float:
    """MiB the process's resident size rose above its size before ``fn()`` at the peak of ``fn()``
    (call :func:`fix_mmap_threshold` once first)."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    before = _proc_status_bytes("VmRSS")
    fn()
    return (_proc_status_bytes("VmHWM") - before) / 2**20


def _profile(fn, rows: int, steps: int = 1) -> str:
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src/lorentz_rag/nn", "src/lorentz_rag/models/hyte_fh.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() + ("+uncommitted nn/hyte_fh edits" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_markdown(runs: dict[str, Any], path: Path) -> None:
    lines = [
        "# HyTE-FH training step vs its Euclidean twin (CPU)",
        "",
        "Forward + backward per step, median seconds -> milliseconds; repetitions interleaved (shared CPUs: "
        "expect noise of 10-20%). Workloads: see `benchmarks/bench_mlm_step.py`. MLM: 2 x 64 (4 heads, "
        "intermediate 96), vocabulary 30522 (`mlm_50k`: 50368), batch 16 x 128 tokens, 30% scored. "
        "Contrastive: embedding model forward+backward (sum of the pooled output), batch 16 x 128. Peak "
        "MiB: the resident size's rise during one step (`--memory`).",
        "",
    ]
    for label, run in runs.items():
        if "load_average" in run:
            lines += _model_table(label, run)
            continue
        lines += [
            f"## {label}",
            "",
            f"Commit `{run['commit']}`, torch {run['torch']}, {run['threads']} thread(s), {run['reps']} reps, "
            f"{run['date']}. Command: `{run['command']}`",
            "",
            "| workload | HyTE-FH ms | twin ms | ratio | HyTE-FH compiled ms | ratio compiled | compile s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, res in run["workloads"].items():
            med = res["median_ms"]
            comp = med.get("hyte_fh_compiled")
            compiled = f"{comp:.1f} | {comp / med['euclidean']:.2f}" if comp else "- | -"
            compile_s = f"{res['compile_s']:.0f}" if "compile_s" in res else "-"
            lines.append(
                f"| {name} | {med['hyte_fh']:.1f} | {med['euclidean']:.1f} | "
                f"{med['hyte_fh'] / med['euclidean']:.2f} | {compiled} | {compile_s} |"
            )
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


MODEL_NAMES = {
    "hyte_fh": "HyTE-FH (fused MLR cross-entropy)",
    "hyte_fh_unfused": "HyTE-FH, plain head + cross-entropy",
    "hyte_fh_tied": "HyTE-FH, fused, head tied to the embeddings",
    "hyte_fh_compiled": "HyTE-FH, fused, compile=True",
    "euclidean": "Euclidean twin",
}


def _model_table(label: str, run: dict[str, Any]) -> list[str]:
    """One row per workload and model: time and peak memory, each also as a ratio to the twin's."""
    load = run["load_average"]
    lines = [
        f"## {label}",
        "",
        f"Commit `{run['commit']}`, torch {run['torch']}, {run['threads']} thread(s), {run['reps']} reps, "
        f"{run['date']}, batch {run['batch']} x {run['seq_len']}; load average (1/5/15 min) before "
        f"{'/'.join(f'{x:.1f}' for x in load['before'])}, after {'/'.join(f'{x:.1f}' for x in load['after'])}. "
        f"Command: `{run['command']}`",
        "",
        "| workload | model | ms | time / twin | peak MiB | peak / twin | compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in run["workloads"].items():
        med, peak = res["median_ms"], res.get("peak_mb", {})
        for model, ms in med.items():
            mem = f"{peak[model]:.0f} | " if model in peak else "- | "
            mem += (
                f"{peak[model] / peak['euclidean']:.2f}" if peak.get("euclidean") and model in peak else "-"
            )
            compile_s = f"{res['compile_s']:.0f}" if model == "hyte_fh_compiled" else "-"
            lines.append(
                f"| {name} | {MODEL_NAMES.get(model, model)} | {ms:.1f} | {ms / med['euclidean']:.2f} | "
                f"{mem} | {compile_s} |"
            )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--label", default="after", help="name of this run in the results file")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--mlm-probability", type=float, default=0.30)
    p.add_argument(
        "--workloads", default="mlm,contrastive_tiny,contrastive_4x256", help="comma-separated subset"
    )
    p.add_argument("--profile", action="store_true", help="print profiler tables instead of timing")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--profile-steps", type=int, default=1, help="steps inside the profile (totals)")
    p.add_argument("--profile-out", type=Path, default=None, help="also write the profile tables here (.md)")
    p.add_argument("--compile", action="store_true", help="add HyTE-FH with compile=True (torch.compile)")
    p.add_argument(
        "--mlm-variants", action="store_true", help="MLM: add HyTE-FH unfused (same weights) and tied"
    )
    p.add_argument("--memory", action="store_true", help="measure each model's peak memory of one step")
    p.add_argument("--no-save", action="store_true", help="print, do not write the results files")
    p.add_argument(
        "--commit",
        default=None,
        help="record this commit instead of HEAD (for a run of an older tree put first on PYTHONPATH)",
    )
    args = p.parse_args(argv)
    if args.memory:
        fix_mmap_threshold()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    builders = {
        "mlm": lambda: mlm_workloads(args),
        "mlm_50k": lambda: mlm_workloads(args, MODERNBERT_VOCAB),
        "contrastive_tiny": lambda: contrastive_workloads(args, TINY),
        "contrastive_4x256": lambda: contrastive_workloads(args, MEDIUM),
    }
    results: dict[str, Any] = {}
    tables: list[str] = []
    for name in args.workloads.split(","):
        fns = builders[name]()
        t0 = time.perf_counter()
        fns["hyte_fh_compiled" if "hyte_fh_compiled" in fns else "hyte_fh"]()  # the first call compiles
        first_s = time.perf_counter() - t0
        if args.profile:
            for model_name, fn in fns.items():
                table = _profile(fn, args.profile_rows, args.profile_steps)
                print(f"===== {name} / {model_name} =====\n{table}")
                tables.append(f"## {name} / {model_name}\n\n```\n{table}\n```\n")
            continue
        times = _interleaved(fns, args.reps, args.warmup)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        results[name] = {"median_ms": med, "all_ms": {k: [1e3 * t for t in v] for k, v in times.items()}}
        if args.compile:
            results[name]["compile_s"] = first_s
        print(f"{name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()), flush=True)
        if args.memory:
            peaks = {k: [] for k in fns}
            for _ in range(3):
                for model_name, fn in fns.items():
                    peaks[model_name].append(step_peak_mb(fn))
            results[name]["peak_mb"] = {k: statistics.median(v) for k, v in peaks.items()}
            print(
                f"{name} peak MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in results[name]["peak_mb"].items())
            )
        del fns
    if args.profile and args.profile_out:
        head = (
            f"# Profile: HyTE-FH vs twin, one training step (CPU)\n\nCommand: `python "
            f"benchmarks/bench_mlm_step.py {' '.join(sys.argv[1:])}`, torch {torch.__version__}, "
            f"{args.threads} thread(s), batch {args.batch} x {args.seq_len}, {time.strftime('%Y-%m-%d %H:%M')}. "
            f"Top operators by self CPU time, totals over {args.profile_steps} forward+backward step(s) after "
            "a warm-up call (`## Call CompiledFxGraph` rows are inductor's fused kernels).\n\n"
        )
        args.profile_out.write_text(head + "\n".join(tables), encoding="utf-8")
    if args.profile or args.no_save:
        return

    run = {
        "commit": args.commit or _git_commit(),
        "torch": torch.__version__,
        "threads": args.threads,
        "reps": args.reps,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/bench_mlm_step.py " + " ".join(sys.argv[1:]),
        "workloads": results,
    }
    if args.memory or args.mlm_variants:  # the newer record (rendered per model, with the load)
        run["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / "mlm_step.json"
    runs = json.loads(json_path.read_text()) if json_path.exists() else {}
    runs[args.label] = run
    json_path.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
    write_markdown(runs, RESULTS / "mlm_step.md")
    print(f"wrote {json_path} and mlm_step.md ({args.label})")


if __name__ == "__main__":
    main()
