"""``lorentz-rag quickstart``: train and compare hyperbolic and Euclidean retrievers on real data, on a CPU.

The run answers the paper's quality questions on held-out data, over several seeds, with the same budget
for every geometry (docs/design.md, sections 5, 6 and 12):

1. does HyTE-H retrieve better than its Euclidean twins where hierarchy matters (``eval/wordnet-hier``:
   held-out WordNet synset -> its ancestors among 5,000 train glosses, graded by hops)?
2. is it at parity or better on ordinary FAQ retrieval (``eval/faq-dev``)?
3. does its radius grow with WordNet depth (the hierarchy probe, Spearman and level 1 -> 5 growth)?

Models (``configs/quickstart/``): HyTE-H with the ``pooled`` head (starts as zero-shot MiniLM) trained with
geodesic InfoNCE plus the WordNet hierarchy objective; the **Euclidean-distance twin** (the same head,
``y = r u``, Euclidean distance, the same losses in Euclidean form); the **cosine twin** (mean pooling +
Linear, cosine, the same losses); the zero-shot base; ablation rows (no hierarchy loss, the paper's
``token`` head, the ``token_radius`` head, a trainable top base layer); and a tiny HyTE-FH (one seed; it
shows the fully hyperbolic pipeline runs).

Protocol: every trained row runs with each seed of the plan (data order and initialisation); numbers are
reported as mean +- sd over seeds on the *report* halves of the evaluation sets, with paired differences
and a 95% bootstrap interval over seeds and queries (:func:`lorentz_rag.eval.stats.paired_bootstrap`). A claim
HOLDS only when its interval excludes 0 (parity: when it stays above -1 nDCG point). The *tune* halves are
measured too and written to ``results.json`` for ``benchmarks/tune_quickstart.py``, the only place
settings are chosen. With a frozen base, every text runs through MiniLM once per run
(:func:`lorentz_rag.models.hf_base.cached_base_states`), so extra seeds cost only head training.

Stages (each timed and printed): prepare data -> zero-shot base -> untrained heads -> seeds x rows ->
HyTE-FH MLM + contrastive -> report. Training goes through :func:`lorentz_rag.training.trainer.train`; the data
comes from :mod:`lorentz_rag.quickstart_data`, the measurements from :mod:`lorentz_rag.quickstart_eval`, the
statistics and report from :mod:`lorentz_rag.quickstart_report`. This module holds the plan and the run.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorentz_rag._version import __version__
from lorentz_rag.data import bundled
from lorentz_rag.data.bundled import (
    DATA_DIR_ENV,
    faq_dev_path,
    mlm_text_path,
    wordnet_hier_path,
    wordnet_levels_path,
)
from lorentz_rag.errors import names_path
from lorentz_rag.eval.hierarchy import read_level_rows
from lorentz_rag.models import build_model, load_model, packaged_minilm_path
from lorentz_rag.models.hf_base import cached_base_states
from lorentz_rag.quickstart_data import (
    PAIR_FILES,
    prepare_eval_subset,
    prepare_probe_subset,
    prepare_training_pairs,
)
from lorentz_rag.quickstart_eval import (
    EncodeOnce,
    EvalSets,
    evaluate_model,
    evaluate_retrieval,
    probe_hierarchy,
    set_max_length,
)
from lorentz_rag.quickstart_report import (
    MAIN_KEYS,
    Row,
    compare,
    format_comparison_table,
    format_outcomes,
    render_report,
    summarize,
    write_plots,
)
from lorentz_rag.training.config import load_config
from lorentz_rag.training.trainer import train

__all__ = [
    "RESULTS_SCHEMA_VERSION",
    "ROWS",
    "QuickstartPlan",
    "StageTimer",
    "make_plan",
    "quickstart_resources",
    "run_quickstart",
]

RESULTS_SCHEMA_VERSION = 2

#: Plots written by the hierarchy probe (lorentz_rag.eval.hierarchy) into the output folder.
PROBE_PLOTS = ("radius_by_level.png", "embeddings_2d.png")

#: The folder of the quickstart's training configs (a source checkout's ``configs/quickstart``).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "quickstart"
CONFIG_FILES = {
    "euclidean": "euclidean.yaml",
    "euclidean_distance": "euclidean_distance.yaml",
    "hyte_h": "hyte_h.yaml",
    "hyte_fh_mlm": "hyte_fh_mlm.yaml",
    "hyte_fh": "hyte_fh_contrastive.yaml",
}

_NO_HIERARCHY = {"hierarchy_args.weight": 0.0, "hierarchy_args.centripetal_weight": 0.0}

#: Every trained row over seeds: (key, label, config, overrides, main or ablation). The three main rows
#: share pairs, edges, steps, batch size and seeds; each ablation changes one thing of a main row.
ROWS: tuple[Row, ...] = (
    Row("hyte_h", "HyTE-H (pooled head + hierarchy)", "hyte_h", {}, "main"),
    Row("euclidean_distance", "Euclidean-distance twin (+ hierarchy)", "euclidean_distance", {}, "main"),
    Row("euclidean", "cosine twin (+ hierarchy)", "euclidean", {}, "main"),
    Row("hyte_h_no_hierarchy", "HyTE-H pooled, InfoNCE only", "hyte_h", _NO_HIERARCHY, "ablation", "hyte_h"),
    Row(
        "euclidean_distance_no_hierarchy",
        "Euclidean-distance twin, InfoNCE only",
        "euclidean_distance",
        _NO_HIERARCHY,
        "ablation",
        "euclidean_distance",
    ),
    Row(
        "hyte_h_token",
        "HyTE-H token head (paper's, clip 2, OEM) + hierarchy",
        "hyte_h",
        {
            "model_args.hyte_h_head": "token",
            "model_args.pooling": "outward_einstein_midpoint",
            "model_args.max_norm": 2.0,
        },
        "ablation",
        "hyte_h",
    ),
    Row(
        "hyte_h_token_radius",
        "HyTE-H token_radius head (OEM) + hierarchy",
        "hyte_h",
        {"model_args.hyte_h_head": "token_radius", "model_args.pooling": "outward_einstein_midpoint"},
        "ablation",
        "hyte_h",
    ),
    Row(
        "hyte_h_trainable_base",
        "HyTE-H pooled + hierarchy, top base layer trained",
        "hyte_h",
        {"model_args.trainable_base_layers": 1},
        "ablation",
        "hyte_h",
    ),
)


#: Rows of a default run. The trainable-base ablation trains MiniLM's top layer, so no state cache can
#: serve it (about 2 minutes per seed on 2 cores): ``--rows hyte_h_trainable_base`` adds it, and
#: ``benchmarks/tune_quickstart.py`` measures it over seeds.
DEFAULT_ROWS = tuple(row.key for row in ROWS if row.key != "hyte_h_trainable_base")


# --- the plan: what to run, derived from the options --------------------------------------------------


@dataclass
class QuickstartPlan:
    """Every size the run uses; written into ``results.json`` so a result says how it was made.

    ``seeds``: the seeds of every trained row (``seed`` is the first; the tiny HyTE-FH uses it alone).
    ``steps`` are optimizer steps of every row; the HyTE-FH stages scale with it. ``slow_row_seeds``: how
    many seeds the rows whose base is partly trained (no state cache) get. ``python_docs_pairs`` /
    ``wordnet_pairs``: rows of each bundled pair file in the training mixture (``None``: all).
    ``eval_queries`` / ``eval_docs`` / ``probe_per_level``: subsample the evaluation sets (``None``: the
    full sets; only ``--fast`` does). ``eval_max_length``: every model embeds evaluation texts truncated to
    this many tokens; the trained models are saved with it, so loading one reproduces the recorded metrics.
    """

    seed: int = 42
    seeds: list[int] = field(default_factory=lambda: [42, 43, 44, 45, 46])
    fast: bool = False
    steps: int = 100
    fh_mlm_steps: int = 300
    fh_contrastive_steps: int = 150
    slow_row_seeds: int = 5
    python_docs_pairs: int | None = None
    wordnet_pairs: int | None = 4069
    eval_queries: int | None = None
    eval_docs: int | None = None
    probe_per_level: int | None = None
    eval_max_length: int = 128
    rows: list[str] = field(default_factory=lambda: list(DEFAULT_ROWS))
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


#: Default sizes of a full run and of ``--fast``. 100 contrastive steps per row and seed.
_FULL = {"steps": 100, "fh_mlm_steps": 300, "fh_contrastive_steps": 150, "n_seeds": 5, "slow_row_seeds": 5}
_FAST = {
    "steps": 6,
    "fh_mlm_steps": 6,
    "fh_contrastive_steps": 6,
    "n_seeds": 2,
    "slow_row_seeds": 1,
    "python_docs_pairs": 256,
    "wordnet_pairs": 256,
    "eval_queries": 40,
    "eval_docs": 150,
    "probe_per_level": 12,
    "eval_max_length": 32,
}
#: Config overrides of ``--fast`` for every stage: small batches and short sequences (< 1 minute in all).
_FAST_STAGE = {
    "train_args.batch_size": 8,
    "train_args.warmup_steps": 0,
    "model_args.max_seq_length": 32,
}
_FAST_HIERARCHY = {"hierarchy_args.edges_per_step": 4, "hierarchy_args.max_children": 200}
_FAST_OVERRIDES: dict[str, dict[str, Any]] = {
    name: {**_FAST_STAGE, **({} if name == "hyte_fh_mlm" else _FAST_HIERARCHY)} for name in CONFIG_FILES
}


def make_plan(
    *, seed: int = 42, steps: int | None = None, fast: bool = False, seeds: int | None = None
) -> QuickstartPlan:
    """The sizes of a run: the full defaults, or ``--fast``; ``steps`` rescales every training stage;
    ``seeds`` is the number of seeds (``seed``, ``seed + 1``, ...)."""
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if seeds is not None and seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    base: dict[str, Any] = dict(_FAST if fast else _FULL)
    n_seeds = seeds if seeds is not None else base.pop("n_seeds")
    base.pop("n_seeds", None)
    plan = QuickstartPlan(seed=seed, seeds=[seed + i for i in range(n_seeds)], fast=fast, **base)
    plan.slow_row_seeds = min(plan.slow_row_seeds, n_seeds)
    if fast:
        plan.overrides = {k: dict(v) for k, v in _FAST_OVERRIDES.items()}
    if steps is not None:
        ratio = steps / plan.steps
        plan.fh_mlm_steps = max(1, round(plan.fh_mlm_steps * ratio))
        plan.fh_contrastive_steps = max(1, round(plan.fh_contrastive_steps * ratio))
        plan.steps = steps
    return plan


# --- progress and timing ------------------------------------------------------------------------------


class StageTimer:
    """Prints ``[i/n] stage`` headers and each stage's wall time; keeps the times for the report.

    ``stream`` receives the lines (stdout by default). ``seconds``: wall time (``time.perf_counter``);
    ``cpu_seconds``: CPU time of this process, all threads (``time.process_time``), which says how much
    work a stage was when other jobs share the cores.
    """

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stdout
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._index = 0
        self._start = time.perf_counter()

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._index += 1
        self.say(f"\n[{self._index}/{self.total}] {name}")
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + cpu
            self.say(f"    {name}: {elapsed:.1f} s wall, {cpu:.1f} s CPU (total {self.elapsed():.1f} s)")

    def elapsed(self) -> float:
        return time.perf_counter() - self._start


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MiB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


# --- training and evaluation (library calls) --------------------------------------------------------


def stage_overrides(
    name: str, plan: QuickstartPlan, output_dir: Path, pairs_path: Path, *, seed: int | None = None
) -> dict[str, Any]:
    """Config overrides of stage ``name`` (a key of :data:`CONFIG_FILES`): output folder, seed, steps, data.

    Every stage reads the same training mixture (``pairs_path``; the MLM stage the bundled Python-docs
    text) with the same seed; every row gets the same number of steps. The plan's per-stage overrides
    (``--fast``) come last.
    """
    steps_for = {"hyte_fh_mlm": plan.fh_mlm_steps, "hyte_fh": plan.fh_contrastive_steps}
    o: dict[str, Any] = {
        "train_args.output_dir": str(output_dir),
        "train_args.seed": plan.seed if seed is None else seed,
        "train_args.max_steps": steps_for.get(name, plan.steps),
        "train_args.device": "cpu",
        "data_args.data_path": str(mlm_text_path() if name == "hyte_fh_mlm" else pairs_path),
        # The packaged folder itself, so no stage depends on HF_HUB_OFFLINE being set to avoid the hub.
        "model_args.model_name": str(packaged_minilm_path()),
    }
    o.update(plan.overrides.get(name, {}))
    return o


def train_stage(
    name: str, config_dir: Path, overrides: Mapping[str, Any], timer: StageTimer, *, quiet: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Load ``configs/quickstart/<name>.yaml`` with ``overrides``, train, return (final model dir, summary)."""
    config = load_config(config_dir / CONFIG_FILES[name], dict(overrides), dotenv_dir=None)
    args = config.train_args
    if not quiet:
        timer.say(
            f"    {config.model_args.model_type} / {args.task}: {args.max_steps} steps x batch "
            f"{args.batch_size}, lr {args.learning_rate:g}, max length {config.model_args.max_seq_length}"
        )
    t0 = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - t0
    summary = {
        "task": args.task,
        "steps": result.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "last_loss": result.last_loss,
        "seconds": seconds,
        "config": config.model_dump(mode="json"),
    }
    if not quiet:
        timer.say(f"    final loss {result.last_loss:.4f} after {result.steps} steps")
    return Path(result.final_model_dir), summary


