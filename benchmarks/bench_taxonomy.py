"""The taxonomy recipe's measurement: zero-shot MiniLM, HyTE-H and its Euclidean-distance twin
trained with configs/taxonomy/*.yaml, over seeds and taxonomies, on each taxonomy's held-out concepts.

Per taxonomy, ``lorentz-rag taxonomy build`` (the same split as the training runs) gives the evaluation sets;
every model is measured on their ``report`` halves (``--part tune`` to choose settings):

- broader / narrower / synonym nDCG@10 (plain similarity), and broader nDCG@10 with ``relation="broader"``
  for the models with a radius (exact float64 ranking, :meth:`EmbeddingModel.search`);
- faq-dev nDCG@10 (general retrieval, the bundled report half);
- depth: Spearman of radius (norm) against the depth level of the held-out concepts (``eval/levels.jsonl``);
- subsumption F1 (HiT's protocol, hard negatives, threshold chosen on validation; scored by the relation
  score ``broader`` for radius models, by similarity for zero-shot).

A no-training row, ``graph_knn``: the zero-shot model with the taxonomy's train split attached
(:mod:`lorentz_rag.search.graph_knn`, default :class:`GraphKnnSettings`) on the same sets: broader and
narrower nDCG@10 ranked by graph-kNN, subsumption F1 scored by :func:`lorentz_rag.eval.subsumption.graph_subsumption_scores`; synonym and
faq-dev are the zero-shot numbers (plain similarity, unchanged by the graph); no depth (no new embeddings).

Reported: mean +- sd over seeds and paired bootstrap 95% intervals (:mod:`lorentz_rag.eval.stats`, seeds and
queries resampled) for HyTE-H - twin, each model - zero-shot, broader-by-relation - broader-by-similarity,
and broader graph-kNN - zero-shot and each model (by similarity and by relation) - graph-kNN.
Results: ``OUT/results.json`` and ``OUT/report.md``. The full run (5 seeds, both bundled taxonomies) is
long on a CPU; ``--quick`` is a smoke run whose numbers mean nothing (tests/benchmarks/test_bench_taxonomy.py):

    .venv/bin/python benchmarks/bench_taxonomy.py --taxonomies wordnet icd10cm --seeds 5 --out runs/bench_taxonomy
    .venv/bin/python benchmarks/bench_taxonomy.py --quick --taxonomies tests/data/fixtures/animals.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import numpy as np
import torch
import yaml

import lorentz_rag
from lorentz_rag.data.beir import document_text, load_beir
from lorentz_rag.data.bundled import faq_dev_path
from lorentz_rag.data.taxonomy import read_taxonomy, wordnet_held_out_ids
from lorentz_rag.data.taxonomy_sets import TaxonomySetOptions, build_taxonomy_sets, resolve_taxonomy
from lorentz_rag.eval.hierarchy import embedding_radii, radius_stats, read_level_rows
from lorentz_rag.eval.retrieval import compute_metrics, evaluate_beir
from lorentz_rag.eval.stats import mean_sd, paired_bootstrap
from lorentz_rag.eval.subsumption import (
    evaluate_subsumption,
    graph_subsumption_scores,
    read_subsumption_pairs,
    subsumption_f1,
)
from lorentz_rag.models.hf_base import cached_base_states
from lorentz_rag.search.graph_knn import ConceptGraph, GraphKnnSettings
from lorentz_rag.training.config import load_config
from lorentz_rag.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
# The configs name the bundled pairs as ${LORENTZ_RAG_DATA_DIR:-data}/...: found from any working directory.
os.environ.setdefault("LORENTZ_RAG_DATA_DIR", str(ROOT / "data"))
MODELS = {"hyte_h": "hyte_h.yaml", "twin": "euclidean_distance.yaml"}
SETS = ("broader", "narrower", "synonym")


def _ndcg(
    model: Any, folder: Path, part: str, relation: str = "similar", graph: ConceptGraph | None = None
) -> list[float]:
    """Per-query nDCG@10 (queries with judgments, by id) of ``model`` on a BEIR folder's ``part``; empty when
    no query of the part is judged (a tiny taxonomy's held-out leaves have no descendants). With ``graph``
    (``broader`` / ``narrower``): ranked by graph-kNN over it, documents linked by id and text."""
    if not any(load_beir(folder, part).qrels.values()):
        return []
    if relation == "similar":
        metrics = evaluate_beir(model, folder, part, top_k=10, per_query=True)
        per_query = metrics["per_query"]
    else:
        data = load_beir(folder, part)
        doc_ids = list(data.corpus)
        query_ids = [q for q in data.queries if data.qrels.get(q)]
        texts = [document_text(data.corpus[d]) for d in doc_ids]
        queries = [data.queries[q] for q in query_ids]
        if graph is not None:
            hits = model.search(queries, texts, 10, relation=relation, taxonomy=graph, doc_ids=doc_ids)
        else:
            hits = model.search(queries, model.encode(texts, "document"), k=10, relation=relation)
        ranked = {q: [doc_ids[p] for p, _ in row] for q, row in zip(query_ids, hits)}
        per_query = compute_metrics({q: data.qrels[q] for q in query_ids}, ranked, per_query=True)[
            "per_query"
        ]
    return [float(per_query[q]["ndcg@10"]) for q in sorted(per_query)]


class _MemoEncoder:
    """``model`` whose ``encode`` embeds each distinct (prompt type, text) once: the sets of one taxonomy share
    many documents (broader by similarity and by relation read the same corpus). An embedding does not depend
    on its batch-mates, so the values are the model's own."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._memo: dict[tuple[Any, str], torch.Tensor] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def encode(
        self, texts: Any, prompt_type: Any = None, batch_size: int = 32, **kwargs: Any
    ) -> torch.Tensor:
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        missing = list(dict.fromkeys(t for t in items if (prompt_type, t) not in self._memo))
        if missing:
            rows = self._model.encode(missing, prompt_type, batch_size=batch_size, **kwargs)
            self._memo.update({(prompt_type, t): row for t, row in zip(missing, rows)})
        if not items:
            return self._model.encode(items, prompt_type, batch_size=batch_size, **kwargs)
        out = torch.stack([self._memo[(prompt_type, t)] for t in items])
        return out[0] if single else out


