"""A model of the taxonomy recipe (``configs/taxonomy/hyte_h.yaml``: frozen similarity S, hierarchy channel H,
the train split carried), measured where the other benchmarks do not reach: relation search over documents
that are not concepts, and subsumption (is ``parent`` an ancestor of ``child``?) by each of its scores.

**Free text.** The taxonomy's ``eval/broader`` and ``eval/narrower`` sets, with the corpus as built and
re-worded as free text.

The free-text corpus gives every document an opaque id and the text ``"NAME: DEFINITION"`` of its concept,
which is no concept's name or document text, so no document links to a concept by id or text: graph-kNN
reaches each through its nearest concepts (``links_per_document``, weighted by similarity), and H reads the
text like any other. A mild check (the text still names its concept), but it runs every free-text path.

Rows, each through ``lorentz_rag.eval.retrieval.evaluate_beir`` (the ``eval beir --relation`` code):

- **S**: plain similarity (the frozen base);
- **S + H**: the model without its taxonomy (H mixed with S by its saved weight);
- **H alone**: H's relation score only (weight 1, no taxonomy: one vector search);
- **graph-kNN**: the carried taxonomy without H;
- **graph-kNN + H**: the model as saved (what the recipe ships).

nDCG@10 x 100 on the report half (``--split``), per query; paired bootstrap intervals over queries between
rows and between the two corpora. One trained model: a check of the free-text path, not a claim over seeds.

**Subsumption** (HiT's protocol, ``eval/subsumption/{validation,test}``, hard and random negatives, the child
by name): S's similarity; H's broader score; graph-kNN's share of the child's neighbours' votes for the
candidate (:func:`lorentz_rag.eval.subsumption.graph_subsumption_scores`); and graph-kNN + H, ``(1 - v) z(votes) + v
z(H)`` with the z statistics of the validation pairs. ``v`` (grid 0, 0.1, ..., 1) and the threshold are chosen
on validation; F1 on test.

    .venv/bin/python benchmarks/bench_recipe_model.py --model runs/recipe_cli/icd10cm/final \\
        --sets runs/graph_knn/icd10cm/sets --out benchmarks/results/free_text_icd10cm
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import lorentz_rag
from lorentz_rag.data.beir import load_beir, write_beir
from lorentz_rag.eval.retrieval import evaluate_beir
from lorentz_rag.eval.stats import paired_bootstrap
from lorentz_rag.eval.subsumption import (
    best_threshold,
    graph_subsumption_scores,
    read_subsumption_pairs,
    subsumption_f1,
)
from lorentz_rag.geometry.relation import relation_score
from lorentz_rag.geometry.similarity import rowwise

ROWS = ("S", "S + H", "H alone", "graph-kNN", "graph-kNN + H")
SUBSUMPTION_ROWS = ("S", "H", "graph-kNN", "graph-kNN + H")
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
RELATIONS = ("broader", "narrower")


def free_text_folder(source: Path, out: Path, names: dict[str, str]) -> Path:
    """``source`` (a BEIR folder of concept documents) with every document re-worded as ``NAME: DEFINITION``
    under an opaque id; queries and judgments follow the ids."""
    data = load_beir(source, "test")
    new_id = {doc_id: f"doc{i:06d}" for i, doc_id in enumerate(data.corpus)}
    corpus = {
        new_id[d]: {"title": "", "text": f"{names.get(d, '').strip()}: {row.get('text', '')}".lstrip(": ")}
        for d, row in data.corpus.items()
    }
    qrels = {q: {new_id[d]: g for d, g in rel.items()} for q, rel in data.qrels.items()}
    out.mkdir(parents=True, exist_ok=True)
    write_beir(out, corpus, data.queries, qrels)
    # The split file (tune / report halves of the queries) is carried over as it is.
    for extra in source.glob("qrels/*.tsv"):
        if extra.name != "test.tsv":
            rows = extra.read_text().splitlines()
            head, body = rows[0], rows[1:]
            mapped = [f"{q}\t{new_id[d]}\t{g}" for q, d, g in (line.split("\t") for line in body)]
            (out / "qrels" / extra.name).write_text("\n".join([head, *mapped]) + "\n")
    return out


def _row(model: Any, row: str) -> tuple[Any, dict[str, Any]]:
    """The model as ``row`` searches, and what to restore afterwards."""
    saved = {
        "graph": model.concept_graph,
        "channel": model.hierarchy_channel,
        "weights": dict(model.hierarchy_channel.config.weights),
    }
    if row in ("S + H", "H alone"):
        model.attach_concept_graph(None)
    if row == "H alone":
        model.hierarchy_channel.config.weights = {r: 1.0 for r in RELATIONS}
    if row == "graph-kNN":
        model.attach_hierarchy_channel(None)
    return model, saved


def _restore(model: Any, saved: dict[str, Any]) -> None:
    model.attach_concept_graph(saved["graph"])
    model.attach_hierarchy_channel(saved["channel"])
    saved["channel"].config.weights = saved["weights"]


def _scores(model: Any, folder: Path, split: str, relation: str, row: str) -> dict[str, float]:
    model, saved = _row(model, row)
    try:
        result = evaluate_beir(
            model,
            folder,
            split,
            top_k=100,
            per_query=True,
            relation="similar" if row == "S" else relation,
        )
    finally:
        _restore(model, saved)
    return {q: 100.0 * m["ndcg@10"] for q, m in result["per_query"].items()}


def _encode_distinct(model: Any, texts: list[str], prompt_type: str) -> torch.Tensor:
    """``model.encode(texts)``, each distinct text once (a pair file repeats its children many times)."""
    distinct = list(dict.fromkeys(texts))
    row = {t: i for i, t in enumerate(distinct)}
    return model.encode(distinct, prompt_type)[torch.tensor([row[t] for t in texts], dtype=torch.int64)]


def _pair_scores(model: Any, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per pair: S's similarity, H's broader score and graph-kNN's vote share (child by name)."""
    child = _encode_distinct(model, [str(r["child_name"]) for r in rows], "query")
    parent = _encode_distinct(model, [str(r["candidate_text"]) for r in rows], "document")
    channel = model.hierarchy_channel
    c = channel.config.curvature if channel.config.geometry == "lorentz" else None
    s_c = None if model.curvature() is None else float(model.curvature())
    with torch.no_grad():
        hc, hp = channel(child.float()).double(), channel(parent.float()).double()
    h = relation_score(hc, hp, "broader", channel.config.kind, c, channel.config.radius_weight)
    return {
        "S": rowwise(child.double(), parent.double(), model.settings.similarity, s_c).numpy(),
        "H": h.numpy(),
        "graph-kNN": graph_subsumption_scores(model, model.concept_graph, rows),
    }


