"""The quickstart's statistics, comparisons, tables, report and plots, computed from what it measured.

Every sentence about the paper's claims is derived from the measured numbers: each comparison states its
mean paired difference, the 95% bootstrap interval (seeds and queries resampled,
:func:`lorentz_rag.eval.stats.paired_bootstrap`) and whether the claim holds, never a canned conclusion.
Numbers are those of the *report* halves of the evaluation sets; the tune halves are for tuning only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lorentz_rag.eval.stats import mean_sd, paired_bootstrap
from lorentz_rag.training.logging import read_metrics

__all__ = [
    "BEIR_SETS",
    "MAIN_KEYS",
    "PARITY_MARGIN",
    "RADIUS_GROWTH_TARGET",
    "RADIUS_RHO_TARGET",
    "Row",
    "compare",
    "format_comparison_table",
    "format_outcomes",
    "render_report",
    "summarize",
    "write_plots",
]


@dataclass(frozen=True)
class Row:
    """One trained row of the quickstart: ``config`` (a ``configs/quickstart`` stage) plus ``overrides``."""

    key: str
    label: str
    config: str
    overrides: dict[str, Any] = field(default_factory=dict)
    role: str = "main"
    #: An ablation's reference row (the main row it changes one thing of).
    base: str | None = None


#: The rows every run trains: HyTE-H and its two twins.
MAIN_KEYS = ("hyte_h", "euclidean_distance", "euclidean")
#: The evaluation sets (BEIR folders); the first is where hierarchy matters.
BEIR_SETS = ("wordnet-hier", "faq-dev")
#: Parity on faq-dev holds when the interval of HyTE-H minus a rival stays above -PARITY_MARGIN.
PARITY_MARGIN = 0.01
#: The radius claim: mean Spearman(level, radius) and level 1 -> 5 growth over seeds.
RADIUS_RHO_TARGET = 0.4
RADIUS_GROWTH_TARGET = 0.10
#: The hierarchical-retrieval gain the science issue aims for (nDCG@10, as a fraction).
HIER_AIM = 0.015
PART = "report"


def _seeds(entry: Mapping[str, Any]) -> dict[str, Any]:
    return dict(entry["seeds"])


def summarize(measured: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean +- sd over seeds of every row on the report parts: retrieval metrics and the probe."""
    out: dict[str, dict[str, Any]] = {}
    for key, entry in measured.items():
        seeds = _seeds(entry)
        row: dict[str, Any] = {
            "label": entry.get("label", key),
            "role": entry.get("role", ""),
            "n_seeds": len(seeds),
        }
        for name in BEIR_SETS:
            row[name] = {}
            for metric in ("ndcg@10", "mrr@10", "recall@10"):
                mean, sd = mean_sd([float(e[name][PART][metric]) for e in seeds.values()])
                row[name][metric] = {"mean": mean, "sd": sd}
        growth = [float(e["probe"][PART]["relative_increase"]) for e in seeds.values()]
        rho = [float(e["probe"][PART]["spearman"]["rho"]) for e in seeds.values()]
        g_mean, g_sd = mean_sd(growth)
        r_mean, r_sd = mean_sd(rho)
        row["probe"] = {
            "growth": {"mean": g_mean, "sd": g_sd},
            "spearman": {"mean": r_mean, "sd": r_sd},
            "radius_kind": next(iter(seeds.values()))["probe"][PART]["radius_kind"],
        }
        out[key] = row
    return out


def _per_query(entry: Mapping[str, Any], name: str, metric: str, seeds: Sequence[str]) -> np.ndarray:
    """``[len(seeds), Q]`` per-query scores (queries in sorted id order); a one-seed baseline gives ``[Q]``."""
    table = _seeds(entry)
    if list(table) == ["-"]:
        pq = table["-"][name][PART]["per_query"]
        return np.array([pq[q][metric] for q in sorted(pq)])
    rows = []
    for s in seeds:
        pq = table[s][name][PART]["per_query"]
        rows.append([pq[q][metric] for q in sorted(pq)])
    return np.array(rows)


def _paired(
    measured: Mapping[str, Any], a: str, b: str, name: str, metric: str = "ndcg@10"
) -> dict[str, Any]:
    seeds_a = list(_seeds(measured[a]))
    seeds_b = list(_seeds(measured[b]))
    common = seeds_a if seeds_b == ["-"] else [s for s in seeds_a if s in seeds_b]
    result = paired_bootstrap(
        _per_query(measured[a], name, metric, common), _per_query(measured[b], name, metric, common)
    )
    return {**result, "seeds": common}


