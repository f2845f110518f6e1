"""The quickstart's comparisons, tables, report and plots, computed from its ``results.json`` content.

Every sentence about the paper's claims is derived from the measured numbers: each comparison states
whether it holds, never a canned conclusion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MODEL_KEYS",
    "MODEL_LABELS",
    "TABLE_METRICS",
    "compare",
    "format_comparison_table",
    "format_outcomes",
    "level_means",
    "probe_growth",
    "probe_rho",
    "render_report",
    "write_plots",
]

#: Models in the order they are reported, with the label printed in tables.
MODEL_KEYS = ("minilm_zero_shot", "euclidean", "hyte_h", "hyte_fh")
MODEL_LABELS = {
    "minilm_zero_shot": "all-MiniLM-L6-v2 (zero-shot)",
    "euclidean": "Euclidean twin",
    "hyte_h": "HyTE-H",
    "hyte_fh": "HyTE-FH (tiny)",
}
#: Retrieval metrics shown in the comparison table (all of them go to results.json).
TABLE_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")


def probe_growth(hierarchy: Mapping[str, Any]) -> float:
    """Relative change of the mean radius (or norm) from the first to the last level, in percent."""
    return 100.0 * float(hierarchy["relative_increase"])


def probe_rho(hierarchy: Mapping[str, Any]) -> float:
    """Spearman's rank correlation of level and radius (or norm) over all probe texts."""
    return float(hierarchy["spearman"]["rho"])


def level_means(hierarchy: Mapping[str, Any]) -> dict[int, float]:
    """``{level: mean radius or norm}``, levels as integers in increasing order (JSON keys are strings)."""
    return {
        int(k): float(v["mean"]) for k, v in sorted(hierarchy["levels"].items(), key=lambda kv: int(kv[0]))
    }


def compare(
    models: Mapping[str, Mapping[str, Any]], *, flat_tolerance_pct: float = 5.0
) -> list[dict[str, Any]]:
    """The comparisons the quickstart is about, each with both measured values and whether it holds.

    Retrieval: HyTE-H vs the Euclidean twin and vs the zero-shot base on nDCG@10 and MRR@10 (higher wins;
    a tie does not count as a win). Hierarchy: HyTE-H's radius grows from level 1 to the deepest level
    (growth > 0 and Spearman correlation of level and radius > 0), and the twin's norm does not grow by more
    than ``flat_tolerance_pct`` percent.
    """
    out: list[dict[str, Any]] = []
    for rival in ("euclidean", "minilm_zero_shot"):
        if "hyte_h" not in models or rival not in models:
            continue
        for metric in ("ndcg@10", "mrr@10"):
            a = float(models["hyte_h"]["retrieval"][metric])
            b = float(models[rival]["retrieval"][metric])
            out.append(
                {
                    "claim": f"HyTE-H beats {MODEL_LABELS[rival]} on {metric}",
                    "kind": "retrieval",
                    "metric": metric,
                    "a": "hyte_h",
                    "b": rival,
                    "a_value": a,
                    "b_value": b,
                    "delta": a - b,
                    "holds": a > b,
                }
            )
    if "hyte_h" in models:
        h = models["hyte_h"]["hierarchy"]
        growth, rho = probe_growth(h), probe_rho(h)
        out.append(
            {
                "claim": "HyTE-H radius grows with WordNet depth",
                "kind": "hierarchy",
                "metric": "radius growth level 1 -> last (%)",
                "a": "hyte_h",
                "a_value": growth,
                "spearman": rho,
                "holds": bool(growth > 0 and rho > 0),
            }
        )
    if "euclidean" in models:
        growth = probe_growth(models["euclidean"]["hierarchy"])
        out.append(
            {
                "claim": f"Euclidean twin norm does not grow with depth (growth <= {flat_tolerance_pct:g}%)",
                "kind": "hierarchy",
                "metric": "norm growth level 1 -> last (%)",
                "a": "euclidean",
                "a_value": growth,
                "holds": bool(growth <= flat_tolerance_pct),
            }
        )
    return out