def subsumption_table(model: Any, sets: Path) -> dict[str, Any]:
    """Test F1 per negatives setting and row (module docstring), with the choices made on validation."""
    out: dict[str, Any] = {}
    for setting in ("hard", "random"):
        halves = {}
        for name in ("validation", "test"):
            rows = read_subsumption_pairs(sets / "eval" / "subsumption" / f"{name}.jsonl.gz", setting)
            halves[name] = (_pair_scores(model, rows), np.array([r["label"] for r in rows]))
        (val, y_val), (test, y_test) = halves["validation"], halves["test"]
        res: dict[str, Any] = {}
        for row in ("S", "H", "graph-kNN"):
            res[row] = subsumption_f1(val[row], y_val, test[row], y_test)
        # graph-kNN + H: z statistics of the validation pairs, the weight and the threshold chosen there.
        stats = {k: (val[k].mean(), val[k].std() or 1.0) for k in ("H", "graph-kNN")}

        def mixed(scores: dict[str, np.ndarray], v: float, stats: dict = stats) -> np.ndarray:
            z = {k: (scores[k] - m) / sd for k, (m, sd) in stats.items()}
            return (1.0 - v) * z["graph-kNN"] + v * z["H"]

        best = max(WEIGHTS, key=lambda v: (best_threshold(mixed(val, v), y_val)[1], -v))
        res["graph-kNN + H"] = {
            **subsumption_f1(mixed(val, best), y_val, mixed(test, best), y_test),
            "v": best,
        }
        out[setting] = res
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder from configs/taxonomy/hyte_h.yaml")
    parser.add_argument("--sets", required=True, help="the taxonomy's `lorentz-rag taxonomy build` folder")
    parser.add_argument("--split", default="report")
    parser.add_argument("--out", required=True, help="RESULTS prefix: writes RESULTS.json and RESULTS.md")
    parser.add_argument(
        "--work", default="runs/recipe_model/corpora", help="where the re-worded corpora are written"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    model = lorentz_rag.load_model(args.model)
    if model.concept_graph is None or model.hierarchy_channel is None:
        raise SystemExit(f"{args.model}: not a model of the taxonomy recipe (no taxonomy or no channel)")
    graph = model.concept_graph
    names = dict(zip(graph.concept_ids, graph.names))
    sets = Path(args.sets)
    work = Path(args.work)
    table: dict[str, Any] = {}
    for relation in RELATIONS:
        source = sets / "eval" / relation
        # Held-out concepts in the corpus are not in the carried graph: their names come from the set itself.
        free = free_text_folder(source, work / relation, _query_names(source) | names)
        per = {}
        for corpus, folder in (("concepts", source), ("free text", free)):
            for row in ROWS:
                per[(corpus, row)] = _scores(model, folder, args.split, relation, row)
                print(f"{relation} {corpus:9s} {row:14s} {np.mean(list(per[(corpus, row)].values())):.2f}")
        queries = sorted(per[("concepts", "S")])
        vec = {key: np.array([v[q] for q in queries]) for key, v in per.items()}
        comparisons = {}
        for corpus in ("concepts", "free text"):
            for a, b in (("graph-kNN + H", "graph-kNN"), ("graph-kNN + H", "S + H"), ("H alone", "S")):
                comparisons[f"{corpus}: {a} - {b}"] = paired_bootstrap(
                    vec[(corpus, a)][None], vec[(corpus, b)]
                )
        for row in ROWS:
            comparisons[f"{row}: free text - concepts"] = paired_bootstrap(
                vec[("free text", row)][None], vec[("concepts", row)]
            )
        table[relation] = {
            "queries": len(queries),
            "mean": {f"{c} | {r}": float(v.mean()) for (c, r), v in vec.items()},
            "comparisons": comparisons,
        }
    subsumption = subsumption_table(model, sets)
    for setting, res in subsumption.items():
        print(f"subsumption {setting}: " + ", ".join(f"{row} {100 * res[row]['f1']:.1f}" for row in res))
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "load_average_end": os.getloadavg(),
        "seconds": time.perf_counter() - started,
        "command": "python benchmarks/bench_recipe_model.py " + " ".join(argv or []),
        "model": args.model,
        "channel": model.hierarchy_channel.config.to_dict(),
        "split": args.split,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": table, "subsumption": subsumption}, indent=1) + "\n"
    )
    out.with_suffix(".md").write_text(_markdown(meta, table, subsumption))
    print(f"wrote {out.with_suffix('.md')}")


