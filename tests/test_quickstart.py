"""``lorentz-rag quickstart``: the plan, the training mixture, comparisons, the report, the CLI, and the
``--fast`` run end to end (slow)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

from lorentz_rag import quickstart as qs
from lorentz_rag import quickstart_data as qd
from lorentz_rag import quickstart_report as qr
from lorentz_rag.cli import build_parser
from lorentz_rag.data.beir import load_beir
from lorentz_rag.data.bundled import faq_dev_path, read_jsonl, wordnet_levels_path

# --- plan and CLI ---------------------------------------------------------------------------------------


def test_plan_scales_every_training_stage_with_steps() -> None:
    full = qs.make_plan()
    half = qs.make_plan(steps=full.steps // 2)
    assert half.steps == full.steps // 2
    assert half.fh_mlm_steps == round(full.fh_mlm_steps / 2)
    assert half.fh_contrastive_steps == round(full.fh_contrastive_steps / 2)
    fast = qs.make_plan(fast=True, seed=7)
    assert fast.seed == 7 and fast.fast and fast.seeds == [7, 8]
    assert fast.steps < full.steps and fast.eval_queries is not None and fast.probe_per_level is not None
    # --fast shrinks every row identically: the comparison stays like for like.
    assert fast.overrides["euclidean"] == fast.overrides["hyte_h"] == fast.overrides["euclidean_distance"]
    # The protocol: at least 5 seeds by default, each row over every seed.
    assert full.seeds == [42, 43, 44, 45, 46] and full.slow_row_seeds == 5
    assert qs.make_plan(seed=3, seeds=7).seeds == list(range(3, 10))
    with pytest.raises(ValueError, match="--steps"):
        qs.make_plan(steps=0)
    with pytest.raises(ValueError, match="--seeds"):
        qs.make_plan(seeds=0)


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
    assert (defaults.out, defaults.seed, defaults.steps, defaults.fast, defaults.seeds) == (
        "runs/quickstart",
        42,
        None,
        False,
        None,
    )
    with_seeds = build_parser().parse_args(["quickstart", "--seeds", "6"])
    assert qs.main_from_args(with_seeds, run=fake_run) == 0
    assert calls[-1][1]["seeds"] == 6


def test_every_quickstart_config_validates_and_twins_share_the_budget() -> None:
    from lorentz_rag.training.config import load_config

    configs = {
        name: load_config(qs.CONFIG_DIR / file, dotenv_dir=None) for name, file in qs.CONFIG_FILES.items()
    }
    h, d, e = configs["hyte_h"], configs["euclidean_distance"], configs["euclidean"]
    assert (h.model_args.model_type, h.model_args.hyte_h_head, h.train_args.distance) == (
        "hyte_h",
        "pooled",
        "geodesic",
    )
    assert (d.model_args.euclidean_head, d.train_args.distance) == ("direction_norm", "euclidean")
    assert (e.model_args.euclidean_head, e.train_args.distance) == ("linear", "cosine")
    shared_train = ("max_steps", "batch_size", "seed", "warmup_steps", "schedule_type", "weight_decay")
    for twin in (d, e):
        assert {k: getattr(h.train_args, k) for k in shared_train} == {
            k: getattr(twin.train_args, k) for k in shared_train
        }
    # The fair twin differs from HyTE-H only in geometry: same head settings, lr, logit scale, losses.
    assert h.train_args.learning_rate == d.train_args.learning_rate
    assert h.train_args.logit_scale == d.train_args.logit_scale
    shared_model = (
        "model_name",
        "embedding_dim",
        "projection_init",
        "freeze_base",
        "max_seq_length",
        "query_prefix",
        "document_prefix",
        "pooling",
    )
    for twin in (d, e):
        assert {k: getattr(h.model_args, k) for k in shared_model} == {
            k: getattr(twin.model_args, k) for k in shared_model
        }
    assert {k: getattr(h.model_args, k) for k in ("radius_init", "radius_gain", "max_norm")} == {
        k: getattr(d.model_args, k) for k in ("radius_init", "radius_gain", "max_norm")
    }
    assert h.hierarchy_args.enabled and d.hierarchy_args.enabled and e.hierarchy_args.enabled
    # Every twin gets the same edges and negatives (weights and margins are tuned per geometry on the tune
    # halves, benchmarks/tune_quickstart.py; the cosine twin's margin is on the 1 - cos scale).
    edges = ("edges_per_step", "max_children", "pool_seed", "direct_fraction", "sibling_fraction")
    for twin in (d, e):
        assert all(getattr(twin.hierarchy_args, k) == getattr(h.hierarchy_args, k) for k in edges)
    assert (h.hierarchy_args.margin, h.hierarchy_args.centripetal_margin) == (
        d.hierarchy_args.margin,
        d.hierarchy_args.centripetal_margin,
    )
    assert configs["hyte_fh_mlm"].train_args.task == "mlm"
    assert configs["hyte_fh"].model_args.model_type == "hyte_fh"
    # Every row's overrides validate against its config.
    for row in qs.ROWS:
        load_config(qs.CONFIG_DIR / qs.CONFIG_FILES[row.config], dict(row.overrides), dotenv_dir=None)
        assert row.role == "main" or row.base in qr.MAIN_KEYS


# --- data -----------------------------------------------------------------------------------------------


def test_training_mixture_is_seeded_and_takes_what_it_says(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    counts = qd.prepare_training_pairs(a, seed=1, python_docs_pairs=100, wordnet_pairs=50)
    qd.prepare_training_pairs(b, seed=1, python_docs_pairs=100, wordnet_pairs=50)
    qd.prepare_training_pairs(c, seed=2, python_docs_pairs=100, wordnet_pairs=50)
    assert counts == {"python_docs": 100, "wordnet_gloss": 50}
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    rows = list(read_jsonl(a))
    assert len(rows) == 150 and all(set(r) == {"query", "document"} for r in rows)
    # Every row comes from the bundled files, with no duplicates created by sampling.
    from lorentz_rag.data.bundled import data_dir

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
        qd.prepare_eval_subset(faq_dev_path(), tmp_path / "whole", n_queries=26, n_docs=None, seed=0)
    )
    assert len(whole.queries) == 26 and whole.corpus == full.corpus
    # Half the sampled queries come from each part, and the parts' qrels are kept.
    tune, report = (load_beir(tmp_path / "whole", part) for part in ("tune", "report"))
    assert len(tune.queries) == len(report.queries) == 13 and not set(tune.queries) & set(report.queries)
    assert all(whole.qrels[q] == full.qrels[q] and whole.queries[q] == full.queries[q] for q in whole.queries)
    small = load_beir(
        qd.prepare_eval_subset(faq_dev_path(), tmp_path / "small", n_queries=26, n_docs=60, seed=0)
    )
    assert list(small.queries) == list(whole.queries)  # same seed, same queries
    assert len(small.corpus) == 60
    assert all(d in small.corpus for q in small.qrels for d in small.qrels[q])
    assert all(small.corpus[d] == full.corpus[d] for d in small.corpus)
    other = load_beir(
        qd.prepare_eval_subset(faq_dev_path(), tmp_path / "other", n_queries=26, n_docs=60, seed=1)
    )
    assert list(other.queries) != list(small.queries)


def test_probe_subset_takes_the_first_items_of_each_level(tmp_path: Path) -> None:
    path = qd.prepare_probe_subset(wordnet_levels_path(), tmp_path / "p.jsonl", per_level=3)
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


def _evaluation(ndcg: list[float], rho: float, growth: float) -> dict:
    """One seed's evaluation, shaped like quickstart.evaluate_model's, with per-query nDCG@10 = MRR@10."""

    def metrics(values: list[float]) -> dict:
        per_query = {f"q{i}": {"ndcg@10": v, "mrr@10": v} for i, v in enumerate(values)}
        mean = sum(values) / len(values)
        return {
            "ndcg@10": mean,
            "mrr@10": mean,
            "recall@10": mean,
            "per_query": per_query,
            "meta": {"n_queries": len(values)},
        }

    probe = {"relative_increase": growth, "spearman": {"rho": rho}, "radius_kind": "radius d(o, x)"}
    return {
        "wordnet-hier": {"tune": metrics(ndcg), "report": metrics(ndcg)},
        "faq-dev": {"tune": metrics(ndcg), "report": metrics(ndcg)},
        "probe": {"tune": probe, "report": probe},
    }


def _measured(shift: float) -> dict:
    """HyTE-H scores ``shift`` above the twins on every query and seed; the zero-shot base is one 'seed'."""
    base = [0.2, 0.4, 0.6, 0.5, 0.3, 0.7, 0.1, 0.45]
    seeds = ("1", "2", "3", "4", "5")

    def row(
        offset: float, rho: float, growth: float, role: str = "main", base_key: str | None = None
    ) -> dict:
        return {
            "label": "x",
            "role": role,
            "base": base_key,
            "seeds": {
                s: _evaluation([v + offset + 0.001 * int(s) for v in base], rho, growth) for s in seeds
            },
        }

    return {
        "minilm_zero_shot": {
            "label": "zero-shot",
            "role": "baseline",
            "seeds": {"-": _evaluation(base, 0.1, 0.05)},
        },
        "hyte_h": {**row(shift, 0.5, 0.12), "label": "HyTE-H"},
        "euclidean_distance": {**row(0.0, 0.2, 0.03), "label": "twin"},
        "euclidean": {**row(0.0, 0.1, 0.02), "label": "cosine twin"},
        "hyte_h_no_hierarchy": {**row(0.0, 0.0, 0.0, "ablation", "hyte_h"), "label": "ablation"},
    }


def test_comparisons_hold_only_when_the_interval_excludes_zero() -> None:
    comparisons = qr.compare(_measured(0.03))
    win = {(c["kind"], c.get("b")): c for c in comparisons}
    hier = win[("retrieval", "euclidean_distance")]
    assert hier["mean"] == pytest.approx(0.03) and hier["holds"] and hier["meets_aim"]
    assert hier["n_seeds"] == 5 and hier["n_queries"] == 8 and hier["low"] > 0
    assert win[("retrieval", "minilm_zero_shot")]["holds"]  # paired against a one-'seed' baseline
    assert win[("parity", "euclidean")]["holds"]
    radius = win[("radius", None)]
    assert radius["holds"] and radius["spearman"]["mean"] == pytest.approx(0.5)
    ablation = next(c for c in comparisons if c["kind"] == "ablation" and c["set"] == "wordnet-hier")
    assert ablation["mean"] == pytest.approx(-0.03) and ablation["holds"] is None
    # A tie is no win; a 2-point loss breaks parity (margin 1 point).
    tie = {(c["kind"], c.get("b")): c for c in qr.compare(_measured(0.0))}
    assert not tie[("retrieval", "euclidean_distance")]["holds"]
    assert tie[("parity", "euclidean_distance")]["holds"]
    loss = {(c["kind"], c.get("b")): c for c in qr.compare(_measured(-0.02))}
    assert not loss[("parity", "euclidean_distance")]["holds"]
    # The radius claim needs both thresholds.
    weak = _measured(0.03)
    for e in weak["hyte_h"]["seeds"].values():
        e["probe"]["report"]["relative_increase"] = 0.05
    assert not next(c for c in qr.compare(weak) if c["kind"] == "radius")["holds"]


def test_report_states_each_outcome_with_its_interval() -> None:
    measured = _measured(0.03)
    results = {
        "plan": {
            "seeds": [1, 2, 3, 4, 5],
            "fast": False,
            "steps": 100,
            "fh_mlm_steps": 300,
            "fh_contrastive_steps": 150,
        },
        "data": {"training_pairs": {"python_docs": 10, "wordnet_gloss": 5}},
        "models": measured,
        "summary": qr.summarize(measured),
        "comparisons": qr.compare(measured),
        "timings_s": {"prepare data": 1.0, "report": 2.0},
        "total_seconds": 3.0,
        "peak_rss_mb": 1234.0,
        "plots": ["retrieval.png"],
    }
    report = qr.render_report(results)
    assert qr.format_comparison_table(results["summary"]) in report
    assert "| HyTE-H | 5 | 43.93 +- 0.16 |" in report and "| +0.500 +- 0.000 |" in report
    assert "HyTE-H beats twin on wordnet-hier nDCG@10: HOLDS (paired difference +3.00 points" in report
    assert "HyTE-H radius rises with WordNet depth" in report and "1234 MiB" in report
    assert "![retrieval.png](retrieval.png)" in report


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
    results = qs.run_quickstart(out, seed=11, fast=True, rows=["hyte_h_token"], stream=io.StringIO())
    return out, results


@pytest.mark.slow
def test_fast_run_writes_every_file_and_a_complete_results_json(fast_run: tuple[Path, dict]) -> None:
    out, _ = fast_run
    for name in ("results.json", "report.md", "retrieval.png", "training_loss.png", *qs.PROBE_PLOTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert on_disk["schema_version"] == qs.RESULTS_SCHEMA_VERSION
    assert list(on_disk["models"]) == [
        "minilm_zero_shot", "hyte_h", "euclidean_distance", "euclidean", "hyte_h_token", "hyte_fh"
    ]  # fmt: skip
    for key, model in on_disk["models"].items():
        want = ["-"] if key == "minilm_zero_shot" else ["11"] if key == "hyte_fh" else ["11", "12"]
        assert list(model["seeds"]) == want, key
        for evaluation in model["seeds"].values():
            for name in ("faq-dev", "wordnet-hier"):
                for part in ("tune", "report"):
                    metrics = evaluation[name][part]
                    assert "per_query" not in metrics
                    assert all(0.0 <= metrics[m] <= 1.0 for m in ("ndcg@10", "mrr@10", "recall@10"))
            assert math.isfinite(evaluation["probe"]["report"]["spearman"]["rho"])
    kinds = {c["kind"] for c in on_disk["comparisons"]}
    assert kinds == {"retrieval", "parity", "radius", "radius_info", "ablation"}
    # Every row got the same budget on every seed.
    budgets = {
        (t["steps"], t["batch_size"])
        for key, model in on_disk["models"].items()
        if key not in ("minilm_zero_shot", "hyte_fh")
        for t in model["training"].values()
    }
    assert budgets == {(on_disk["plan"]["steps"], 8)}
    assert on_disk["base_state_cache"]["hits"] > 0
    assert set(on_disk["cpu_seconds"]) == set(on_disk["timings_s"])
    for name in ("hyte_h", "euclidean", "euclidean_distance", "hyte_fh"):
        assert (out / "models" / name / "config.json").is_file()
    assert not list((out / "train").rglob("ckpt-*"))


@pytest.mark.slow
def test_fast_run_models_load_and_reproduce_their_metrics(fast_run: tuple[Path, dict]) -> None:
    import lorentz_rag
    from lorentz_rag.eval.retrieval import evaluate_beir

    out, results = fast_run
    model = lorentz_rag.load_model(out / "models" / "hyte_h")
    assert model.is_hyperbolic and model.head_kind == "pooled"
    for name in ("wordnet-hier", "faq-dev"):
        again = evaluate_beir(model, results["data"]["eval"][name], "report", batch_size=32, top_k=100)
        recorded = results["models"]["hyte_h"]["seeds"]["11"][name]["report"]
        for metric in ("ndcg@10", "mrr@10", "recall@10"):
            assert again[metric] == pytest.approx(recorded[metric], abs=1e-9), (name, metric)
    twin = lorentz_rag.load_model(out / "models" / "euclidean_distance")
    assert not twin.is_hyperbolic and twin.settings.similarity == "euclidean"
    assert lorentz_rag.load_model(out / "models" / "euclidean").settings.similarity == "cosine"
    assert lorentz_rag.load_model(out / "models" / "hyte_fh").is_hyperbolic


@pytest.mark.slow
def test_fast_run_report_contains_the_table_and_outcomes(fast_run: tuple[Path, dict]) -> None:
    out, results = fast_run
    report = (out / "report.md").read_text(encoding="utf-8")
    assert qr.format_comparison_table(results["summary"]) in report
    for comparison in results["comparisons"]:
        assert comparison["claim"] in report
    assert "--fast" in report
