"""Try settings of the taxonomy recipe on the **tune** halves: each variant is a set of config
overrides applied to both configs; every variant trains HyTE-H (and, with ``--models``, the twin) for each
seed on each taxonomy and is measured as ``bench_taxonomy.py --part tune`` measures, all runs of a taxonomy
sharing one base-state cache (each distinct text through the frozen base once). Writes ``OUT/tune.json`` and
``OUT/tune.md``: a row per variant with the selection score, the mean over taxonomies of the broader gain over
zero-shot minus every loss beyond 1 point on synonym and faq-dev (nDCG@10 x 100).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_taxonomy.py --taxonomies wordnet icd10cm \\
        --variant base= --variant steps100=train_args.max_steps=100 --out runs/tune_taxonomy
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_taxonomy as bench

from lorentz_rag.models.hf_base import cached_base_states

METRICS = (
    "broader",
    "broader_relation",
    "narrower",
    "synonym",
    "faq_dev",
    "depth_spearman",
    "subsumption_f1",
)


def _mean(value: Any) -> float:
    return float(np.mean(value)) if isinstance(value, list) else float(value)


def selection_score(zero: dict[str, Any], runs: list[dict[str, Any]]) -> float:
    """Broader gain over zero-shot minus losses beyond 1 point on synonym and faq-dev (points, mean of runs)."""
    gain = np.mean([_mean(r["broader"]) - _mean(zero["broader"]) for r in runs]) * 100
    penalty = 0.0
    for metric in ("synonym", "faq_dev"):
        loss = np.mean([_mean(zero[metric]) - _mean(r[metric]) for r in runs]) * 100
        penalty += max(0.0, loss - 1.0)
    return float(gain - penalty)


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition("=")
    return name, bench._overrides([item for item in rest.split(",") if item])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--taxonomies", nargs="+", default=["wordnet", "icd10cm"])
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        metavar="NAME=KEY=VALUE,KEY=VALUE",
        help="a named set of config overrides (NAME= alone: the configs as they are)",
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--models", nargs="+", choices=list(bench.MODELS), default=["hyte_h"])
    parser.add_argument("--zero-shot-cache", default=None)
    parser.add_argument("--out", default="runs/tune_taxonomy")
    args = parser.parse_args(argv)
    variants = dict(_variant(v) for v in args.variant)
    out = Path(args.out)
    zero_shot = bench.lorentz_rag.load_model("all-MiniLM-L6-v2")
    seeds = [42 + i for i in range(args.seeds)]
    bench_args = argparse.Namespace(
        quick=False, part="tune", zero_shot_cache=args.zero_shot_cache, models=args.models
    )
    results: dict[str, Any] = {
        "variants": {k: {"overrides": v} for k, v in variants.items()},
        "taxonomies": {},
    }
    for taxonomy in args.taxonomies:
        per_variant = {}
        with cached_base_states():
            for name, overrides in variants.items():
                per_variant[name] = bench._one_taxonomy(
                    taxonomy, bench_args, seeds, None, out / name, overrides, zero_shot
                )
        results["taxonomies"][taxonomy] = per_variant
    for name in variants:
        scores = [
            selection_score(res[name]["zero_shot"], res[name]["trained"]["hyte_h"])
            for res in results["taxonomies"].values()
        ]
        results["variants"][name]["score"] = float(np.mean(scores))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    lines = [
        "| variant | overrides | score | "
        + " | ".join(f"{t}: {m}" for t in args.taxonomies for m in METRICS)
        + " |"
    ]
    lines.append("|---" * (3 + len(args.taxonomies) * len(METRICS)) + "|")
    for name, info in results["variants"].items():
        cells = []
        for taxonomy in args.taxonomies:
            runs = results["taxonomies"][taxonomy][name]["trained"]["hyte_h"]
            cells += [f"{np.mean([_mean(r[m]) for r in runs]):.4f}" for m in METRICS]
        lines.append(
            f"| {name} | {json.dumps(info['overrides'])} | {info['score']:+.2f} | " + " | ".join(cells) + " |"
        )
    (out / "tune.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