#: HyTE-H heads measured untrained: how close each one starts to the base model.
STEP0_HEADS = {
    "pooled": {},
    "token_radius": {
        "model_args.hyte_h_head": "token_radius",
        "model_args.pooling": "outward_einstein_midpoint",
    },
    "token (clip 2)": {
        "model_args.hyte_h_head": "token",
        "model_args.pooling": "outward_einstein_midpoint",
        "model_args.max_norm": 2.0,
    },
}


def measure_step0(config_dir: Path, plan: QuickstartPlan, sets: EvalSets) -> dict[str, dict[str, float]]:
    """nDCG@10 on the report halves of HyTE-H with each head *before any training* (identity direction
    init, every radius r0): the pooled head ranks exactly as the base does; the others show how far from
    the base the paper's token-level lifting starts."""
    out: dict[str, dict[str, float]] = {}
    for head, overrides in STEP0_HEADS.items():
        o = {"model_args.model_name": str(packaged_minilm_path()), **overrides}
        config = load_config(config_dir / CONFIG_FILES["hyte_h"], o, dotenv_dir=None)
        torch.manual_seed(plan.seed)
        model = set_max_length(build_model(config.model_args), plan.eval_max_length)
        encoder = EncodeOnce(model)
        out[head] = {
            name: float(evaluate_retrieval(encoder, folder, "report")["ndcg@10"])
            for name, folder in sets.beir.items()
        }
    return out


