"""Relation search over documents that are not concepts: a model trained with the taxonomy recipe
(``configs/taxonomy/hyte_h.yaml``: frozen similarity S, hierarchy channel H, the train split carried) on its
taxonomy's ``eval/broader`` and ``eval/narrower`` sets, with the corpus as built and re-worded as free text.

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

    .venv/bin/python benchmarks/bench_free_text.py --model runs/recipe_cli/icd10cm/final \\
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

import lorentz_rag
from lorentz_rag.data.beir import load_beir, write_beir
from lorentz_rag.eval.retrieval import evaluate_beir
from lorentz_rag.eval.stats import paired_bootstrap

ROWS = ("S", "S + H", "H alone", "graph-kNN", "graph-kNN + H")
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


def _row(model: Any, row: str, relation: str) -> tuple[Any, dict[str, Any]]:
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
    model, saved = _row(model, row, relation)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder from configs/taxonomy/hyte_h.yaml")
    parser.add_argument("--sets", required=True, help="the taxonomy's `lorentz-rag taxonomy build` folder")
    parser.add_argument("--split", default="report")
    parser.add_argument("--out", required=True, help="RESULTS prefix: writes RESULTS.json and RESULTS.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    model = lorentz_rag.load_model(args.model)
    if model.concept_graph is None or model.hierarchy_channel is None:
        raise SystemExit(f"{args.model}: not a model of the taxonomy recipe (no taxonomy or no channel)")
    graph = model.concept_graph
    names = dict(zip(graph.concept_ids, graph.names))
    sets = Path(args.sets)
    work = Path(args.out).with_suffix("").parent / (Path(args.out).name + "_corpora")
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
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "load_average_end": os.getloadavg(),
        "seconds": time.perf_counter() - started,
        "command": "python benchmarks/bench_free_text.py " + " ".join(argv or []),
        "model": args.model,
        "channel": model.hierarchy_channel.config.to_dict(),
        "split": args.split,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": table}, indent=1) + "\n")
    out.with_suffix(".md").write_text(_markdown(meta, table))
    print(f"wrote {out.with_suffix('.md')}")


def _query_names(source: Path) -> dict[str, str]:
    """Concept names from a set's name queries (``ID#name``): the held-out concepts the carried graph lacks."""
    data = load_beir(source, "test")
    return {q[: -len("#name")]: text for q, text in data.queries.items() if q.endswith("#name")}


def _markdown(meta: dict[str, Any], table: dict[str, Any]) -> str:
    lines = [
        "# Relation search over free-text documents (documents that are not concepts)",
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
    return "\n".join(lines)


if __name__ == "__main__":
    main()