def format_comparison_table(models: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per model, retrieval metrics (x100) and the probe's growth."""
    header = ["model", *TABLE_METRICS, "radius/norm growth L1->L5 (%)", "probe spearman"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for key in MODEL_KEYS:
        if key not in models:
            continue
        m = models[key]
        cells = [MODEL_LABELS[key]]
        cells += [f"{100 * float(m['retrieval'][k]):.2f}" for k in TABLE_METRICS]
        cells += [f"{probe_growth(m['hierarchy']):+.1f}", f"{probe_rho(m['hierarchy']):+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_outcomes(comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per comparison, stating what was measured and whether the claim held."""
    lines = []
    for c in comparisons:
        verdict = "HOLDS" if c["holds"] else "DOES NOT HOLD"
        if c["kind"] == "retrieval":
            lines.append(
                f"- {c['claim']}: {verdict} ({100 * c['a_value']:.2f} vs {100 * c['b_value']:.2f}, "
                f"{100 * c['delta']:+.2f} points)"
            )
        else:
            extra = f", Spearman {c['spearman']:+.3f}" if "spearman" in c else ""
            lines.append(f"- {c['claim']}: {verdict} ({c['metric']}: {c['a_value']:+.1f}{extra})")
    return lines


def render_report(results: Mapping[str, Any]) -> str:
    """``report.md``: settings, the comparison table, measured outcomes, probe means, timings, plots."""
    models = results["models"]
    plan = results["plan"]
    lines = [
        "# hyprag quickstart report",
        "",
        f"Seed {plan['seed']}{' (--fast: a tiny smoke run, numbers mean nothing)' if plan['fast'] else ''}; "
        f"HyTE-H and the Euclidean twin: {plan['steps']} steps each on the same "
        f"{sum(results['data']['training_pairs'].values())} pairs "
        f"({', '.join(f'{k}: {v}' for k, v in results['data']['training_pairs'].items())}); "
        f"HyTE-FH: {plan['fh_mlm_steps']} MLM + {plan['fh_contrastive_steps']} contrastive steps.",
        f"Retrieval on `{results['data']['eval']}` ({_n_queries(models)} queries); hierarchy probe on "
        f"`{results['data']['probe']}`. The quickstart's settings were tuned on this same faq-dev set "
        "(benchmarks/results/quickstart_tuning.md), so read the numbers as development-set results.",
        "",
        "## Comparison",
        "",
        format_comparison_table(models),
        "",
        "Metrics x100. Growth: relative change of the mean hyperbolic radius d(o, x) (Euclidean models: "
        "the embedding norm) from WordNet level 1 (general) to level 5 (specific).",
        "",
        "## Outcomes (as measured)",
        "",
        *format_outcomes(results["comparisons"]),
        "",
        "## Hierarchy probe: mean radius / norm by level",
        "",
    ]
    levels = sorted({lvl for m in models.values() for lvl in level_means(m["hierarchy"])})
    lines.append("| model | " + " | ".join(f"level {lvl}" for lvl in levels) + " | measure |")
    lines.append("|---|" + "---:|" * len(levels) + "---|")
    for key in MODEL_KEYS:
        if key in models:
            h = models[key]["hierarchy"]
            means = level_means(h)
            cells = [f"{means[lvl]:.4f}" if lvl in means else "-" for lvl in levels]
            lines.append(f"| {MODEL_LABELS[key]} | " + " | ".join(cells) + f" | {h['radius_kind']} |")
    cpu = results.get("cpu_seconds", {})
    lines += ["", "## Stage timings", "", "| stage | wall s | CPU s |", "|---|---:|---:|"]
    for stage, seconds in results["timings_s"].items():
        lines.append(f"| {stage} | {seconds:.1f} | {cpu.get(stage, math.nan):.1f} |")
    lines.append(f"| **total** | **{results['total_seconds']:.1f}** | {sum(cpu.values()):.1f} |")
    lines += ["", f"Peak memory (RSS): {results['peak_rss_mb']:.0f} MiB.", "", "## Plots", ""]
    for plot in results.get("plots", []):
        lines.append(f"![{plot}]({plot})")
    lines.append("")
    return "\n".join(lines)


def _n_queries(models: Mapping[str, Mapping[str, Any]]) -> int | str:
    for m in models.values():
        return m["retrieval"].get("meta", {}).get("n_queries", "?")
    return "?"


def write_plots(results: Mapping[str, Any], out_dir: Path, train_logs: Mapping[str, Path]) -> list[str]:
    """``retrieval.png`` (metrics per model) and ``training_loss.png`` (loss curves from the
    ``metrics.jsonl`` of each run folder in ``train_logs``). Returns the file names written; the hierarchy
    plots come from the probe itself."""
    from matplotlib.figure import Figure

    models = results["models"]
    names = [k for k in MODEL_KEYS if k in models]
    written = []

    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(TABLE_METRICS)
    for j, metric in enumerate(TABLE_METRICS):
        values = [100 * float(models[k]["retrieval"][metric]) for k in names]
        ax.bar([i + j * width for i in range(len(names))], values, width, label=metric)
    ax.set_xticks([i + width * (len(TABLE_METRICS) - 1) / 2 for i in range(len(names))])
    ax.set_xticklabels([MODEL_LABELS[k] for k in names], fontsize=8)
    ax.set_ylabel("x 100")
    ax.set_title(f"Retrieval on {Path(results['data']['eval']).name}")
    ax.legend(fontsize=8)
    fig.savefig(out_dir / "retrieval.png", dpi=110)
    written.append("retrieval.png")

    curves = {name: _read_losses(path) for name, path in train_logs.items()}
    curves = {name: c for name, c in curves.items() if c}
    if curves:
        fig = Figure(figsize=(6.5, 4.2), layout="constrained")
        ax = fig.add_subplot()
        for name, (steps, losses) in curves.items():
            ax.plot(steps, losses, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("Training loss")
        ax.legend(fontsize=8)
        fig.savefig(out_dir / "training_loss.png", dpi=110)
        written.append("training_loss.png")
    return written


def _read_losses(run_dir: Path) -> tuple[list[int], list[float]] | None:
    """``(steps, losses)`` from a training run folder's ``metrics.jsonl``; None if it has none."""
    from hyprag.training.logging import read_metrics

    if not (run_dir / "metrics.jsonl").is_file():
        return None
    records = [r for r in read_metrics(run_dir) if isinstance(r.get("loss"), (int, float))]
    if not records:
        return None
    return [int(r["step"]) for r in records], [float(r["loss"]) for r in records]