# --- the whole run: named stages run in order by a small loop ---------------------------------------


@dataclass
class QuickstartRun:
    """What the stages share: the plan and folders, and what each stage adds for the ones after it."""

    out_dir: Path
    config_dir: Path
    plan: QuickstartPlan
    rows: list[Row]
    timer: StageTimer
    pairs_path: Path | None = None
    pair_counts: dict[str, int] = field(default_factory=dict)
    beir: dict[str, Path] = field(default_factory=dict)
    probe_path: Path | None = None
    sets: EvalSets | None = None
    zero_shot: Any = None
    step0: dict[str, dict[str, float]] = field(default_factory=dict)
    #: key -> {"label", "role", "seeds": {seed: evaluation}, "training": {...}, "config"}
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    saved: dict[str, Any] = field(default_factory=dict)  # report label -> model, for the hierarchy probe
    train_logs: dict[str, Path] = field(default_factory=dict)
    base_cache: Any = None  # the BaseStateCache every frozen-base forward reads from
    results: dict[str, Any] = field(default_factory=dict)


def prepare_data(run: QuickstartRun) -> None:
    """The training mixture (pairs) and the evaluation sets (subsets of them with ``--fast``)."""
    plan, out_dir = run.plan, run.out_dir
    run.pairs_path = out_dir / "data" / "train_pairs.jsonl"
    run.pair_counts = prepare_training_pairs(
        run.pairs_path,
        seed=plan.seed,
        python_docs_pairs=plan.python_docs_pairs,
        wordnet_pairs=plan.wordnet_pairs,
    )
    run.beir = {"faq-dev": faq_dev_path(), "wordnet-hier": wordnet_hier_path()}
    run.probe_path = wordnet_levels_path()
    if plan.eval_queries is not None:
        run.beir = {
            name: prepare_eval_subset(
                folder,
                out_dir / "data" / f"{name}-subset",
                n_queries=plan.eval_queries,
                n_docs=plan.eval_docs,
                seed=plan.seed,
            )
            for name, folder in run.beir.items()
        }
    if plan.probe_per_level is not None:
        run.probe_path = prepare_probe_subset(
            run.probe_path, out_dir / "data" / "wordnet-levels-subset.jsonl", per_level=plan.probe_per_level
        )
    run.sets = EvalSets(beir=run.beir, probe_rows=read_level_rows(run.probe_path))
    run.timer.say(f"    training pairs: {run.pair_counts}; eval: {run.beir}; probe: {run.probe_path}")
    run.timer.say(f"    every model is evaluated with {plan.eval_max_length}-token inputs")