def evaluate(model: Any, sets: Path, part: str, has_radius: bool) -> dict[str, Any]:
    """Every measurement of one model (per-query lists where a bootstrap needs them)."""
    model = _MemoEncoder(model)
    out: dict[str, Any] = {name: _ndcg(model, sets / "eval" / name, part) for name in SETS}
    if has_radius:
        out["broader_relation"] = _ndcg(model, sets / "eval" / "broader", part, relation="broader")
    out["faq_dev"] = _ndcg(model, faq_dev_path(), "report" if part == "report" else "tune")
    rows = read_level_rows(sets / "eval" / "levels.jsonl")
    radii, _, _ = embedding_radii(model, [r["text"] for r in rows])
    out["depth_spearman"] = radius_stats(radii, [int(r["level"]) for r in rows])["spearman"]["rho"]
    relation = "broader" if has_radius else "similar"
    out["subsumption_f1"] = evaluate_subsumption(model, sets / "eval" / "subsumption", relation=relation)[
        "f1"
    ]
    return out


def evaluate_graph_knn(model: Any, sets: Path, part: str, zero_shot: dict[str, Any]) -> dict[str, Any]:
    """Graph-kNN with ``model`` (zero-shot) and the sets' train split attached, default settings: broader /
    narrower nDCG@10 ranked by graph-kNN, subsumption F1 scored by :func:`lorentz_rag.eval.subsumption.graph_subsumption_scores` (threshold
    on validation, hard negatives, as the other rows)."""
    model = _MemoEncoder(model)
    graph = ConceptGraph.from_taxonomy(model, read_taxonomy(sets / "train.jsonl.gz"), GraphKnnSettings())
    out: dict[str, Any] = {
        name: _ndcg(model, sets / "eval" / name, part, relation=name, graph=graph)
        for name in ("broader", "narrower")
    }
    # Synonym and faq-dev rank by plain similarity, which the attached taxonomy does not change: the
    # zero-shot numbers by construction.
    out["synonym"] = list(zero_shot["synonym"])
    out["faq_dev"] = list(zero_shot["faq_dev"])
    # No depth Spearman: graph-kNN leaves the embeddings (and so their radii) as they are.
    halves = []
    for name in ("validation", "test"):
        rows = read_subsumption_pairs(sets / "eval" / "subsumption" / f"{name}.jsonl.gz", "hard")
        halves += [graph_subsumption_scores(model, graph, rows), np.array([r["label"] for r in rows])]
    out["subsumption_f1"] = subsumption_f1(*halves)["f1"]
    out["settings"] = graph.settings.to_dict()
    return out


