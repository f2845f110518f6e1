"""The gradient reduction alone: DDP's dense all-reduce vs the sparse-embedding hook (training/ddp_hooks.py).

2 processes (gloo, 1 thread each, torch.multiprocessing) hold a stand-in for bench_training.py's DDP model:
a token table of HyTE-FH's shape (vocabulary x hidden_size) and one linear layer holding as many parameters
as the rest of the trunk. Each step embeds the real tokens of 16 pairs per process (query and document, at
most max_seq_length tokens each, the packaged MiniLM tokenizer, bench_training's pairs file; the processes
take alternate rows), so the rows touched are those of a real step. Timed per step, after a barrier: the
backward and the reduction DDP runs inside it (``local``: the same backward without DDP, the floor). The
three modes alternate in blocks of 10 steps. Writes benchmarks/results/ddp_hook.json and .md. Run:

    .venv/bin/python benchmarks/bench_ddp_hook.py [--blocks 10]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_training import DATA, RESULTS, SIZES  # noqa: E402

from lorentz_rag.models import packaged_minilm_path  # noqa: E402
from lorentz_rag.training.config import load_config  # noqa: E402
from lorentz_rag.training.ddp_hooks import register_sparse_embedding_hook  # noqa: E402
from lorentz_rag.training.distributed import end_distributed  # noqa: E402
from lorentz_rag.training.trainer import build_training_model  # noqa: E402

MODES = ("local", "dense", "sparse")
BATCH = 16
STEPS_PER_BLOCK = 10


class StandIn(nn.Module):
    """``ids [B, T]`` -> a scalar; ``tokens [V, d]`` and ``rest [n_rest]`` as in the benchmark's model."""

    def __init__(self, vocab: int, dim: int, n_rest: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim, padding_idx=0)
        self.rest = nn.Linear(dim, n_rest // dim, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rest(self.tokens(ids).mean(1)).square().mean()


def _batches(rank: int, steps: int, length: int) -> list[torch.Tensor]:
    """Per step ``[2 * BATCH, length]`` token ids (queries then documents) of this rank's rows, 0-padded."""
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    with gzip.open(DATA / "pairs_python_docs.jsonl.gz", "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line, _ in zip(handle, range(1000))]
    mine = rows[rank::2]
    out = []
    for step in range(steps):
        chunk = [mine[(step * BATCH + i) % len(mine)] for i in range(BATCH)]
        texts = [r["query"] for r in chunk] + [r["document"] for r in chunk]
        enc = tokenizer(texts, max_length=length, truncation=True, padding="max_length", return_tensors="pt")
        out.append(enc["input_ids"])
    return out


def _worker(rank: int, store: str, blocks: int, shapes: tuple[int, int, int], report: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    batches = _batches(rank, blocks * STEPS_PER_BLOCK, SIZES["model_args.max_seq_length"])
    runners, state = {}, None
    for mode in MODES:
        torch.manual_seed(0)
        model = StandIn(*shapes)
        runner: nn.Module = model
        if mode != "local":
            runner = nn.parallel.DistributedDataParallel(
                model, bucket_cap_mb=25.0, gradient_as_bucket_view=True
            )
        if mode == "sparse":
            state = register_sparse_embedding_hook(runner, [model.tokens.weight])
        runners[mode] = (model, runner)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for block in range(blocks):
        for mode in MODES:
            model, runner = runners[mode]
            for ids in batches[block * STEPS_PER_BLOCK : (block + 1) * STEPS_PER_BLOCK]:
                loss = runner(ids)
                dist.barrier()
                start = time.perf_counter()
                loss.backward()
                times[mode].append(time.perf_counter() - start)
                model.zero_grad(set_to_none=True)
    if rank == 0:
        result = {
            mode: {
                "median_ms": round(1000 * statistics.median(ts), 2),
                "q1_ms": round(1000 * sorted(ts)[len(ts) // 4], 2),
                "min_ms": round(1000 * min(ts), 2),
                "steps": len(ts),
            }
            for mode, ts in times.items()
        }
        result["rows_reduced_per_step"] = round(state.rows_reduced / state.calls, 1)
        result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
        Path(report).write_text(json.dumps(result))
    del runners, model, runner, state  # the DDP wrappers and the hook, before the group (end_distributed)
    end_distributed()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=10, help="blocks of 10 steps per mode, alternating")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    config = load_config(
        ROOT / "configs/train/cpu_tiny_contrastive.yaml",
        [*(f"{k}={v}" for k, v in SIZES.items()), "model_args.init_from=null"],
        dotenv_dir=None,
    )
    sizes = {n: p.shape for n, p in build_training_model(config).named_parameters() if p.requires_grad}
    vocab, dim = sizes["model.embeddings.weight"]
    n_rest = sum(s.numel() for n, s in sizes.items() if n != "model.embeddings.weight")
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-ddp-hook-") as tmp:
        report = Path(tmp) / "report.json"
        shapes = (vocab, dim, n_rest)
        mp.spawn(_worker, args=(str(Path(tmp) / "store"), args.blocks, shapes, str(report)), nprocs=2)
        result = json.loads(report.read_text())
    rows = result["rows_reduced_per_step"]
    rest = (n_rest // dim) * dim
    result.update(
        command=f"python benchmarks/bench_ddp_hook.py --blocks={args.blocks}",
        machine=f"torch {torch.__version__}, cpus={os.cpu_count()} (shared)",
        table=[vocab, dim],
        rest_parameters=rest,
        tokens_per_step_per_process=[2 * BATCH, SIZES["model_args.max_seq_length"]],
        bytes_all_reduced_per_step={
            "dense": 4 * (vocab * dim + rest),
            "sparse": vocab + 4 * (rest + rows * dim),
        },
        load_average_1min_at_start=round(load_at_start, 2),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ddp_hook.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "ddp_hook.md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(r: dict) -> str:
    sent = r["bytes_all_reduced_per_step"]
    lines = [
        "# The gradient reduction alone: dense all-reduce vs the sparse-embedding hook (CPU, gloo)",
        "",
        f"Command: `{r['command']}`  ",
        f"{r['machine']}; 2 processes x 1 thread; token table {r['table'][0]} x {r['table'][1]} plus "
        f"{r['rest_parameters']} other parameters in the same bucket; per step and process the real tokens of "
        f"{r['tokens_per_step_per_process'][0]} texts of at most {r['tokens_per_step_per_process'][1]} tokens. "
        "Time per step of the backward with the reduction DDP runs in it (after a barrier); `local` is the "
        "same backward without DDP.",
        "",
        "| mode | median ms | first quartile ms | min ms | steps |",
        "|---|---|---|---|---|",
    ]
    for mode in MODES:
        m = r[mode]
        lines.append(f"| {mode} | {m['median_ms']} | {m['q1_ms']} | {m['min_ms']} | {m['steps']} |")
    lines += [
        "",
        f"Rows in the union per step: {r['rows_reduced_per_step']} of {r['table'][0]}. Bytes all-reduced per step: "
        f"dense {sent['dense'] / 2**20:.2f} MiB, hook {sent['sparse'] / 2**20:.2f} MiB (row mask included).",
        "",
        f"Load average (1 min): {r['load_average_1min_at_start']} at the start, {r['load_average_1min_at_end']} "
        f"at the end, on {os.cpu_count()} CPUs shared with other jobs (above 2 the processes waited for cores).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