def evaluate_zero_shot(run: QuickstartRun) -> None:
    """The base model as it ships: the baseline every trained row must beat."""
    run.zero_shot = set_max_length(load_model(packaged_minilm_path()), run.plan.eval_max_length)
    run.measured["minilm_zero_shot"] = {
        "label": "all-MiniLM-L6-v2 (zero-shot)",
        "role": "baseline",
        "seeds": {"-": evaluate_model(run.zero_shot, run.sets)},
        "training": {},
    }
    run.timer.say("    " + _summary_line(run.measured["minilm_zero_shot"]))


def measure_untrained_heads(run: QuickstartRun) -> None:
    """How close each HyTE-H head starts to the base (:func:`measure_step0`)."""
    run.step0 = measure_step0(run.config_dir, run.plan, run.sets)
    for head, metrics in run.step0.items():
        run.timer.say(
            f"    {head}: " + ", ".join(f"{name} ndcg@10 {100 * v:.2f}" for name, v in metrics.items())
        )


def train_rows(run: QuickstartRun) -> None:
    """Every row over its seeds: train, evaluate, keep the first seed's model of the main rows."""
    plan = run.plan
    for row in run.rows:
        slow = "model_args.trainable_base_layers" in row.overrides
        row_seeds = plan.seeds[: plan.slow_row_seeds] if slow else plan.seeds
        entry = {"label": row.label, "role": row.role, "base": row.base, "seeds": {}, "training": {}}
        run.measured[row.key] = entry
        t0 = time.perf_counter()
        for s in row_seeds:
            run_dir = run.out_dir / "train" / row.key / f"seed-{s}"
            o = stage_overrides(row.config, plan, run_dir, run.pairs_path, seed=s)
            o.update(row.overrides)
            final_dir, summary = train_stage(row.config, run.config_dir, o, run.timer, quiet=True)
            model = set_max_length(load_model(final_dir), plan.eval_max_length)
            entry["seeds"][str(s)] = evaluate_model(model, run.sets)
            entry["training"][str(s)] = {k: v for k, v in summary.items() if k != "config"}
            if s == plan.seed:
                entry["config"] = summary["config"]
                if row.key in MAIN_KEYS:
                    _keep_model(model, final_dir, run.out_dir / "models" / row.key)
                    run.saved[row.label] = model
                    run.train_logs[row.label] = run_dir
            shutil.rmtree(final_dir)
        run.timer.say(
            f"    {row.label}: {len(row_seeds)} seeds, {time.perf_counter() - t0:.0f} s; "
            + _summary_line(entry)
        )