def _train(
    taxonomy: str,
    name: str,
    seed: int,
    steps: int | None,
    out: Path,
    options: TaxonomySetOptions,
    quick: bool,
    extra: dict[str, Any],
) -> Any:
    """Train one model with the recipe on the split ``options`` describe; its final model."""
    overrides: dict[str, Any] = {
        "taxonomy_args.path": taxonomy,
        "taxonomy_args.held_out_fraction": options.held_out_fraction,
        "taxonomy_args.validation_fraction": options.validation_fraction,
        "taxonomy_args.seed": options.seed,
        "train_args.seed": seed,
        "train_args.output_dir": str(out),
        "train_args.overwrite": True,
        # main() keeps one base-state cache for every run (the same numbers: hf_base.py); a run's own would
        # start empty.
        "train_args.cache_base_states": False,
    }
    if steps is not None:
        overrides["train_args.max_steps"] = steps
    overrides.update(extra)
    if quick:
        overrides.update(
            {
                "train_args.batch_size": 4,
                "train_args.warmup_steps": 0,
                "model_args.max_seq_length": 16,
                "train_args.max_seq_length": 16,
            }
        )
        overrides.update({"hierarchy_args.edges_per_step": 4, "taxonomy_args.replay_share": 0.0})
    config = load_config(
        ROOT / "configs" / "taxonomy" / "single_channel" / MODELS[name], overrides, dotenv_dir=None
    )
    return lorentz_rag.load_model(train(config).final_model_dir)