def compare(measured: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The comparisons the quickstart is about, each with its measured interval and whether it holds.

    - HyTE-H beats each twin and the zero-shot base on hierarchical retrieval (wordnet-hier nDCG@10):
      HOLDS when the 95% interval of the paired difference lies above 0.
    - HyTE-H is at parity or better on faq-dev nDCG@10: HOLDS when the interval lies above -1 point.
    - HyTE-H's radius rises with depth: HOLDS when the mean Spearman >= 0.4 and the mean growth from level
      1 to 5 >= 10%.
    - Each ablation against the row it changes (informational: the interval is reported, no claim).
    - The Euclidean-distance twin's norm against depth (informational: the fair twin can use its norm too).
    """
    out: list[dict[str, Any]] = []
    if "hyte_h" not in measured:
        return out
    label = {k: v.get("label", k) for k, v in measured.items()}
    rivals = [r for r in ("euclidean_distance", "euclidean", "minilm_zero_shot") if r in measured]
    for rival in rivals:
        d = _paired(measured, "hyte_h", rival, "wordnet-hier")
        out.append(
            {
                "claim": f"HyTE-H beats {label[rival]} on wordnet-hier nDCG@10",
                "kind": "retrieval",
                "set": "wordnet-hier",
                "a": "hyte_h",
                "b": rival,
                **d,
                "holds": d["low"] > 0,
                "meets_aim": d["low"] > 0 and d["mean"] >= HIER_AIM,
            }
        )
    for rival in rivals:
        d = _paired(measured, "hyte_h", rival, "faq-dev")
        out.append(
            {
                "claim": f"HyTE-H at parity or better than {label[rival]} on faq-dev nDCG@10 "
                f"(interval above -{100 * PARITY_MARGIN:g} point)",
                "kind": "parity",
                "set": "faq-dev",
                "a": "hyte_h",
                "b": rival,
                **d,
                "holds": d["low"] > -PARITY_MARGIN,
            }
        )
    summary = summarize(measured)
    probe = summary["hyte_h"]["probe"]
    out.append(
        {
            "claim": f"HyTE-H radius rises with WordNet depth (Spearman >= {RADIUS_RHO_TARGET:g}, growth "
            f"level 1 -> 5 >= {100 * RADIUS_GROWTH_TARGET:g}%)",
            "kind": "radius",
            "a": "hyte_h",
            "spearman": probe["spearman"],
            "growth": probe["growth"],
            "holds": probe["spearman"]["mean"] >= RADIUS_RHO_TARGET
            and probe["growth"]["mean"] >= RADIUS_GROWTH_TARGET,
        }
    )
    if "euclidean_distance" in measured:
        twin = summary["euclidean_distance"]["probe"]
        out.append(
            {
                "claim": "Euclidean-distance twin norm vs WordNet depth (informational)",
                "kind": "radius_info",
                "a": "euclidean_distance",
                "spearman": twin["spearman"],
                "growth": twin["growth"],
                "holds": None,
            }
        )
    for key, entry in measured.items():
        if entry.get("role") != "ablation" or "base" not in entry:
            continue
        for name in BEIR_SETS:
            d = _paired(measured, key, entry["base"], name)
            out.append(
                {
                    "claim": f"ablation {label[key]} minus {label[entry['base']]} on {name} nDCG@10",
                    "kind": "ablation",
                    "set": name,
                    "a": key,
                    "b": entry["base"],
                    **d,
                    "holds": None,
                }
            )
    return out


def _pm(stat: Mapping[str, float], scale: float = 100.0, fmt: str = ".2f", sign: bool = False) -> str:
    mean, sd = scale * stat["mean"], scale * stat["sd"]
    return f"{mean:{'+' if sign else ''}{fmt}} +- {sd:{fmt.lstrip('+')}}"


def format_comparison_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per model, mean +- sd over seeds on the report parts (metrics x100)."""
    header = [
        "model",
        "seeds",
        "wordnet-hier nDCG@10",
        "wordnet-hier MRR@10",
        "faq-dev nDCG@10",
        "faq-dev MRR@10",
        "depth Spearman",
        "growth L1->L5 (%)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for key, row in summary.items():
        cells = [
            row["label"] + (" *(ablation)*" if row["role"] == "ablation" else ""),
            str(row["n_seeds"]) if key != "minilm_zero_shot" else "-",
            _pm(row["wordnet-hier"]["ndcg@10"]),
            _pm(row["wordnet-hier"]["mrr@10"]),
            _pm(row["faq-dev"]["ndcg@10"]),
            _pm(row["faq-dev"]["mrr@10"]),
            _pm(row["probe"]["spearman"], 1.0, "+.3f"),
            _pm(row["probe"]["growth"], 100.0, ".1f", sign=True),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_outcomes(comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per comparison, stating what was measured and whether the claim held."""
    lines = []
    for c in comparisons:
        verdict = {True: "HOLDS", False: "DOES NOT HOLD", None: "measured"}[c["holds"]]
        if c["kind"] in ("retrieval", "parity", "ablation"):
            aim = ""
            if c["kind"] == "retrieval":
                aim = "; meets the +1.5 aim" if c.get("meets_aim") else "; below the +1.5 aim"
            lines.append(
                f"- {c['claim']}: {verdict} (paired difference {100 * c['mean']:+.2f} points, 95% interval "
                f"[{100 * c['low']:+.2f}, {100 * c['high']:+.2f}], {c['n_seeds']} seeds x "
                f"{c['n_queries']} queries{aim})"
            )
        else:
            lines.append(
                f"- {c['claim']}: {verdict} (Spearman {_pm(c['spearman'], 1.0, '+.3f')}, growth "
                f"{_pm(c['growth'], 100.0, '.1f', sign=True)}%)"
            )
    return lines


def render_report(results: Mapping[str, Any]) -> str:
    """``report.md``: settings, the table, measured outcomes with intervals, timings, plots."""
    plan = results["plan"]
    summary = results["summary"]
    n_queries = {
        name: next(iter(next(iter(results["models"].values()))["seeds"].values()))[name][PART]["meta"][
            "n_queries"
        ]
        for name in BEIR_SETS
    }
    lines = [
        "# lorentz-rag quickstart report",
        "",
        f"Seeds {plan['seeds']}{' (--fast: a tiny smoke run, numbers mean nothing)' if plan['fast'] else ''}; "
        f"every trained row: {plan['steps']} steps on the same "
        f"{sum(results['data']['training_pairs'].values())} pairs "
        f"({', '.join(f'{k}: {v}' for k, v in results['data']['training_pairs'].items())}) and the same WordNet "
        f"edges per seed; HyTE-FH (tiny, one seed): {plan['fh_mlm_steps']} MLM + {plan['fh_contrastive_steps']} "
        "contrastive steps.",
        f"Numbers are on the **report** halves: wordnet-hier ({n_queries['wordnet-hier']} queries: held-out "
        f"synset name or gloss -> its ancestors, graded by hops), faq-dev ({n_queries['faq-dev']} questions), "
        "and the hierarchy probe's report half. Settings were chosen on the tune halves only "
        "(benchmarks/tune_quickstart.py).",
        "",
        "## Comparison (mean +- sd over seeds)",
        "",
        format_comparison_table(summary),
        "",
        "Metrics x100. Depth: Spearman's correlation of WordNet level (1 general .. 5 specific) with the radius "
        "d(o, x) (Euclidean models: the norm; MiniLM: its pre-normalisation norm), and the relative change of "
        "the mean from level 1 to level 5.",
        "",
        "## Outcomes (as measured)",
        "",
        *format_outcomes(results["comparisons"]),
        "",
        "A retrieval claim HOLDS when the 95% bootstrap interval of the paired difference (seeds and queries "
        f"resampled) lies above 0; parity when it lies above -{100 * PARITY_MARGIN:g} point.",
    ]
    step0 = results.get("step0")
    if step0:
        zero = summary.get("minilm_zero_shot")
        lines += [
            "",
            "## Where each HyTE-H head starts (untrained, report halves)",
            "",
            "| head at step 0 | wordnet-hier nDCG@10 | faq-dev nDCG@10 |",
            "|---|---:|---:|",
        ]
        if zero:
            lines.append(
                f"| all-MiniLM-L6-v2 (zero-shot) | {100 * zero['wordnet-hier']['ndcg@10']['mean']:.2f} "
                f"| {100 * zero['faq-dev']['ndcg@10']['mean']:.2f} |"
            )
        for head, metrics in step0.items():
            lines.append(f"| {head} | {100 * metrics['wordnet-hier']:.2f} | {100 * metrics['faq-dev']:.2f} |")
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


def write_plots(results: Mapping[str, Any], out_dir: Path, train_logs: Mapping[str, Path]) -> list[str]:
    """``retrieval.png`` (nDCG@10 per model and set, mean +- sd over seeds) and ``training_loss.png`` (loss
    curves of the first seed's runs). Returns the file names written; the probe plots come from the probe."""
    from matplotlib.figure import Figure

    summary = results["summary"]
    names = list(summary)
    written = []
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(BEIR_SETS)
    for j, name in enumerate(BEIR_SETS):
        means = [100 * summary[k][name]["ndcg@10"]["mean"] for k in names]
        sds = [100 * summary[k][name]["ndcg@10"]["sd"] for k in names]
        ax.bar([i + j * width for i in range(len(names))], means, width, yerr=sds, capsize=2, label=name)
    ax.set_xticks([i + width * (len(BEIR_SETS) - 1) / 2 for i in range(len(names))])
    ax.set_xticklabels([summary[k]["label"] for k in names], fontsize=6, rotation=25, ha="right")
    ax.set_ylabel("nDCG@10 x 100 (report half)")
    ax.set_title("Retrieval, mean +- sd over seeds")
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
        ax.set_title("Training loss (first seed)")
        ax.legend(fontsize=7)
        fig.savefig(out_dir / "training_loss.png", dpi=110)
        written.append("training_loss.png")
    return written


def _read_losses(run_dir: Path) -> tuple[list[int], list[float]] | None:
    """``(steps, losses)`` from a training run folder's ``metrics.jsonl``; None if it has none."""
    if not (run_dir / "metrics.jsonl").is_file():
        return None
    records = [r for r in read_metrics(run_dir) if isinstance(r.get("loss"), (int, float))]
    if not records:
        return None
    return [int(r["step"]) for r in records], [float(r["loss"]) for r in records]