def train_hyte_fh(run: QuickstartRun) -> None:
    """The fully hyperbolic pipeline at toy size: masked-LM pretraining, then contrastive, one seed."""
    plan, train_root = run.plan, run.out_dir / "train"
    mlm_dir, fh_mlm = train_stage(
        "hyte_fh_mlm",
        run.config_dir,
        stage_overrides("hyte_fh_mlm", plan, train_root / "hyte_fh_mlm", run.pairs_path),
        run.timer,
    )
    run.train_logs["HyTE-FH MLM"] = train_root / "hyte_fh_mlm"
    o = stage_overrides("hyte_fh", plan, train_root / "hyte_fh", run.pairs_path)
    o["model_args.init_from"] = str(mlm_dir)
    final_dir, fh = train_stage("hyte_fh", run.config_dir, o, run.timer)
    model = set_max_length(load_model(final_dir), plan.eval_max_length)
    _keep_model(model, final_dir, run.out_dir / "models" / "hyte_fh")
    shutil.rmtree(final_dir)
    run.measured["hyte_fh"] = {
        "label": "HyTE-FH (tiny, one seed)",
        "role": "pipeline",
        "seeds": {str(plan.seed): evaluate_model(model, run.sets)},
        "training": {
            "mlm": {k: v for k, v in fh_mlm.items() if k != "config"},
            str(plan.seed): {k: v for k, v in fh.items() if k != "config"},
        },
        "config": fh["config"],
    }
    run.saved["HyTE-FH (tiny)"] = model
    run.train_logs["HyTE-FH contrastive"] = train_root / "hyte_fh"
    run.timer.say("    " + _summary_line(run.measured["hyte_fh"]))