def _overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as config overrides (values parsed as YAML scalars: numbers, booleans, null)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set {item!r}: write KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def _timed(fn: Any, what: str, *args: Any) -> Any:
    """``fn(*args)``, with its wall time printed (a full run takes hours: progress on stderr)."""
    start = time.perf_counter()
    result = fn(*args)
    print(f"[bench_taxonomy] {what}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return result


def _zero_shot(model: Any, sets: Path, part: str, tag: str, cache: str | None) -> dict[str, Any]:
    """The zero-shot measurements, read from ``cache`` when it holds them for these exact set files."""
    if cache is None:
        return _timed(evaluate, f"{tag} zero-shot", model, sets, part, False)
    digest = hashlib.sha1()
    for path in sorted((sets / "eval").rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(sets).as_posix().encode() + b"\0" + path.read_bytes())
    stored = Path(cache) / f"{tag}-{part}-{digest.hexdigest()[:16]}.json"
    if stored.is_file():
        return json.loads(stored.read_text(encoding="utf-8"))
    result = _timed(evaluate, f"{tag} zero-shot", model, sets, part, False)
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(result) + "\n", encoding="utf-8")
    return result


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    """Means +- sd and the paired intervals of one taxonomy's results."""
    zero, trained = results["zero_shot"], results["trained"]
    graph = results.get("graph_knn", {})
    summary: dict[str, Any] = {}
    metrics = [*SETS, "broader_relation", "faq_dev", "depth_spearman", "subsumption_f1"]
    for metric in metrics:
        row: dict[str, Any] = {}
        for name, measured in (("zero_shot", zero), ("graph_knn", graph)):
            if metric in measured:
                value = measured[metric]
                row[name] = (
                    (float(np.mean(value)) if value else float("nan")) if isinstance(value, list) else value
                )
        for name in trained:
            values = [r[metric] for r in trained[name] if metric in r]
            scalars = [
                (float(np.mean(v)) if v else float("nan")) if isinstance(v, list) else v for v in values
            ]
            row[name] = mean_sd(scalars)
        summary[metric] = row
    intervals: dict[str, Any] = {}
    for metric in [*SETS, "faq_dev"]:
        if not zero[metric]:
            continue
        per_model = {name: np.array([r[metric] for r in runs]) for name, runs in trained.items()}
        if len(per_model) == len(MODELS):
            intervals[f"{metric}: hyte_h - twin"] = paired_bootstrap(per_model["hyte_h"], per_model["twin"])
        for name, x in per_model.items():
            intervals[f"{metric}: {name} - zero_shot"] = paired_bootstrap(x, np.array(zero[metric]))
    for name in trained:
        if not zero["broader"]:
            continue
        rel = np.array([r["broader_relation"] for r in trained[name]])
        plain = np.array([r["broader"] for r in trained[name]])
        intervals[f"broader: {name} relation - similarity"] = paired_bootstrap(rel, plain)
    if graph.get("broader"):
        # Graph-kNN has no seed: its one per-query list is paired with every seed of the trained models.
        by_graph = np.array(graph["broader"])
        intervals["broader: graph_knn - zero_shot"] = paired_bootstrap(
            by_graph[None], np.array(zero["broader"])
        )
        for name, runs in trained.items():
            for metric, what in (("broader", ""), ("broader_relation", " relation")):
                x = np.array([r[metric] for r in runs if metric in r])
                if len(x):
                    intervals[f"broader: {name}{what} - graph_knn"] = paired_bootstrap(x, by_graph)
    return {"means": summary, "intervals": intervals}


def _report(all_results: dict[str, Any]) -> str:
    lines = ["# Taxonomy recipe benchmark", ""]
    for taxonomy, res in all_results["taxonomies"].items():
        names = list(res["trained"])
        lines += [f"## {taxonomy}", "", "| metric | zero-shot | graph-kNN | " + " | ".join(names) + " |"]
        lines.append("|---" * (len(names) + 3) + "|")
        for metric, row in res["summary"]["means"].items():
            cells = [
                f"{row[n]:.4f}" if isinstance(row.get(n), float) else "-" for n in ("zero_shot", "graph_knn")
            ]
            cells += [f"{row[n][0]:.4f} +- {row[n][1]:.4f}" for n in names]
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        lines += ["", "| comparison | mean | 95% interval |", "|---|---|---|"]
        for name, iv in res["summary"]["intervals"].items():
            lines.append(f"| {name} | {iv['mean']:+.4f} | [{iv['low']:+.4f}, {iv['high']:+.4f}] |")
        lines.append("")
    lines.append(f"Settings: {json.dumps(all_results['settings'])}")
    return "\n".join(lines) + "\n"


