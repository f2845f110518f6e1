"""``hyprag quickstart``: the plan, the training mixture, comparisons, the report, the CLI, and the
``--fast`` run end to end (slow)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

from hyprag import quickstart as qs
from hyprag import quickstart_report as qr
from hyprag.cli import build_parser
from hyprag.data.beir import load_beir
from hyprag.data.bundled import faq_dev_path, read_jsonl, wordnet_levels_path

# --- plan and CLI ---------------------------------------------------------------------------------------


def test_plan_scales_every_training_stage_with_steps() -> None:
    full = qs.make_plan()
    half = qs.make_plan(steps=full.steps // 2)
    assert half.steps == full.steps // 2
    assert half.fh_mlm_steps == round(full.fh_mlm_steps / 2)
    assert half.fh_contrastive_steps == round(full.fh_contrastive_steps / 2)
    fast = qs.make_plan(fast=True, seed=7)
    assert fast.seed == 7 and fast.fast
    assert fast.steps < full.steps and fast.eval_queries is not None and fast.probe_per_level is not None
    # --fast shrinks both twins identically: the comparison stays like for like.
    assert fast.overrides["euclidean"] == fast.overrides["hyte_h"]
    with pytest.raises(ValueError, match="--steps"):
        qs.make_plan(steps=0)


def test_cli_parses_options_and_calls_the_library_function() -> None:
    args = build_parser().parse_args(
        ["quickstart", "--out", "somewhere", "--seed", "3", "--steps", "50", "--fast"]
    )
    calls = []

    def fake_run(out, **kwargs):
        calls.append((out, kwargs))
        return {}

    assert qs.main_from_args(args, run=fake_run) == 0
    assert calls == [("somewhere", {"seed": 3, "steps": 50, "fast": True})]
    defaults = build_parser().parse_args(["quickstart"])
    assert (defaults.out, defaults.seed, defaults.steps, defaults.fast) == (
        "runs/quickstart",
        42,
        None,
        False,
    )


def test_every_quickstart_config_validates_and_twins_share_the_budget() -> None:
    from hyprag.training.config import load_config

    configs = {
        name: load_config(qs.CONFIG_DIR / file, dotenv_dir=None) for name, file in qs.CONFIG_FILES.items()
    }
    h, e = configs["hyte_h"], configs["euclidean"]
    assert (h.model_args.model_type, h.model_args.pooling, h.train_args.distance) == (
        "hyte_h",
        "outward_einstein_midpoint",
        "geodesic",
    )
    assert (e.model_args.model_type, e.model_args.pooling, e.train_args.distance) == (
        "euclidean",
        "mean",
        "cosine",
    )
    shared_train = (
        "max_steps",
        "batch_size",
        "seed",
        "warmup_steps",
        "schedule_type",
        "weight_decay",
    )
    assert {k: getattr(h.train_args, k) for k in shared_train} == {
        k: getattr(e.train_args, k) for k in shared_train
    }
    shared_model = (
        "model_name",
        "embedding_dim",
        "projection_init",
        "freeze_base",
        "max_seq_length",
        "query_prefix",
        "document_prefix",
    )
    assert {k: getattr(h.model_args, k) for k in shared_model} == {
        k: getattr(e.model_args, k) for k in shared_model
    }
    assert configs["hyte_fh_mlm"].train_args.task == "mlm"
    assert configs["hyte_fh"].model_args.model_type == "hyte_fh"


# --- data -----------------------------------------------------------------------------------------------


def test_training_mixture_is_seeded_and_takes_what_it_says(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    counts = qs.prepare_training_pairs(a, seed=1, python_docs_pairs=100, wordnet_pairs=50)
    qs.prepare_training_pairs(b, seed=1, python_docs_pairs=100, wordnet_pairs=50)
    qs.prepare_training_pairs(c, seed=2, python_docs_pairs=100, wordnet_pairs=50)
    assert counts == {"python_docs": 100, "wordnet_gloss": 50}
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    rows = list(read_jsonl(a))
    assert len(rows) == 150 and all(set(r) == {"query", "document"} for r in rows)
    # Every row comes from the bundled files, with no duplicates created by sampling.
    from hyprag.data.bundled import data_dir

    wordnet = {
        (r["query"], r["document"]) for r in read_jsonl(data_dir() / "train" / "pairs_wordnet_gloss.jsonl.gz")
    }
    python = {
        (r["query"], r["document"]) for r in read_jsonl(data_dir() / "train" / "pairs_python_docs.jsonl.gz")
    }
    pairs = [(r["query"], r["document"]) for r in rows]
    assert sum(p in python for p in pairs) == 100 and sum(p in wordnet for p in pairs) == 50
    # Shuffled together: the sources are interleaved, not one block after the other.
    first_half = pairs[:75]
    assert 0 < sum(p in python for p in first_half) < 75


def test_eval_subset_keeps_the_sampled_queries_and_their_answers(tmp_path: Path) -> None:
    full = load_beir(faq_dev_path())
    whole = load_beir(
        qs.prepare_eval_subset(faq_dev_path(), tmp_path / "whole", n_queries=25, n_docs=None, seed=0)
    )
    assert len(whole.queries) == 25 and whole.corpus == full.corpus
    assert all(whole.qrels[q] == full.qrels[q] and whole.queries[q] == full.queries[q] for q in whole.queries)
    small = load_beir(
        qs.prepare_eval_subset(faq_dev_path(), tmp_path / "small", n_queries=25, n_docs=60, seed=0)
    )
    assert list(small.queries) == list(whole.queries)  # same seed, same queries
    assert len(small.corpus) == 60
    assert all(d in small.corpus for q in small.qrels for d in small.qrels[q])
    assert all(small.corpus[d] == full.corpus[d] for d in small.corpus)
    other = load_beir(
        qs.prepare_eval_subset(faq_dev_path(), tmp_path / "other", n_queries=25, n_docs=60, seed=1)
    )
    assert list(other.queries) != list(small.queries)


def test_probe_subset_takes_the_first_items_of_each_level(tmp_path: Path) -> None:
    path = qs.prepare_probe_subset(wordnet_levels_path(), tmp_path / "p.jsonl", per_level=3)
    rows = list(read_jsonl(path))
    full = list(read_jsonl(wordnet_levels_path()))
    assert [r["level"] for r in rows] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert rows[:3] == [r for r in full if r["level"] == 1][:3]


@pytest.mark.slow
def test_a_training_stage_is_deterministic_given_the_seed(tmp_path: Path) -> None:
    """Two runs of the quickstart's tiny HyTE-FH MLM stage with one seed end with identical weights."""
    from safetensors.torch import load_file

    timer = qs.StageTimer(total=3, stream=io.StringIO())
    weights = []
    for run in ("a", "b"):
        plan = qs.make_plan(fast=True, steps=2, seed=5)
        overrides = qs.stage_overrides("hyte_fh_mlm", plan, tmp_path / run, tmp_path / "unused.jsonl")
        overrides["data_args.max_rows"] = 64
        final_dir, summary = qs.train_stage("hyte_fh_mlm", qs.CONFIG_DIR, overrides, timer)
        assert summary["steps"] == 2 and math.isfinite(summary["last_loss"])
        weights.append(load_file(str(final_dir / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# --- comparisons and report -----------------------------------------------------------------------------


def _model(ndcg: float, mrr: float, by_level: list[float], rho: float, kind: str) -> dict:
    """A model entry shaped like the quickstart's: evaluate_beir metrics and hierarchy_probe stats."""
    retrieval = {
        "ndcg@10": ndcg,
        "mrr@10": mrr,
        "recall@10": 0.5,
        "recall@100": 0.9,
        "meta": {"n_queries": 302},
    }
    hierarchy = {
        "levels": {str(i + 1): {"mean": v} for i, v in enumerate(by_level)},
        "relative_increase": (by_level[-1] - by_level[0]) / by_level[0],
        "spearman": {"rho": rho, "p_value": 0.01},
        "radius_kind": kind,
    }
    return {"retrieval": retrieval, "hierarchy": hierarchy}


def _models() -> dict:
    return {
        "minilm_zero_shot": _model(0.40, 0.35, [1.0, 1.0, 1.0, 1.0, 1.0], 0.0, "norm"),
        "euclidean": _model(0.45, 0.41, [2.0, 2.0, 1.9, 1.9, 1.9], -0.1, "norm"),
        "hyte_h": _model(0.45, 0.43, [2.0, 2.1, 2.2, 2.3, 2.4], 0.3, "radius"),
        "hyte_fh": _model(0.05, 0.04, [1.0, 1.0, 1.0, 1.0, 1.0], 0.0, "radius"),
    }


def test_comparisons_report_measured_values_and_ties_do_not_win() -> None:
    out = {(c["claim"]): c for c in qr.compare(_models())}
    tie = out["HyTE-H beats Euclidean twin on ndcg@10"]
    assert tie["a_value"] == tie["b_value"] == 0.45 and tie["holds"] is False
    mrr = out["HyTE-H beats Euclidean twin on mrr@10"]
    assert mrr["holds"] is True and mrr["delta"] == pytest.approx(0.02)
    assert out["HyTE-H beats all-MiniLM-L6-v2 (zero-shot) on ndcg@10"]["holds"] is True
    growth = out["HyTE-H radius grows with WordNet depth"]
    assert growth["a_value"] == pytest.approx(20.0) and growth["holds"] is True
    # Growth of the mean with a negative rank correlation is not "grows with depth".
    mixed = _models()
    mixed["hyte_h"]["hierarchy"]["spearman"]["rho"] = -0.05
    assert not next(c for c in qr.compare(mixed) if c["claim"] == growth["claim"])["holds"]
    flat = next(c for c in out.values() if c["a"] == "euclidean" and c["kind"] == "hierarchy")
    assert flat["a_value"] == pytest.approx(-5.0) and flat["holds"] is True

    shrinking = _models()
    shrinking["hyte_h"]["hierarchy"]["relative_increase"] = -0.25
    shrinking["euclidean"]["hierarchy"]["relative_increase"] = 0.2
    out = {c["claim"]: c for c in qr.compare(shrinking)}
    assert out["HyTE-H radius grows with WordNet depth"]["holds"] is False
    assert (
        next(c for c in out.values() if c["a"] == "euclidean" and c["kind"] == "hierarchy")["holds"] is False
    )


def test_report_states_each_outcome_as_measured() -> None:
    models = _models()
    results = {
        "plan": {"seed": 42, "fast": False, "steps": 300, "fh_mlm_steps": 300, "fh_contrastive_steps": 150},
        "data": {
            "training_pairs": {"python_docs": 10, "wordnet_gloss": 5},
            "eval": "faq-dev",
            "probe": "p.jsonl",
        },
        "models": models,
        "comparisons": qr.compare(models),
        "timings_s": {"prepare data": 1.0, "report": 2.0},
        "total_seconds": 3.0,
        "peak_rss_mb": 1234.0,
        "plots": ["retrieval.png"],
    }
    report = qr.render_report(results)
    assert "| HyTE-H | 45.00 | 43.00 | 50.00 | 90.00 | +20.0 | +0.300 |" in report
    assert "HyTE-H beats Euclidean twin on ndcg@10: DOES NOT HOLD (45.00 vs 45.00, +0.00 points)" in report
    assert "HyTE-H beats Euclidean twin on mrr@10: HOLDS (43.00 vs 41.00, +2.00 points)" in report
    assert "HyTE-H radius grows with WordNet depth: HOLDS" in report
    assert "![retrieval.png](retrieval.png)" in report and "1234 MiB" in report


def test_stage_timer_prints_headers_and_accumulates() -> None:
    stream = io.StringIO()
    timer = qs.StageTimer(total=2, stream=stream)
    with timer.stage("one"):
        pass
    with pytest.raises(RuntimeError), timer.stage("two"):
        raise RuntimeError("boom")
    text = stream.getvalue()
    assert "[1/2] one" in text and "[2/2] two" in text and "two:" in text
    assert set(timer.seconds) == {"one", "two"} and all(v >= 0 for v in timer.seconds.values())


# --- the --fast run, end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("quickstart")
    results = qs.run_quickstart(out, seed=11, fast=True, stream=io.StringIO())
    return out, results


@pytest.mark.slow
def test_fast_run_writes_every_file_and_a_complete_results_json(fast_run: tuple[Path, dict]) -> None:
    out, _ = fast_run
    for name in ("results.json", "report.md", "retrieval.png", "training_loss.png", *qs.PROBE_PLOTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert on_disk["schema_version"] == qs.RESULTS_SCHEMA_VERSION
    assert list(on_disk["models"]) == list(qs.MODEL_KEYS)
    for key, model in on_disk["models"].items():
        for metric in ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100"):
            assert 0.0 <= model["retrieval"][metric] <= 1.0, (key, metric)
        levels = qr.level_means(model["hierarchy"])
        assert list(levels) == [1, 2, 3, 4, 5]
        assert all(math.isfinite(v) and v > 0 for v in levels.values()), key
        assert model["hierarchy"]["levels"]["1"]["n"] == qs.make_plan(fast=True).probe_per_level
    assert {c["a"] for c in on_disk["comparisons"]} == {"hyte_h", "euclidean"}
    assert {"euclidean", "hyte_h", "hyte_fh_mlm", "hyte_fh"} <= set(on_disk["training"])
    # Both twins got the same budget.
    te, th = on_disk["training"]["euclidean"], on_disk["training"]["hyte_h"]
    assert (te["steps"], te["batch_size"]) == (th["steps"], th["batch_size"]) == (on_disk["plan"]["steps"], 8)
    assert set(on_disk["timings_s"]) >= {"prepare data", "hierarchy probe", "report"}
    assert set(on_disk["cpu_seconds"]) == set(on_disk["timings_s"])
    assert on_disk["peak_rss_mb"] > 0
    # Checkpoints are pruned; the models are where the issue says.
    for name in ("hyte_h", "euclidean", "hyte_fh"):
        assert (out / "models" / name / "config.json").is_file()


@pytest.mark.slow
def test_fast_run_models_load_and_reproduce_their_metrics(fast_run: tuple[Path, dict]) -> None:
    import hyprag
    from hyprag.eval.retrieval import evaluate_beir

    out, results = fast_run
    model = hyprag.load_model(out / "models" / "hyte_h")
    assert model.is_hyperbolic and model.settings.pooling == "outward_einstein_midpoint"
    again = evaluate_beir(model, results["data"]["eval"], "test", batch_size=32, top_k=100)
    recorded = results["models"]["hyte_h"]["retrieval"]
    for metric in ("ndcg@10", "mrr@10", "recall@10"):
        assert again[metric] == pytest.approx(recorded[metric], abs=1e-9), metric
    assert not hyprag.load_model(out / "models" / "euclidean").is_hyperbolic
    assert hyprag.load_model(out / "models" / "hyte_fh").is_hyperbolic


@pytest.mark.slow
def test_fast_run_report_contains_the_table_and_outcomes(fast_run: tuple[Path, dict]) -> None:
    out, results = fast_run
    report = (out / "report.md").read_text(encoding="utf-8")
    assert qr.format_comparison_table(results["models"]) in report
    for comparison in results["comparisons"]:
        assert comparison["claim"] in report
    assert "--fast" in report
