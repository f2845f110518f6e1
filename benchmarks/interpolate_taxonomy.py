"""Weight interpolation between the taxonomy recipe's starting model and its trained one (the trade-off between
ancestor retrieval and general retrieval).

The recipe's head starts as the base model itself (direction layer identity, every radius ``r0``): at the
start it ranks exactly as zero-shot MiniLM. Training on the taxonomy lifts broader retrieval and costs general
retrieval (faq-dev). Averaging the two sets of weights, ``start + alpha (trained - start)`` (WiSE-FT, Wortsman
et al. 2022), walks the path between them; this script measures where on it the trade-off lies, on the models
``bench_taxonomy.py --out RUNS`` trained (``RUNS/<tag>/{hyte_h,twin}-<seed>/final``, their split in
``RUNS/<tag>/sets``).
Nothing is trained: the starting weights are rebuilt from each run's ``config.yaml`` (``build_training_model``
after seeding as the trainer does), and ``alpha = 1`` is the trained model.

Per alpha it writes what ``bench_taxonomy.py`` writes (means, paired intervals) and the selection score of
``tune_taxonomy.py`` (broader gain over zero-shot minus every loss beyond 1 point on synonym and faq-dev).
Choose alpha on ``--part tune``, report on ``--part report``:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/interpolate_taxonomy.py --taxonomies wordnet icd10cm \\
        --runs runs/bench_taxonomy/wordnet runs/bench_taxonomy/icd10cm --part tune --seeds 1 --alphas 0.25 0.5 0.75 1 \\
        --out runs/interpolate-tune
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_taxonomy as bench
import tune_taxonomy

import lorentz_rag
from lorentz_rag.models.hf_base import cached_base_states
from lorentz_rag.training.config import load_config
from lorentz_rag.training.trainer import build_training_model


def interpolate_state(
    start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``start + alpha (end - start)`` for every floating-point tensor (others are taken from ``end``); the two
    state dicts must hold the same names and shapes."""
    if start.keys() != end.keys():
        missing, extra = sorted(end.keys() - start.keys()), sorted(start.keys() - end.keys())
        raise ValueError(
            f"the state dicts differ: only in the trained one {missing}, only in the start {extra}"
        )
    out = {}
    for name, value in end.items():
        if start[name].shape != value.shape:
            raise ValueError(f"{name}: start {tuple(start[name].shape)}, trained {tuple(value.shape)}")
        if value.is_floating_point():
            first = start[name].to(value.dtype)
            out[name] = first + alpha * (value - first)
        else:
            out[name] = value
    return out


def start_model(run: Path) -> nn.Module:
    """The weights ``run`` started from: its saved config's model, built after seeding as the trainer does."""
    config = load_config(run / "config.yaml", [], dotenv_dir=None)
    torch.manual_seed(config.train_args.seed)
    return build_training_model(config)


