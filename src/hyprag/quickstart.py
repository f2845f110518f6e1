"""``hyprag quickstart``: train and compare hyperbolic and Euclidean retrievers on real data, on a CPU.

The run answers the paper's two quality questions on held-out data with the same budget for both
geometries (DESIGN.md sections 4-5, 10):

1. does HyTE-H (the packaged all-MiniLM-L6-v2 + projection + ``expmap0`` + outward Einstein midpoint,
   geodesic InfoNCE) retrieve better than its Euclidean twin (same base and projection, mean pooling,
   cosine InfoNCE; same pairs, steps, batch size and seed) and than the zero-shot base?
2. does the hyperbolic radius grow with WordNet depth while the Euclidean norm does not?

It also runs a tiny HyTE-FH pipeline (masked LM on the bundled Python-docs text, then contrastive training
initialised from it) so the fully hyperbolic path is exercised end to end.

Stages (each timed and printed, wall and CPU time): prepare data -> zero-shot base -> Euclidean twin ->
HyTE-H -> HyTE-FH MLM -> HyTE-FH contrastive -> hierarchy probe (all models) -> report. Training goes
through :func:`hyprag.training.trainer.train` with the YAML configs in ``configs/quickstart/``; evaluation
through :func:`hyprag.eval.retrieval.evaluate_beir` (what ``hyprag eval beir`` runs) and
:func:`hyprag.eval.hierarchy.hierarchy_probe`. This module only chooses the data mixture and the
evaluation length, orchestrates, and writes ``results.json``, ``report.md`` and the plots.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hyprag.quickstart_report import (
    MODEL_KEYS,
    MODEL_LABELS,
    TABLE_METRICS,
    compare,
    format_comparison_table,
    format_outcomes,
    probe_growth,
    probe_rho,
    render_report,
    write_plots,
)

__all__ = [
    "MODEL_KEYS",
    "RESULTS_SCHEMA_VERSION",
    "QuickstartPlan",
    "StageTimer",
    "make_plan",
    "prepare_eval_subset",
    "prepare_training_pairs",
    "run_quickstart",
]

RESULTS_SCHEMA_VERSION = 1

#: Plots written by the hierarchy probe (hyprag.eval.hierarchy) into the output folder.
PROBE_PLOTS = ("radius_by_level.png", "embeddings_2d.png")

#: The folder of the quickstart's training configs (a source checkout's ``configs/quickstart``).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "quickstart"
CONFIG_FILES = {
    "euclidean": "euclidean.yaml",
    "hyte_h": "hyte_h.yaml",
    "hyte_fh_mlm": "hyte_fh_mlm.yaml",
    "hyte_fh": "hyte_fh_contrastive.yaml",
}


# --- the plan: what to run, derived from the options --------------------------------------------------


@dataclass
class QuickstartPlan:
    """Every size the run uses; written into ``results.json`` so a result says how it was made.

    ``steps`` are optimizer steps of the HyTE-H / Euclidean-twin contrastive stage (both get the same);
    the HyTE-FH stages scale with it. ``python_docs_pairs`` / ``wordnet_pairs``: how many rows of each
    bundled pair file go into the training mixture (``None``: all). ``eval_queries`` / ``eval_docs`` /
    ``probe_per_level``: subsample the evaluation sets (``None``: the full sets; only ``--fast`` does).
    ``eval_max_length``: every model, the zero-shot base included, embeds evaluation texts truncated to
    this many tokens (training uses the configs' shorter ``max_seq_length`` to fit the CPU budget); the
    trained models are saved with it, so loading one reproduces the recorded metrics.
    """

    seed: int = 42
    fast: bool = False
    steps: int = 100
    fh_mlm_steps: int = 300
    fh_contrastive_steps: int = 150
    python_docs_pairs: int | None = None
    wordnet_pairs: int | None = 4069
    eval_queries: int | None = None
    eval_docs: int | None = None
    probe_per_level: int | None = None
    eval_max_length: int = 128
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


#: Default sizes of a full run and of ``--fast``. 100 contrastive steps: the tuning sweep ran at 100, and a
#: 200-step run scored lower on faq-dev for both geometries (twin 81.25 vs 82.01, HyTE-H 79.79 vs 79.86
#: nDCG@10); a full run takes about 4 minutes on 2 cores (benchmarks/results/quickstart_tuning.md).
_FULL = {"steps": 100, "fh_mlm_steps": 300, "fh_contrastive_steps": 150}
_FAST = {
    "steps": 6,
    "fh_mlm_steps": 6,
    "fh_contrastive_steps": 6,
    "python_docs_pairs": 256,
    "wordnet_pairs": 256,
    "eval_queries": 40,
    "eval_docs": 100,
    "probe_per_level": 12,
    "eval_max_length": 32,
}
#: Config overrides of ``--fast`` for every stage: small batches and short sequences (< 1 minute in all).
_FAST_STAGE = {"train_args.batch_size": 8, "train_args.warmup_steps": 0, "model_args.max_seq_length": 32}
_FAST_OVERRIDES: dict[str, dict[str, Any]] = {name: dict(_FAST_STAGE) for name in CONFIG_FILES}


def make_plan(*, seed: int = 42, steps: int | None = None, fast: bool = False) -> QuickstartPlan:
    """The sizes of a run: the full defaults, or ``--fast``; ``steps`` rescales every training stage."""
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    base: dict[str, Any] = dict(_FAST if fast else _FULL)
    plan = QuickstartPlan(seed=seed, fast=fast, **base)
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


# --- data ---------------------------------------------------------------------------------------------


def prepare_training_pairs(
    out_path: Path, *, seed: int, python_docs_pairs: int | None, wordnet_pairs: int | None
) -> dict[str, int]:
    """Write the contrastive training mixture to ``out_path`` (JSONL ``{"query", "document"}``).

    faq-dev is Python + Debian FAQ (question -> answer): the Python-docs pairs (section title -> body) are
    the closest in domain but few (4,069), the WordNet pairs (lemma -> gloss, 73,832) teach general
    short-query -> definition matching and the hierarchy. The mixture takes ``python_docs_pairs`` rows of
    the first and ``wordnet_pairs`` of the second (seeded sample, ``None`` = all), shuffled together, so
    neither source drowns the other. Returns the number of rows taken per source.
    """
    from hyprag.data.bundled import data_dir, read_jsonl

    rng = random.Random(f"quickstart-pairs-{seed}")
    sources = {
        "python_docs": (data_dir() / "train" / "pairs_python_docs.jsonl.gz", python_docs_pairs),
        "wordnet_gloss": (data_dir() / "train" / "pairs_wordnet_gloss.jsonl.gz", wordnet_pairs),
    }
    rows: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    for name, (path, limit) in sources.items():
        source_rows = [{"query": r["query"], "document": r["document"]} for r in read_jsonl(path)]
        if limit is not None and limit < len(source_rows):
            source_rows = rng.sample(source_rows, limit)
        counts[name] = len(source_rows)
        rows.extend(source_rows)
    rng.shuffle(rows)
    _write_jsonl(out_path, rows)
    return counts


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare_eval_subset(
    source: Path, out_dir: Path, *, n_queries: int, n_docs: int | None, seed: int
) -> Path:
    """A smaller BEIR folder (``--fast``): ``n_queries`` seeded-sampled queries of ``source``, their judged
    documents, and seeded-sampled other documents up to ``n_docs`` in all (``None``: the whole corpus)."""
    from hyprag.data.beir import load_beir, write_beir

    data = load_beir(source, "test")
    rng = random.Random(f"quickstart-eval-{seed}")
    chosen = sorted(rng.sample(list(data.queries), min(n_queries, len(data.queries))))
    corpus = data.corpus
    if n_docs is not None:
        keep = {d for q in chosen for d in data.qrels[q]}
        others = [d for d in corpus if d not in keep]
        keep.update(rng.sample(others, max(0, min(len(others), n_docs - len(keep)))))
        corpus = {d: doc for d, doc in corpus.items() if d in keep}
    write_beir(
        out_dir,
        corpus=corpus,
        queries={q: data.queries[q] for q in chosen},
        qrels={q: data.qrels[q] for q in chosen},
        split="test",
    )
    return out_dir


def prepare_probe_subset(source: Path, out_path: Path, *, per_level: int) -> Path:
    """The first ``per_level`` items of each level of the hierarchy probe file (``--fast``)."""
    from hyprag.data.bundled import read_jsonl

    rows = list(read_jsonl(source))
    taken: dict[int, int] = {}
    kept = []
    for row in rows:
        level = int(row["level"])
        if taken.get(level, 0) < per_level:
            taken[level] = taken.get(level, 0) + 1
            kept.append(row)
    _write_jsonl(out_path, kept)
    return out_path


# --- training and evaluation (library calls) --------------------------------------------------------


def stage_overrides(name: str, plan: QuickstartPlan, output_dir: Path, pairs_path: Path) -> dict[str, Any]:
    """Config overrides of stage ``name`` (a key of :data:`CONFIG_FILES`): output folder, seed, steps, data.

    Every stage reads the same training mixture (``pairs_path``; the MLM stage the bundled Python-docs
    text) with the same seed; HyTE-H and the twin get the same number of steps. The plan's per-stage
    overrides (``--fast``) come last.
    """
    from hyprag.data.bundled import mlm_text_path
    from hyprag.models import packaged_minilm_path

    steps_for = {"hyte_fh_mlm": plan.fh_mlm_steps, "hyte_fh": plan.fh_contrastive_steps}
    o: dict[str, Any] = {
        "train_args.output_dir": str(output_dir),
        "train_args.seed": plan.seed,
        "train_args.max_steps": steps_for.get(name, plan.steps),
        "train_args.device": "cpu",
        "data_args.data_path": str(mlm_text_path() if name == "hyte_fh_mlm" else pairs_path),
        # The packaged folder itself, so no stage depends on HF_HUB_OFFLINE being set to avoid the hub.
        "model_args.model_name": str(packaged_minilm_path()),
    }
    o.update(plan.overrides.get(name, {}))
    return o


def train_stage(
    name: str, config_dir: Path, overrides: Mapping[str, Any], timer: StageTimer
) -> tuple[Path, dict[str, Any]]:
    """Load ``configs/quickstart/<name>.yaml`` with ``overrides``, train, return (final model dir, summary)."""
    from hyprag.training.config import load_config
    from hyprag.training.trainer import train

    config = load_config(config_dir / CONFIG_FILES[name], dict(overrides), dotenv_dir=None)
    args = config.train_args
    timer.say(
        f"    {config.model_args.model_type} / {args.task}: {args.max_steps} steps x batch {args.batch_size}, "
        f"lr {args.learning_rate:g}, max length {config.model_args.max_seq_length}"
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
    timer.say(f"    final loss {result.last_loss:.4f} after {result.steps} steps")
    return Path(result.final_model_dir), summary


def set_max_length(model: Any, max_length: int) -> Any:
    """Truncate ``model``'s inputs to ``max_length`` tokens from now on (and in its saved config); returns it.

    A sentence-transformers baseline tokenizes through its own ``max_seq_length``, so that is set too.
    """
    model.settings.max_seq_length = int(max_length)
    st = getattr(model, "st", None)
    if st is not None:
        st.max_seq_length = int(max_length)
    return model


def evaluate_retrieval(model: Any, eval_dir: Path) -> dict[str, Any]:
    """BEIR metrics of one loaded model on ``eval_dir`` (:func:`hyprag.eval.retrieval.evaluate_beir`)."""
    from hyprag.eval.retrieval import evaluate_beir

    return evaluate_beir(model, eval_dir, "test", batch_size=32, top_k=100)


def probe_hierarchy(models: Mapping[str, Any], probe_path: Path, out_dir: Path) -> dict[str, Any]:
    """:func:`hyprag.eval.hierarchy.hierarchy_probe` on the level file for ``{name: model}``.

    Writes ``hierarchy.json``, ``radius_by_level.png`` and ``embeddings_2d.png`` into ``out_dir``; returns
    ``{name: stats}`` (per-level ``levels``, ``relative_increase``, ``spearman``, ``radius_kind``).
    """
    from hyprag.eval.hierarchy import hierarchy_probe, read_level_rows

    summary = hierarchy_probe(models, read_level_rows(probe_path), out_dir, batch_size=32)
    return summary["models"]


# --- the whole run ------------------------------------------------------------------------------------


def run_quickstart(
    out: str | os.PathLike[str] = "runs/quickstart",
    *,
    seed: int = 42,
    steps: int | None = None,
    fast: bool = False,
    config_dir: str | os.PathLike[str] | None = None,
    stream: Any = None,
) -> dict[str, Any]:
    """Train, evaluate and compare; write ``out/results.json``, ``out/report.md``, plots and ``out/models``.

    Returns the results dictionary (what ``results.json`` holds). ``config_dir`` defaults to
    ``configs/quickstart``; ``stream`` receives the progress lines (stdout by default).
    """
    import torch

    import hyprag
    from hyprag.data.bundled import faq_dev_path, wordnet_levels_path
    from hyprag.models import packaged_minilm_path

    out_dir = Path(out)
    config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    plan = make_plan(seed=seed, steps=steps, fast=fast)
    timer = StageTimer(total=8, stream=stream)
    timer.say(
        f"hyprag quickstart -> {out_dir} (seed {seed}, {plan.steps} contrastive steps"
        f"{', --fast' if fast else ''}, {torch.get_num_threads()} CPU threads)"
    )
    for sub in ("models", "train", "data"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    models: dict[str, dict[str, Any]] = {}
    training: dict[str, dict[str, Any]] = {}
    train_logs: dict[str, Path] = {}

    with timer.stage("prepare data"):
        pairs_path = out_dir / "data" / "train_pairs.jsonl"
        pair_counts = prepare_training_pairs(
            pairs_path, seed=seed, python_docs_pairs=plan.python_docs_pairs, wordnet_pairs=plan.wordnet_pairs
        )
        eval_dir, probe_path = faq_dev_path(), wordnet_levels_path()
        if plan.eval_queries is not None:
            eval_dir = prepare_eval_subset(
                eval_dir,
                out_dir / "data" / "faq-dev-subset",
                n_queries=plan.eval_queries,
                n_docs=plan.eval_docs,
                seed=seed,
            )
        if plan.probe_per_level is not None:
            probe_path = prepare_probe_subset(
                probe_path,
                out_dir / "data" / "wordnet-levels-subset.jsonl",
                per_level=plan.probe_per_level,
            )
        timer.say(f"    training pairs: {pair_counts}; eval: {eval_dir}; probe: {probe_path}")

    timer.say(
        f"    training max length {_config_max_length(config_dir, plan)}; every model is evaluated with "
        f"{plan.eval_max_length}-token inputs"
    )

    def shared(name: str) -> dict[str, Any]:
        return stage_overrides(name, plan, out_dir / "train" / name, pairs_path)

    loaded: dict[str, Any] = {}  # kept for the hierarchy probe, which compares all models in one plot

    def finish(name: str, final_dir: Path) -> None:
        """Save the trained model to ``out/models/<name>`` with the evaluation length, reload it, evaluate."""
        target = out_dir / "models" / name
        model = set_max_length(hyprag.load_model(final_dir), plan.eval_max_length)
        model.save_pretrained(target)
        shutil.copy2(final_dir / "training_config.yaml", target / "training_config.yaml")
        shutil.rmtree(final_dir)
        train_logs[MODEL_LABELS[name]] = out_dir / "train" / name
        loaded[name] = hyprag.load_model(target)
        models[name] = {"path": str(target), "retrieval": evaluate_retrieval(loaded[name], eval_dir)}
        timer.say("    " + _retrieval_line(models[name]["retrieval"]))

    with timer.stage("zero-shot all-MiniLM-L6-v2"):
        loaded["minilm_zero_shot"] = set_max_length(
            hyprag.load_model(packaged_minilm_path()), plan.eval_max_length
        )
        models["minilm_zero_shot"] = {
            "path": str(packaged_minilm_path()),
            "retrieval": evaluate_retrieval(loaded["minilm_zero_shot"], eval_dir),
        }
        timer.say("    " + _retrieval_line(models["minilm_zero_shot"]["retrieval"]))

    for name in ("euclidean", "hyte_h"):
        with timer.stage(f"train + evaluate {MODEL_LABELS[name]}"):
            final_dir, training[name] = train_stage(name, config_dir, shared(name), timer)
            finish(name, final_dir)

    with timer.stage("HyTE-FH masked-LM pretraining"):
        mlm_dir, training["hyte_fh_mlm"] = train_stage(
            "hyte_fh_mlm", config_dir, shared("hyte_fh_mlm"), timer
        )
        train_logs["HyTE-FH MLM"] = out_dir / "train" / "hyte_fh_mlm"

    with timer.stage("train + evaluate HyTE-FH contrastive"):
        o = shared("hyte_fh")
        o["model_args.init_from"] = str(mlm_dir)
        final_dir, training["hyte_fh"] = train_stage("hyte_fh", config_dir, o, timer)
        finish("hyte_fh", final_dir)

    with timer.stage("hierarchy probe"):
        probe = probe_hierarchy({MODEL_LABELS[k]: loaded[k] for k in MODEL_KEYS}, probe_path, out_dir)
        for key in MODEL_KEYS:
            models[key]["hierarchy"] = probe[MODEL_LABELS[key]]
            h = models[key]["hierarchy"]
            timer.say(
                f"    {MODEL_LABELS[key]}: {h['radius_kind']} level 1 -> 5 {probe_growth(h):+.1f}%, "
                f"Spearman {probe_rho(h):+.3f}"
            )
        loaded.clear()

    with timer.stage("report"):
        comparisons = compare(models)
        results: dict[str, Any] = {
            "schema_version": RESULTS_SCHEMA_VERSION,
            "hyprag_version": hyprag.__version__,
            "plan": asdict(plan),
            "data": {
                "training_pairs": pair_counts,
                "training_pairs_file": str(pairs_path),
                "eval": str(eval_dir),
                "probe": str(probe_path),
            },
            "models": models,
            "training": training,
            "comparisons": comparisons,
        }
        results["plots"] = [*write_plots(results, out_dir, train_logs), *PROBE_PLOTS]
        _prune_checkpoints(out_dir / "train")
    # Written after the last stage so the timings and the peak memory are complete.
    results["timings_s"] = dict(timer.seconds)
    results["cpu_seconds"] = dict(timer.cpu_seconds)
    results["total_seconds"] = timer.elapsed()
    results["peak_rss_mb"] = peak_rss_mb()
    results["torch_threads"] = torch.get_num_threads()
    results = jsonable(results)
    (out_dir / "report.md").write_text(render_report(results), encoding="utf-8")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    timer.say("\n" + format_comparison_table(models))
    timer.say("\n" + "\n".join(format_outcomes(comparisons)))
    timer.say(
        "\nstage timings: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timer.seconds.items())
        + f"; total {timer.elapsed():.0f} s; peak RSS {peak_rss_mb():.0f} MiB"
    )
    timer.say(f"wrote {out_dir / 'results.json'}, {out_dir / 'report.md'}, plots and {out_dir / 'models'}")
    return results


def _config_max_length(config_dir: Path, plan: QuickstartPlan) -> int:
    from hyprag.training.config import load_config

    override = plan.overrides.get("hyte_h", {}).get("model_args.max_seq_length")
    if override is not None:
        return int(override)
    return load_config(config_dir / CONFIG_FILES["hyte_h"], dotenv_dir=None).model_args.max_seq_length


def _retrieval_line(metrics: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {100 * float(metrics[k]):.2f}" for k in TABLE_METRICS)


def _prune_checkpoints(train_root: Path) -> None:
    """Drop the trainer's resumable checkpoints (optimizer state; hundreds of MB) once the models are saved.

    ``config.yaml`` and ``metrics.jsonl`` of every run stay for the record (and the MLM stage's ``final``,
    which the contrastive HyTE-FH stage started from).
    """
    for run in train_root.iterdir() if train_root.is_dir() else ():
        for child in run.iterdir():
            if child.is_dir() and child.name != "final":
                shutil.rmtree(child, ignore_errors=True)
            elif child.name == "latest":  # the trainer's pointer to the newest checkpoint, now removed
                child.unlink()


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


def main_from_args(args: Any, run: Callable[..., dict[str, Any]] = run_quickstart) -> int:
    """The CLI handler: ``hyprag quickstart --out DIR [--seed N] [--steps N] [--fast]``."""
    run(args.out, seed=args.seed, steps=args.steps, fast=args.fast)
    return 0