def build_report(run: QuickstartRun) -> None:
    """The hierarchy probe of the kept models, summaries over seeds, paired comparisons and plots."""
    cache = run.base_cache
    cache_stats = {"texts_cached": len(cache), "hits": cache.hits, "misses": cache.misses} if cache else {}
    run.timer.say(f"    base-state cache: {cache_stats}")
    probe_hierarchy(
        {"all-MiniLM-L6-v2 (zero-shot)": run.zero_shot, **run.saved}, run.sets.probe_rows, run.out_dir
    )
    run.results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "lorentz_rag_version": __version__,
        "plan": asdict(run.plan),
        "rows": [asdict(r) for r in run.rows],
        "data": {
            "training_pairs": run.pair_counts,
            "training_pairs_file": str(run.pairs_path),
            "eval": {k: str(v) for k, v in run.beir.items()},
            "probe": str(run.probe_path),
        },
        "summary": summarize(run.measured),
        "comparisons": compare(run.measured),
        "models": _without_per_query(run.measured),
        "base_state_cache": cache_stats,
        "step0": run.step0,
    }
    run.results["plots"] = [*write_plots(run.results, run.out_dir, run.train_logs), *PROBE_PLOTS]
    _prune_checkpoints(run.out_dir / "train")


@dataclass(frozen=True)
class Stage:
    """One step of the quickstart: ``title(run)`` is its progress header, ``work(run)`` does it."""

    title: Callable[[QuickstartRun], str]
    work: Callable[[QuickstartRun], None]


STAGES: tuple[Stage, ...] = (
    Stage(lambda run: "prepare data", prepare_data),
    Stage(lambda run: "zero-shot all-MiniLM-L6-v2", evaluate_zero_shot),
    Stage(lambda run: "untrained HyTE-H heads (step 0)", measure_untrained_heads),
    Stage(lambda run: f"train + evaluate {len(run.rows)} rows x {len(run.plan.seeds)} seeds", train_rows),
    Stage(lambda run: "HyTE-FH (tiny): masked-LM pretraining + contrastive, one seed", train_hyte_fh),
    Stage(lambda run: "report", build_report),
)