def interpolated_model(run: Path, alpha: float, max_seq_length: int | None = None) -> nn.Module:
    """``run``'s final model with its weights moved to ``start + alpha (trained - start)``; ``max_seq_length``:
    the length it truncates texts to, instead of the one it was trained with."""
    trained = lorentz_rag.load_model(run / "final")
    if alpha != 1:
        state = interpolate_state(start_model(run).state_dict(), trained.state_dict(), alpha)
        trained.load_state_dict(state, strict=True)
    if max_seq_length is not None:
        trained.settings.max_seq_length = max_seq_length
    return trained.eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        required=True,
        help="bench_taxonomy.py --out folders: one for all taxonomies, or one each",
    )
    parser.add_argument("--taxonomies", nargs="+", default=["wordnet", "icd10cm"])
    parser.add_argument(
        "--part", choices=["report", "tune", "test"], required=True, help="test: bench --quick's"
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=42)
    parser.add_argument("--alphas", nargs="+", type=float, required=True)
    parser.add_argument("--models", nargs="+", choices=list(bench.MODELS), default=list(bench.MODELS))
    parser.add_argument(
        "--max-seq-length",
        type=int,
        default=None,
        help="evaluate the trained models truncating at this length (default: the one they were trained with)",
    )
    parser.add_argument("--zero-shot-cache", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if len(args.runs) not in (1, len(args.taxonomies)):
        parser.error(f"--runs: give one folder, or one per taxonomy ({len(args.taxonomies)})")
    seeds = [args.first_seed + i for i in range(args.seeds)]
    zero_shot = lorentz_rag.load_model("all-MiniLM-L6-v2")
    results: dict[str, Any] = {"settings": {**vars(args), "seeds": seeds}, "alphas": {}}
    for alpha in args.alphas:
        results["alphas"][str(alpha)] = {"taxonomies": {}, "settings": results["settings"]}
    for i, taxonomy in enumerate(args.taxonomies):
        tag = Path(taxonomy).stem.split(".")[0]
        root = Path(args.runs[i if len(args.runs) > 1 else 0]) / tag
        sets = root / "sets"
        with cached_base_states():
            zero = bench._zero_shot(zero_shot, sets, args.part, tag, args.zero_shot_cache)
            for alpha in args.alphas:
                res: dict[str, Any] = {"zero_shot": zero, "trained": {}}
                for name in args.models:
                    res["trained"][name] = [
                        bench._timed(
                            bench.evaluate,
                            f"{tag} {name} seed {seed} alpha {alpha}",
                            interpolated_model(root / f"{name}-{seed}", alpha, args.max_seq_length),
                            sets,
                            args.part,
                            True,
                        )
                        for seed in seeds
                    ]
                res["summary"] = bench._summary(res)
                res["score"] = {
                    name: tune_taxonomy.selection_score(zero, runs) for name, runs in res["trained"].items()
                }
                results["alphas"][str(alpha)]["taxonomies"][taxonomy] = res
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "interpolate.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    report = _report(results)
    (out / "interpolate.md").write_text(report, encoding="utf-8")
    print(report)
    return results


def _report(results: dict[str, Any]) -> str:
    """One table per taxonomy: a row per alpha and model (means over seeds, nDCG@10 x 100), then every alpha's
    full bench_taxonomy report."""
    settings = results["settings"]
    lines = [
        f"# Weight interpolation start -> trained ({settings['part']} halves, seeds {settings['seeds']})",
        "",
    ]
    metrics = ("broader", "synonym", "faq_dev", "narrower", "subsumption_f1", "depth_spearman")
    for taxonomy in settings["taxonomies"]:
        zero = results["alphas"][str(settings["alphas"][0])]["taxonomies"][taxonomy]["zero_shot"]
        lines += [f"## {taxonomy}", "", "| alpha | model | score | " + " | ".join(metrics) + " |"]
        lines.append("|---" * (3 + len(metrics)) + "|")
        lines.append("| 0 (zero-shot) | - | - | " + " | ".join(_cell(zero, m) for m in metrics) + " |")
        for alpha, per_alpha in results["alphas"].items():
            res = per_alpha["taxonomies"][taxonomy]
            for name, runs in res["trained"].items():
                cells = [_cell_runs(runs, m) for m in metrics]
                lines.append(f"| {alpha} | {name} | {res['score'][name]:+.2f} | " + " | ".join(cells) + " |")
        lines.append("")
    for alpha, per_alpha in results["alphas"].items():
        lines += [f"# alpha = {alpha}", "", bench._report(per_alpha)]
    return "\n".join(lines)


def _scale(metric: str) -> float:
    return 1.0 if metric in ("subsumption_f1", "depth_spearman") else 100.0


def _format(value: float, metric: str) -> str:
    return f"{value:.3f}" if _scale(metric) == 1.0 else f"{value * 100:.2f}"


def _cell(values: dict[str, Any], metric: str) -> str:
    return _format(tune_taxonomy._mean(values[metric]), metric) if metric in values else "-"


def _cell_runs(runs: list[dict[str, Any]], metric: str) -> str:
    return _format(float(np.mean([tune_taxonomy._mean(r[metric]) for r in runs])), metric)


if __name__ == "__main__":
    main()