def _one_taxonomy(
    taxonomy: str,
    args: argparse.Namespace,
    seeds: list[int],
    steps: int | None,
    out: Path,
    extra: dict[str, Any],
    zero_shot: Any,
) -> dict[str, Any]:
    """Sets, zero-shot, and every model x seed trained and measured on one taxonomy."""
    start = time.perf_counter()
    path = resolve_taxonomy(taxonomy)
    tag = Path(taxonomy).stem.split(".")[0]
    sets = out / tag / "sets"
    options = TaxonomySetOptions()
    if args.quick:  # small sets; a fixture taxonomy is tiny: hold out enough concepts for every set
        options = TaxonomySetOptions(
            held_out_fraction=0.3, max_queries=20, corpus_size=200, subsumption_concepts=20, negatives=2
        )
    build_taxonomy_sets(read_taxonomy(path), sets, options, candidates=wordnet_held_out_ids(path))
    res: dict[str, Any] = {"zero_shot": _zero_shot(zero_shot, sets, args.part, tag, args.zero_shot_cache)}
    res["graph_knn"] = _timed(
        evaluate_graph_knn, f"{tag} graph-kNN", zero_shot, sets, args.part, res["zero_shot"]
    )
    res["trained"] = {}
    for name in args.models:
        res["trained"][name] = []
        for seed in seeds:
            what = f"{tag} {name} seed {seed}"
            run = out / tag / f"{name}-{seed}"
            model = _timed(
                _train, f"{what} training", taxonomy, name, seed, steps, run, options, args.quick, extra
            )
            res["trained"][name].append(_timed(evaluate, f"{what} evaluation", model, sets, args.part, True))
    res["summary"] = _summary(res)
    res["seconds"] = time.perf_counter() - start
    return res


# --- one table of every row ---------------------------------------------------------------------------------

#: Columns of the combined table: (label, key in the single-channel summaries).
TABLE_COLUMNS = (
    ("broader", "broader"),
    ("narrower", "narrower"),
    ("synonym", "synonym"),
    ("faq-dev", "faq_dev"),
    ("subsumption F1, hard", "subsumption_f1"),
)