def run_quickstart(
    out: str | os.PathLike[str] = "runs/quickstart",
    *,
    seed: int = 42,
    steps: int | None = None,
    fast: bool = False,
    seeds: int | None = None,
    rows: Sequence[str] | None = None,
    config_dir: str | os.PathLike[str] | None = None,
    stream: Any = None,
) -> dict[str, Any]:
    """Train, evaluate and compare; write ``out/results.json``, ``out/report.md``, plots and ``out/models``.

    Returns the results dictionary (what ``results.json`` holds). ``rows`` restricts the trained rows (keys
    of :data:`ROWS`; the main rows are always run). ``config_dir`` defaults to ``configs/quickstart``;
    ``stream`` receives the progress lines (stdout by default). The work is :data:`STAGES`, in order.
    """
    _check_out_is_a_folder(Path(out))
    config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    quickstart_resources(config_dir)  # everything missing, named, before any work
    plan = make_plan(seed=seed, steps=steps, fast=fast, seeds=seeds)
    if rows is not None:
        unknown = sorted(set(rows) - {r.key for r in ROWS})
        if unknown:
            raise ValueError(f"unknown quickstart rows {unknown}; choose from {[r.key for r in ROWS]}")
        plan.rows = [r.key for r in ROWS if r.key in set(rows) or r.key in MAIN_KEYS]
    run = QuickstartRun(
        out_dir=Path(out),
        config_dir=config_dir,
        plan=plan,
        rows=[r for r in ROWS if r.key in plan.rows],
        timer=StageTimer(total=len(STAGES), stream=stream),
    )
    run.timer.say(
        f"lorentz-rag quickstart -> {run.out_dir} (seeds {plan.seeds}, {plan.steps} contrastive steps per row"
        f"{', --fast' if fast else ''}, {torch.get_num_threads()} CPU threads)"
    )
    for sub in ("models", "train", "data"):
        shutil.rmtree(run.out_dir / sub, ignore_errors=True)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    # Every frozen-base forward reads its states from one cache: each text meets MiniLM once.
    with cached_base_states() as run.base_cache:
        for stage in STAGES:
            with run.timer.stage(stage.title(run)):
                stage.work(run)
    return _finish(run)


