"""Training throughput and peak memory on CPU, through the real trainer.

1. HyTE-FH vs its Euclidean twin (ModernBertModel) at equal sizes, for the MLM and the contrastive objective:
   tokens/s (real, unpadded tokens) and peak resident memory of the training process.
2. DDP: the same contrastive run with 2 processes (torchrun, gloo, 1 thread each) vs 1 process (2 threads),
   per-device batch fixed, so the 2-process run sees twice the batch per step: the speed-up is the ratio of
   tokens/s on the same two cores. The same 2-process run under DeepSpeed ZeRO-2
   (configs/deepspeed/ds_config.json) is reported beside it, and the DDP run once more with the dense
   all-reduce of every gradient (``train_args.ddp_sparse_embedding_hook=false``; the 2-process DDP run uses the
   default, which all-reduces only the embedding rows some process touched). benchmarks/profile_ddp.py shows
   where the time goes.

Every run is ``train.py`` in its own process (``os.wait4`` gives each its own peak RSS). tokens/s is the
median over the logging windows after the first (the first holds start-up work); the two runs of a
comparison alternate for ``--reps`` rounds and the best round is reported. The CPUs of this machine
are shared with other jobs, so expect noise; runs of one comparison are back to back. Results go to
benchmarks/results/training.json and training.md. Run:

    .venv/bin/python benchmarks/bench_training.py [--steps 12] [--log-every 3]

``--only pair`` runs the HyTE-FH / twin comparisons only (``--only ddp``: the DDP one only); ``--out DIR``
writes training.json / training.md into DIR instead of benchmarks/results; ``--compile`` trains HyTE-FH with
``model_args.compile=true`` (torch.compile; its compilation falls in the first logging window, which the
tokens/s median leaves out, and in wall s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT / "data" / "train"

SIZES = {
    "model_args.hidden_size": 64,
    "model_args.num_hidden_layers": 2,
    "model_args.num_attention_heads": 4,
    "model_args.intermediate_size": 96,
    "model_args.max_seq_length": 64,
}


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB of the process tree's largest member, stderr tail)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait4 on the direct child; for torchrun the workers are grandchildren, so take RUSAGE_CHILDREN there.
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    import resource

    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over all waited descendants
    return wall, peak_kib / 1024, err[-500:]


def _train_cmd(
    config: str, out: Path, overrides: dict[str, Any], launcher: list[str] | None = None
) -> list[str]:
    flags = [f"--{k}={v}" for k, v in overrides.items()]
    head = launcher or [sys.executable]
    return [*head, "train.py", f"--config=configs/train/{config}", f"--train_args.output_dir={out}", *flags]


def _tokens_per_s(out: Path) -> tuple[float, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steady = [r["tokens_per_s"] for r in records[1:]] or [records[0]["tokens_per_s"]]
    return statistics.median(steady), records[-1]["loss"]


def run_one(name: str, config: str, overrides: dict[str, Any], tmp: Path, env: dict[str, str], launcher=None):
    # A fresh folder per round: the trainer refuses to train into a used one.
    out = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    wall, rss, _ = _run(_train_cmd(config, out, overrides, launcher), env)
    tps, loss = _tokens_per_s(out)
    row = {
        "run": name,
        "tokens_per_s": round(tps, 1),
        "peak_rss_mib": round(rss, 1),
        "wall_s": round(wall, 1),
    }
    row["final_loss"] = round(loss, 4)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--log-every", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--only", choices=("pair", "ddp"), help="only the HyTE-FH / twin comparisons, or only the DDP one"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for training.json / training.md")
    parser.add_argument("--compile", action="store_true", help="HyTE-FH runs with model_args.compile=true")
    args = parser.parse_args()

    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="offline"
    )
    env["OMP_NUM_THREADS"] = str(args.threads)
    common = {
        **SIZES,
        "train_args.max_steps": args.steps,
        "train_args.log_every": args.log_every,
        "train_args.save_every": 10**6,
        "train_args.batch_size": args.batch,
        "data_args.max_rows": 1000,
    }
    mlm = {**common, "data_args.data_path": DATA / "mlm_python_docs.jsonl.gz"}
    pairs = {
        **common,
        "data_args.data_path": DATA / "pairs_python_docs.jsonl.gz",
        "model_args.init_from": "null",
    }
    euclid = {"model_args.model_type": "euclidean", "model_args.euclidean_base": "modernbert"}
    hyte = {"model_args.compile": "true"} if args.compile else {}

    def torchrun(nproc: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]

    twin_pairs = {**pairs, **euclid, "train_args.distance": "cosine", "model_args.pooling": "mean"}
    # Each comparison: its two runs alternate for --reps rounds (A B A B ...), each in a fresh child process
    # (its own peak RSS); the best tokens/s of the rounds is reported (shared CPUs only ever slow a run down).
    comparisons = {
        "mlm": [
            ("hyte_fh_mlm", "cpu_tiny_mlm.yaml", {**mlm, **hyte}, env, None),
            ("euclidean_mlm", "cpu_tiny_mlm.yaml", {**mlm, **euclid}, env, None),
        ],
        "contrastive": [
            ("hyte_fh_contrastive", "cpu_tiny_contrastive.yaml", {**pairs, **hyte}, env, None),
            ("euclidean_contrastive", "cpu_tiny_contrastive.yaml", twin_pairs, env, None),
        ],
        "ddp": [
            ("hyte_fh_contrastive_1proc", "cpu_tiny_contrastive.yaml", pairs, env, torchrun(1)),
            (
                "hyte_fh_contrastive_2proc",
                "cpu_tiny_contrastive.yaml",
                pairs,
                {**env, "OMP_NUM_THREADS": str(max(1, args.threads // 2))},
                torchrun(2),
            ),
            (
                "hyte_fh_contrastive_2proc_zero2",
                "cpu_tiny_contrastive.yaml",
                {**pairs, "deepspeed_config": ROOT / "configs" / "deepspeed" / "ds_config.json"},
                {**env, "OMP_NUM_THREADS": str(max(1, args.threads // 2))},
                torchrun(2),
            ),
            (
                "hyte_fh_contrastive_2proc_dense_allreduce",
                "cpu_tiny_contrastive.yaml",
                {**pairs, "train_args.ddp_sparse_embedding_hook": "false"},
                {**env, "OMP_NUM_THREADS": str(max(1, args.threads // 2))},
                torchrun(2),
            ),
        ],
    }
    if args.only == "pair":
        del comparisons["ddp"]
    elif args.only == "ddp":
        del comparisons["mlm"], comparisons["contrastive"]
    results: dict[str, list[dict[str, Any]]] = {}
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp_name:
        tmp = Path(tmp_name)
        for key, plan in comparisons.items():
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in plan}
            for _ in range(args.reps):
                for name, config, overrides, run_env, launcher in plan:
                    rounds[name].append(_isolated(name, config, overrides, tmp, run_env, launcher))
            results[key] = [_best(name, rs) for name, rs in rounds.items()]
    rows = results.get("mlm", []) + results.get("contrastive", [])
    ddp_rows = results.get("ddp", [])
    command = "python benchmarks/bench_training.py " + " ".join(
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if v not in (None, False) and k != "out"
    )
    load = {"1min_at_start": round(load_at_start, 2), "5min_at_end": round(os.getloadavg()[1], 2)}
    # --only keeps the other comparison's results (and its command) from the results already written.
    previous_path = args.out / "training.json"
    previous = json.loads(previous_path.read_text()) if args.only and previous_path.exists() else {}
    commands = {"pair": command, "ddp": command}
    if args.only == "ddp":
        rows = previous.get("runs", [])
        commands["pair"] = previous.get("commands", {}).get("pair", previous.get("command"))
    elif args.only == "pair":
        ddp_rows = previous.get("ddp", [])
        commands["ddp"] = previous.get("commands", {}).get("ddp", previous.get("command"))
        load = previous.get("load_average", {})

    by_name = {r["run"]: r for r in rows}
    ratios = {}
    if rows:
        ratios["mlm_tokens_per_s_hyte_fh_over_euclidean"] = (
            by_name["hyte_fh_mlm"]["tokens_per_s"] / by_name["euclidean_mlm"]["tokens_per_s"]
        )
        ratios["contrastive_tokens_per_s_hyte_fh_over_euclidean"] = (
            by_name["hyte_fh_contrastive"]["tokens_per_s"] / by_name["euclidean_contrastive"]["tokens_per_s"]
        )
    if ddp_rows:
        ratios["ddp_2proc_speedup"] = ddp_rows[1]["tokens_per_s"] / ddp_rows[0]["tokens_per_s"]
        if len(ddp_rows) > 2:  # results written before the ZeRO-2 run was added have two rows
            ratios["zero2_2proc_speedup"] = ddp_rows[2]["tokens_per_s"] / ddp_rows[0]["tokens_per_s"]
        if len(ddp_rows) > 3:  # ... and before the dense all-reduce run was
            ratios["ddp_dense_allreduce_2proc_speedup"] = (
                ddp_rows[3]["tokens_per_s"] / ddp_rows[0]["tokens_per_s"]
            )
    result = {
        "commands": commands,
        "machine": f"torch {__import__('torch').__version__}, {platform.machine()}, cpus={os.cpu_count()} (shared)",
        "sizes": {k.split(".")[1]: v for k, v in SIZES.items()},
        "steps": args.steps,
        "batch_size_per_process": args.batch,
        "runs": rows,
        "ddp": ddp_rows,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        # Runnable processes during the DDP comparison, averaged: above the CPU count the runs competed with
        # other jobs for the cores.
        "load_average": load,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "training.md").write_text(_markdown(result))
    print(_markdown(result))


def _best(name: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(rounds, key=lambda r: r["tokens_per_s"])
    return {
        **best,
        "run": name,
        "tokens_per_s_all": [r["tokens_per_s"] for r in rounds],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rounds),
    }


def _isolated(name, config, overrides, tmp, env, launcher=None) -> dict[str, Any]:
    """Run one measurement in a fresh child of this script, so RUSAGE_CHILDREN covers that run only."""
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import bench_training as b; from pathlib import Path; "
        f"row = b.run_one({name!r}, {config!r}, {json.dumps({k: str(v) for k, v in overrides.items()})}, "
        f"Path({str(tmp)!r}), json.loads(sys.argv[1]), {launcher!r}); print('ROW' + json.dumps(row))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(env)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(line for line in proc.stdout.splitlines() if line.startswith("ROW"))
    return json.loads(line[3:])


def _row(r: dict[str, Any]) -> str:
    each = ", ".join(str(t) for t in r["tokens_per_s_all"])
    return f"| {r['run']} | {r['tokens_per_s']} | {each} | {r['peak_rss_mib']} | {r['wall_s']} | {r['final_loss']} |"


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Training benchmarks (CPU)",
        "",
        "Commands: "
        + ", ".join(
            f"`{command}` ({what})"
            for what, command in (
                ("HyTE-FH vs the twin", result["commands"].get("pair")),
                ("DDP", result["commands"].get("ddp")),
            )
            if command
        )
        + "  ",
        f"{result['machine']}; trunk {result['sizes']}, {result['steps']} optimizer steps, batch "
        f"{result['batch_size_per_process']} per process; tokens/s = median over logging windows after the first,",
        "best of the interleaved rounds (the CPUs are shared with other jobs: expect noise).",
        "Real, unpadded tokens (MLM: text tokens; contrastive: query + document tokens). Peak RSS: the largest",
        "process of the run (for torchrun, the largest worker or launcher).",
        "",
        "## HyTE-FH vs the Euclidean twin (equal sizes), one process",
        "",
        "| run | tokens/s (best) | tokens/s (each round) | peak RSS MiB | wall s (best round) | final loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(_row(r))
    ratios = result["ratios"]
    if result["runs"]:
        lines += [
            "",
            f"Throughput HyTE-FH / twin: MLM **{ratios['mlm_tokens_per_s_hyte_fh_over_euclidean']:.2f}**, "
            f"contrastive **{ratios['contrastive_tokens_per_s_hyte_fh_over_euclidean']:.2f}**.",
        ]
    if not result["ddp"]:
        return "\n".join([*lines, ""])
    lines += [
        "",
        "## DDP (torchrun, gloo): 2 processes x 1 thread vs 1 process x 2 threads, HyTE-FH contrastive",
        "",
        "| run | tokens/s (best) | tokens/s (each round) | peak RSS MiB | wall s (best round) | final loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["ddp"]:
        lines.append(_row(r))
    load = result.get("load_average") or {}
    zero2 = ratios.get("zero2_2proc_speedup")
    dense = ratios.get("ddp_dense_allreduce_2proc_speedup")
    lines += [
        "",
        f"Speed-up of 2 processes over 1 (tokens/s): DDP **{ratios['ddp_2proc_speedup']:.2f}**"
        + (f", DeepSpeed ZeRO-2 (configs/deepspeed/ds_config.json, gloo) **{zero2:.2f}**" if zero2 else "")
        + (
            f", DDP with the dense all-reduce (ddp_sparse_embedding_hook=false; the DDP row all-reduces only the "
            f"embedding rows some process touched) **{dense:.2f}**"
            if dense
            else ""
        )
        + ".",
        "",
    ]
    if load:
        lines += [
            f"Load average: {load['1min_at_start']} (1 min, at the start), {load['5min_at_end']} (5 min, at the "
            f"end) on {os.cpu_count()} CPUs; above the CPU count the runs shared the cores with other jobs, which "
            "hurts the 2-thread process most (its threads wait for each other): the speed-up is then overstated.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