def _cell(value: Any, scale: float = 100.0) -> str:
    """``mean +- sd`` (a ``[mean, sd]`` pair) or a single number, scaled; ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return f"{scale * value[0]:.2f} +- {scale * value[1]:.2f}"
    return f"{scale * value:.2f}"


def combined_rows(results: Path, taxonomy: str) -> list[tuple[str, list[str], str]]:
    """Every row measured on ``taxonomy``'s report halves, read from the committed result files of the
    benchmarks that measure them: ``(row, cells in TABLE_COLUMNS order, source file)``."""
    rows: list[tuple[str, list[str], str]] = []
    single = results / "taxonomy_length" / f"report256_{taxonomy}.json"
    means: dict[str, Any] = {}
    if single.is_file():
        data = json.loads(single.read_text())
        means = data["alphas"]["1.0"]["taxonomies"][taxonomy]["summary"]["means"]
        zero = [_cell(means.get(key, {}).get("zero_shot")) for _, key in TABLE_COLUMNS]
        rows.append(("zero-shot MiniLM (S)", zero, single.name))
        for model, label in (
            ("hyte_h", "single-channel head recipe, HyTE-H"),
            ("twin", "single-channel, twin"),
        ):
            rows.append(
                (label, [_cell(means.get(key, {}).get(model)) for _, key in TABLE_COLUMNS], single.name)
            )
    two = results / "two_channel.json"
    if two.is_file():
        found = [t for t in json.loads(two.read_text())["taxonomies"] if t["tag"] == taxonomy]
        for t in found:
            same = [_cell(means.get(key, {}).get("zero_shot")) for key in ("synonym", "faq_dev")]
            for row in t["rows"]["broader"]:
                if row == "zero-shot S":
                    continue
                cells = [
                    _cell(t["rows"][rel][row]["all"], 1.0) for rel in ("broader", "narrower")
                ] + same  # S untouched: synonym and faq-dev are zero-shot's by construction
                name = row.split(" ")[-1] if row.startswith(("graph-kNN +", "S +")) else row.split(" ")[0]
                sub = t["subsumption"].get(f"{name} (name, hard)")
                cells.append(_cell(sub["h"]) if sub and row.endswith("alone") else "-")
                label = row + (" (the recipe's model)" if row == "graph-kNN + H^64" else "")
                rows.append((label, cells, two.name))
    hit = results / f"hit_{taxonomy}.json"
    if hit.is_file():
        h = json.loads(hit.read_text())
        cells = [
            _cell(h["retrieval"]["broader/definition"]["report"]["ndcg@10"], 1.0),
            _cell(h["retrieval"]["narrower/definition"]["report"]["ndcg@10"], 1.0),
            "-",
            "-",
            _cell(h["subsumption"]["hard/name"]["f1"]),
        ]
        rows.append(("HiT, 15 minutes of training (one run)", cells, hit.name))
        mixed = [
            h["retrieval"][f"{rel}/definition"].get("with_similarity", {}) for rel in ("broader", "narrower")
        ]
        if all("S + HiT" in m for m in mixed):
            cells = [_cell(m["S + HiT"]["report"]["ndcg@10"], 1.0) for m in mixed] + ["-", "-", "-"]
            rows.append(("S + HiT (HiT as channel H beside frozen S)", cells, hit.name))
    return rows


def combined_table(results: Path, taxonomies: list[str]) -> str:
    """The Markdown of :func:`combined_rows` for each taxonomy."""
    head = "| row | " + " | ".join(label for label, _ in TABLE_COLUMNS) + " | source |"
    lines = [
        "# Every taxonomy row on the report halves, in one table",
        "",
        "nDCG@10 x 100 (broader / narrower / synonym on the held-out concepts' report halves, faq-dev on its "
        "report half) and subsumption F1 x 100 with hard negatives (HiT's protocol, child by name), mean +- sd "
        "over 5 seeds where the source has seeds. Read from the committed result files named in the last column "
        "(their own headers give date, commit, machine, load and command, and the paired intervals); written by "
        "`.venv/bin/python benchmarks/bench_taxonomy.py --table`. `-`: not measured by that source. The "
        "two-channel rows leave S as it is, so their synonym and faq-dev are zero-shot's by construction "
        "(identical rankings, by test).",
        "",
    ]
    for taxonomy in taxonomies:
        rows = combined_rows(results, taxonomy)
        lines += [f"## {taxonomy}", "", head, "|---" * (len(TABLE_COLUMNS) + 2) + "|"]
        lines += [f"| {row} | " + " | ".join(cells) + f" | `{source}` |" for row, cells, source in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--taxonomies", nargs="+", default=["wordnet", "icd10cm"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=42)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the configs' 300)")
    parser.add_argument("--part", choices=["report", "tune"], default="report")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for both models' runs (e.g. hierarchy_args.weight=2; to try settings on --part tune)",
    )
    parser.add_argument(
        "--zero-shot-cache",
        default=None,
        help="folder keeping the zero-shot model's measurements per taxonomy, part and set files (they do not "
        "depend on any training setting: tuning runs share them)",
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--out", default="runs/bench_taxonomy")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny smoke run: 1 seed, 2 steps, small sets, both halves (test)",
    )
    parser.add_argument(
        "--table",
        action="store_true",
        help="write RESULTS/taxonomy_rows.md, every row of every benchmark in one table per taxonomy, from "
        "the committed result files (--results), and stop",
    )
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.table:
        text = combined_table(Path(args.results), args.taxonomies)
        (Path(args.results) / "taxonomy_rows.md").write_text(text, encoding="utf-8")
        print(text)
        return {"table": text}
    if args.quick:
        args.part = "test"
    seeds = [args.first_seed + i for i in range(1 if args.quick else args.seeds)]
    steps = 2 if args.quick else args.steps
    out = Path(args.out)
    extra = _overrides(args.set)
    zero_shot = lorentz_rag.load_model("all-MiniLM-L6-v2")
    results: dict[str, Any] = {"taxonomies": {}, "settings": {**vars(args), "seeds": seeds, "steps": steps}}
    for taxonomy in args.taxonomies:
        with cached_base_states() as cache:
            results["taxonomies"][taxonomy] = _one_taxonomy(
                taxonomy, args, seeds, steps, out, extra, zero_shot
            )
        print(
            f"[bench_taxonomy] base-state cache: {cache.misses} texts run, {cache.hits} read", file=sys.stderr
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_report(results), encoding="utf-8")
    print(_report(results))
    return results


if __name__ == "__main__":
    main()