def _query_names(source: Path) -> dict[str, str]:
    """Concept names from a set's name queries (``ID#name``): the held-out concepts the carried graph lacks."""
    data = load_beir(source, "test")
    return {q[: -len("#name")]: text for q, text in data.queries.items() if q.endswith("#name")}


def _markdown(meta: dict[str, Any], table: dict[str, Any], subsumption: dict[str, Any]) -> str:
    lines = [
        "# The taxonomy recipe's model: free-text documents and subsumption",
        "",
        f"{meta['date']}, commit {meta['commit']}, {meta['machine']}, load average at the end "
        + ", ".join(f"{x:.2f}" for x in meta["load_average_end"])
        + f", {meta['seconds']:.0f} s.",
        "",
        f"Command: `{meta['command']}`. Model: `{meta['model']}` (the taxonomy recipe, "
        f"`configs/taxonomy/hyte_h.yaml`; H {meta['channel']['geometry']} {meta['channel']['dim']}-d, "
        f"weights with S {meta['channel']['weights']}, with graph-kNN {meta['channel']['graph_weights']}).",
        "",
        "Free text: every corpus document re-worded as `NAME: DEFINITION` under an opaque id, so it links to "
        "concepts only through its nearest ones (graph-kNN) and H reads it as any text. nDCG@10 x 100 on the "
        f"{meta['split']} half; intervals: paired bootstrap over queries (one trained model: a check, not a "
        "claim over seeds).",
        "",
    ]
    for relation, res in table.items():
        lines += [
            f"## {relation} ({res['queries']} queries)",
            "",
            "| row | concepts | free text |",
            "|---|---:|---:|",
        ]
        for row in ROWS:
            lines.append(
                f"| {row} | {res['mean'][f'concepts | {row}']:.2f} | {res['mean'][f'free text | {row}']:.2f} |"
            )
        lines += ["", "| comparison | mean | 95% interval |", "|---|---:|---:|"]
        for name, c in res["comparisons"].items():
            lines.append(f"| {name} | {c['mean']:+.2f} | [{c['low']:+.2f}, {c['high']:+.2f}] |")
        lines.append("")
    lines += [
        "## Subsumption F1 x 100 (test; weight and threshold chosen on validation)",
        "",
        "| negatives | row | validation F1 | **test F1** | precision | recall | v |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for setting, res in subsumption.items():
        for row in SUBSUMPTION_ROWS:
            r = res[row]
            lines.append(
                f"| {setting} | {row} | {100 * r['validation_f1']:.1f} | **{100 * r['f1']:.1f}** | "
                f"{100 * r['precision']:.1f} | {100 * r['recall']:.1f} | {r.get('v', '-')} |"
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