def _check_out_is_a_folder(out: Path) -> None:
    """Refuse an output path that is a file, or lies under one, before any work (``--out`` is a folder)."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"lies under {path}, which is a file"
                raise NotADirectoryError(
                    f"--out {out} {where}: --out must be a folder (it receives results.json, report.md, plots "
                    "and models); choose a new or existing folder"
                )
            return


def _keep_model(model: Any, final_dir: Path, target: Path) -> None:
    """Save ``model`` (at evaluation length) under ``target`` with the config it was trained from."""
    model.save_pretrained(target)
    shutil.copy2(final_dir / "training_config.yaml", target / "training_config.yaml")


def _finish(run: QuickstartRun) -> dict[str, Any]:
    """Timings and peak memory into the results (after the last stage, so they are complete); write
    ``results.json`` and ``report.md``; print the table and the outcome of each claim."""
    timer, out_dir = run.timer, run.out_dir
    results = dict(run.results)
    results["timings_s"] = dict(timer.seconds)
    results["cpu_seconds"] = dict(timer.cpu_seconds)
    results["total_seconds"] = timer.elapsed()
    results["peak_rss_mb"] = peak_rss_mb()
    results["torch_threads"] = torch.get_num_threads()
    results = jsonable(results)
    with names_path(out_dir):  # a full disk names the folder
        (out_dir / "report.md").write_text(render_report(results), encoding="utf-8")
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    timer.say("\n" + format_comparison_table(results["summary"]))
    timer.say("\n" + "\n".join(format_outcomes(results["comparisons"])))
    timer.say(
        "\nstage timings: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timer.seconds.items())
        + f"; total {timer.elapsed():.0f} s; peak RSS {peak_rss_mb():.0f} MiB"
    )
    timer.say(f"wrote {out_dir / 'results.json'}, {out_dir / 'report.md'}, plots and {out_dir / 'models'}")
    return results


def _summary_line(entry: Mapping[str, Any]) -> str:
    """``faq-dev ndcg@10 .., wordnet-hier ndcg@10 .., depth rho ..`` on the report parts, mean over seeds."""
    row = summarize({"row": entry})["row"]
    parts = [
        f"{name} ndcg@10 {100 * row[name]['ndcg@10']['mean']:.2f}" for name in ("faq-dev", "wordnet-hier")
    ]
    return ", ".join([*parts, f"depth rho {row['probe']['spearman']['mean']:+.3f}"])


def _without_per_query(measured: Mapping[str, Any]) -> dict[str, Any]:
    """``measured`` without the per-query tables (kept in memory for the bootstrap, too long for JSON)."""

    def strip(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: strip(v) for k, v in value.items() if k != "per_query"}
        return value

    return strip(measured)


def _prune_checkpoints(train_root: Path) -> None:
    """Drop the trainer's resumable checkpoints (optimizer state; hundreds of MB) once the models are saved.

    ``config.yaml`` and ``metrics.jsonl`` of every run stay for the record (and the MLM stage's ``final``,
    which the contrastive HyTE-FH stage started from).
    """
    for checkpoint in sorted(train_root.rglob("ckpt-*")) if train_root.is_dir() else ():
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint, ignore_errors=True)
    for pointer in sorted(train_root.rglob("latest")) if train_root.is_dir() else ():
        if pointer.is_file() or pointer.is_symlink():
            pointer.unlink()


def jsonable(value: Any) -> Any:
    """Plain JSON: tensors -> numbers/lists, paths -> strings, non-finite floats -> strings."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def quickstart_resources(config_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Every file and folder the quickstart reads besides the packaged MiniLM weights, by name: its configs
    (in ``config_dir``, default :data:`CONFIG_DIR`) and the bundled data (:func:`lorentz_rag.data.bundled.data_dir`:
    ``$LORENTZ_RAG_DATA_DIR``, else a source checkout's ``data/``). Raises :class:`FileNotFoundError` naming
    everything missing and the option that supplies it (a lorentz_rag installed from a wheel ships neither)."""
    folder = Path(config_dir) if config_dir is not None else CONFIG_DIR
    found = {f"config {name}": folder / file for name, file in CONFIG_FILES.items()}
    problems = []
    missing = [str(path) for path in found.values() if not path.is_file()]
    if missing:
        problems.append(
            f"quickstart config files not found: {', '.join(missing)}. Pass --config-dir (config_dir=) naming a "
            "folder with them, e.g. a source checkout's configs/quickstart (a lorentz_rag wheel does not ship configs/)"
        )
    try:
        data = bundled.data_dir()
    except FileNotFoundError as error:
        problems.append(f"{error}. lorentz-rag quickstart: pass --data-dir naming that folder")
    else:
        data_files = {f"pairs {name}": data / file for name, file in PAIR_FILES.items()}
        data_files.update(
            {
                "mlm text": bundled.mlm_text_path(),
                "wordnet nouns": bundled.wordnet_nouns_path(),  # the hierarchy objective's edges
                "faq-dev": bundled.faq_dev_path(),
                "wordnet-hier": bundled.wordnet_hier_path(),
                "wordnet levels": bundled.wordnet_levels_path(),
            }
        )
        found.update(data_files)
        missing = [str(path) for path in data_files.values() if not path.exists()]
        if missing:
            problems.append(f"bundled data files not found: {', '.join(missing)} (in {data})")
    if problems:
        raise FileNotFoundError("\n".join(problems))
    return found


def main_from_args(args: Any, run: Callable[..., dict[str, Any]] = run_quickstart) -> int:
    """The CLI handler: ``lorentz-rag quickstart --out DIR [--seed N] [--seeds N] [--steps N] [--fast]
    [--rows KEY ...] [--data-dir DIR] [--config-dir DIR]``. ``--data-dir`` sets ``$LORENTZ_RAG_DATA_DIR`` for
    the run, so every reader (the trainer's hierarchy objective included) uses it."""
    kwargs: dict[str, Any] = {"seed": args.seed, "steps": args.steps, "fast": args.fast}
    for name in ("seeds", "rows", "config_dir"):
        if getattr(args, name, None) is not None:
            kwargs[name] = getattr(args, name)
    if getattr(args, "data_dir", None) is not None:
        os.environ[DATA_DIR_ENV] = str(Path(args.data_dir).expanduser().resolve())
    run(args.out, **kwargs)
    return 0
