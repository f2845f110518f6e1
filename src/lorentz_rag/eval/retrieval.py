"""Retrieval evaluation on BEIR folders: exact search in float64 and pytrec_eval metrics.

Scores are "higher = closer" for every similarity (docs/design.md, section 7.1):

- ``geodesic``: ``-d(q, x)``, the float64 pairwise geodesic distance of a block of documents;
- ``lorentz_inner``: ``<q, x>_L + 1/c`` (0 for identical points), accumulated in float64;
- ``cosine``: cosine similarity of float64-normalised vectors (Euclidean models).

Search runs over the corpus in blocks and keeps a running top-k, so memory is the embeddings plus one
``[query chunk, document block]`` score block, never a ``[n_queries, n_docs]`` float64 matrix. Ties are
broken by document order (the earlier document in the corpus ranks first), the same way in every block.

Metrics follow BEIR (pytrec_eval, the ``pytrec-eval-terrier`` wheel that mteb depends on). Queries whose
qrels are empty, or that have no qrels at all, are excluded from the evaluation, as BEIR and mteb do
(:func:`lorentz_rag.data.beir.load_beir` already keeps only judged queries; a query whose judgments are all 0
still counts: it has qrels, just no relevant document).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lorentz_rag.data.beir import document_text, load_beir
from lorentz_rag.errors import names_path
from lorentz_rag.eval.encode import encode_corpus
from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.eval.taxonomy_attachment import read_taxonomy_request
from lorentz_rag.geometry import similarity as similarity_fns
from lorentz_rag.geometry.relation import DEFAULT_RADIUS_WEIGHT
from lorentz_rag.models import load_model
from lorentz_rag.search.graph_knn import ConceptGraph, GraphKnnSettings
from lorentz_rag.search.relation import exact_relation_search, relation_route
from lorentz_rag.training.distributed import command_process_group

__all__ = [
    "METRIC_KEYS",
    "SEARCH_METHODS",
    "SIMILARITIES",
    "compute_metrics",
    "evaluate_beir",
    "exact_search",
    "format_metrics_table",
    "pairwise_scores",
]

#: The keys of the metrics JSON, in print order.
METRIC_KEYS = ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10", "recall@100")
#: How many ranked documents per query each metric reads.
METRIC_CUTOFFS = {
    "ndcg@10": 10,
    "mrr@10": 10,
    "map@100": 100,
    "recall@1": 1,
    "recall@10": 10,
    "recall@100": 100,
}
SIMILARITIES = similarity_fns.KINDS
SEARCH_METHODS = ("exact", "faiss", "hnsw")

# Elements of one float64 score block (queries x documents); 2^22 doubles = 32 MiB, and the geodesic
# computes a handful of temporaries of that size.
_BLOCK_ELEMENTS = 1 << 22


def pairwise_scores(
    queries: Tensor, docs: Tensor, similarity: str, c: float | Tensor | None = None
) -> Tensor:
    """All float64 scores, higher = closer: queries ``[n, D]``, docs ``[m, D]`` -> ``[n, m]``.

    ``geodesic``: ``-d(q, x)`` (:func:`lorentz_rag.geometry.lorentz.pairwise_geodesic_distance`);
    ``lorentz_inner``: ``<q, x>_L + 1/c``; ``cosine``: cosine similarity; ``euclidean``: ``-|q - x|``
    (:mod:`lorentz_rag.geometry.similarity`). Inputs are upcast to float64.
    """
    similarity_fns.check_kind(similarity, c)
    cc = None if c is None else (float(c.detach()) if isinstance(c, Tensor) else float(c))
    return similarity_fns.pairwise(
        queries.detach().to(torch.float64), docs.detach().to(torch.float64), similarity, cc
    )


def _merge_top_k(
    best_scores: Tensor, best_pos: Tensor, scores: Tensor, pos: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """Keep the ``k`` best of two candidate lists, ties to the smaller position.

    ``best_*`` hold earlier documents than ``scores``/``pos`` (both sorted by position among equal scores),
    so a stable descending sort of their concatenation puts earlier documents first among equal scores.
    """
    all_scores = torch.cat([best_scores, scores], dim=1)
    all_pos = torch.cat([best_pos, pos], dim=1)
    order = torch.sort(all_scores, dim=1, descending=True, stable=True).indices[:, :k]
    return all_scores.gather(1, order), all_pos.gather(1, order)


def exact_search(
    queries: Tensor,
    docs: Tensor,
    k: int,
    similarity: str,
    c: float | Tensor | None = None,
    *,
    block_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` documents per query, by float64 :func:`pairwise_scores`, in blocks of documents.

    queries ``[n, D]``, docs ``[m, D]`` -> (scores float64 ``[n, k']``, positions int64 ``[n, k']``),
    ``k' = min(k, m)``, best first; ties go to the earlier document. ``block_size`` documents are scored at
    a time (default: as many as keep one float64 block near 32 MiB); the result does not depend on it.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, m = queries.shape[0], docs.shape[0]
    k_eff = min(k, m)
    out_scores = torch.empty(n, k_eff, dtype=torch.float64)
    out_pos = torch.empty(n, k_eff, dtype=torch.int64)
    if n == 0 or m == 0:
        return out_scores, out_pos
    query_chunk = min(n, 1024)
    if block_size is None:
        block_size = max(k_eff, _BLOCK_ELEMENTS // query_chunk)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    for q0 in range(0, n, query_chunk):
        q = queries[q0 : q0 + query_chunk]
        best_scores = torch.empty(q.shape[0], 0, dtype=torch.float64)
        best_pos = torch.empty(q.shape[0], 0, dtype=torch.int64)
        for d0 in range(0, m, block_size):
            block = pairwise_scores(q, docs[d0 : d0 + block_size], similarity, c)
            if torch.isnan(block).any():
                raise ValueError(f"NaN similarity scores for documents {d0}..{d0 + block.shape[1] - 1}")
            # Stable sort: equal scores keep document order inside the block.
            top = torch.sort(block, dim=1, descending=True, stable=True).indices[:, :k_eff]
            best_scores, best_pos = _merge_top_k(best_scores, best_pos, block.gather(1, top), top + d0, k_eff)
        out_scores[q0 : q0 + q.shape[0]] = best_scores
        out_pos[q0 : q0 + q.shape[0]] = best_pos
    return out_scores, out_pos


def compute_metrics(
    qrels: Mapping[str, Mapping[str, int]], ranked: Mapping[str, Sequence[str]], *, per_query: bool = False
) -> dict[str, Any]:
    """Mean BEIR metrics over the queries with non-empty qrels.

    ``ranked`` maps a query id to its retrieved document ids, best first (at least 100 for ``recall@100``
    and ``map@100`` to mean what they say). Returns exactly :data:`METRIC_KEYS`. ``mrr@10`` is pytrec_eval's
    ``recip_rank`` on the run truncated to its first 10 documents (pytrec's measure has no cutoff).
    ``per_query=True`` adds ``"per_query": {query id: {"ndcg@10", "mrr@10"}}`` (for paired statistics).
    """
    import pytrec_eval

    # A grade <= 0 is non-relevant to every measure here (trec_eval's gain is 0 for it), and pytrec_eval 0.5
    # crashes the process (SIGSEGV) on a grade below -1 beside other judgments: negative grades are sent as 0.
    judged = {qid: {d: max(int(s), 0) for d, s in rel.items()} for qid, rel in qrels.items() if len(rel) > 0}
    if not judged:
        raise ValueError("no query has qrels: nothing to evaluate")
    missing = [qid for qid in judged if qid not in ranked]
    if missing:
        raise ValueError(f"{len(missing)} judged queries have no ranking, e.g. {missing[:3]}")

    def run_of(limit: int | None) -> dict[str, dict[str, float]]:
        run = {}
        for qid in judged:
            docs = list(ranked[qid])[:limit]
            # Scores decrease with rank: trec_eval sorts by score, so the ranking is kept as given.
            run[qid] = {doc: float(len(docs) - r) for r, doc in enumerate(docs)} or {"__none__": 0.0}
        return run

    measures = {"ndcg_cut_10", "map_cut_100", "recall_1", "recall_10", "recall_100"}
    table = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(run_of(None))
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(run_of(10))
    n = len(judged)

    def mean(measure: str, table: Mapping[str, Mapping[str, float]]) -> float:
        return sum(table[qid][measure] for qid in judged) / n

    out: dict[str, Any] = {
        "ndcg@10": mean("ndcg_cut_10", table),
        "mrr@10": mean("recip_rank", rr),
        "map@100": mean("map_cut_100", table),
        "recall@1": mean("recall_1", table),
        "recall@10": mean("recall_10", table),
        "recall@100": mean("recall_100", table),
    }
    if per_query:
        out["per_query"] = {
            qid: {"ndcg@10": table[qid]["ndcg_cut_10"], "mrr@10": rr[qid]["recip_rank"]} for qid in judged
        }
    return out


def format_metrics_table(rows: Mapping[str, Mapping[str, float]], keys: Sequence[str] = METRIC_KEYS) -> str:
    """A plain-text table: one row per name in ``rows``, one column per metric key (values x 100)."""
    name_width = max(12, *(len(name) for name in rows))
    header = f"{'':<{name_width}}  " + "  ".join(f"{key:>10}" for key in keys)
    lines = [header, "-" * len(header)]
    for name, metrics in rows.items():
        cells = "  ".join(
            f"{100 * metrics[key]:>10.2f}" if isinstance(metrics.get(key), (int, float)) else f"{'-':>10}"
            for key in keys
        )
        lines.append(f"{name:<{name_width}}  {cells}")
    return "\n".join(lines)


def _model_similarity(model: Any) -> tuple[str, float | None]:
    similarity = model.settings.similarity
    c = model.curvature() if model.is_hyperbolic else None
    return similarity, (float(c.detach()) if isinstance(c, Tensor) else c)


def evaluate_beir(
    model: Any,
    folder: str | os.PathLike[str],
    split: str = "test",
    batch_size: int = 32,
    top_k: int = 100,
    *,
    search: str = "exact",
    model_path: str | None = None,
    per_query: bool = False,
    relation: str = "similar",
    taxonomy: Any = None,
    graph_settings: GraphKnnSettings | None = None,
    radius_weight: float | None = None,
) -> dict[str, Any]:
    """Embed a BEIR folder with ``model`` and score exact top-``top_k`` retrieval.

    ``relation="broader"`` / ``"narrower"`` ranks (:func:`lorentz_rag.search.relation.relation_route`) by
    graph-kNN when a taxonomy is at hand: ``taxonomy`` (a :class:`lorentz_rag.data.concepts.Taxonomy`, a
    taxonomy file, or a :class:`lorentz_rag.search.graph_knn.ConceptGraph`; ``graph_settings``, default the
    tuned defaults), else the one the model carries (the taxonomy recipe's train split), mixed with the
    model's hierarchy channel where it has one; else by the two channels when the model has a hierarchy
    channel; both exact over every document whatever ``search`` says; else by the geometric relation score
    with ``radius_weight`` (models with a radius; the flat index's exact relation search, approximate for
    ``search="hnsw"``).

    Documents are embedded as :func:`document_text` with the document prefix, queries with the query prefix
    (``model.encode(..., prompt_type=...)``). ``search``: ``exact`` (:func:`exact_search`, blocked float64),
    ``faiss`` (the flat :class:`lorentz_rag.eval.index.VectorIndex`: the same ranking, faster on large corpora)
    or ``hnsw`` (approximate candidates, exact re-rank). Returns :data:`METRIC_KEYS` (floats in [0, 1])
    except those that read more than ``top_k`` documents of a larger corpus (``top_k=10`` cannot give
    ``recall@100``: they are dropped with a warning and listed in ``meta["dropped_metrics"]``), plus ``"meta"`` (model path/type/similarity, n_queries, n_docs, timings in seconds), and
    ``"per_query"`` when asked (:func:`compute_metrics`). Queries without qrels are excluded.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if search not in SEARCH_METHODS:
        raise ValueError(f"search must be one of {list(SEARCH_METHODS)}, got {search!r}")
    _check_relation_options(relation, taxonomy, radius_weight)
    channel = getattr(model, "hierarchy_channel", None)
    own_graph = getattr(model, "concept_graph", None)
    route = relation_route(
        relation,
        channel=channel,
        graph=taxonomy if taxonomy is not None else own_graph,
        radius_weight=radius_weight,
        where="eval beir",
        option="--radius-weight",
    )
    data = load_beir(folder, split)
    query_ids = [qid for qid in data.queries if data.qrels.get(qid)]
    if not query_ids:
        raise ValueError(f"{folder}: no query of split {split!r} has a non-empty qrels entry")
    doc_ids = list(data.corpus)
    similarity, c = _model_similarity(model)

    t0 = time.perf_counter()
    doc_emb = encode_corpus(
        model, [document_text(data.corpus[d]) for d in doc_ids], ids=doc_ids, batch_size=batch_size
    )
    t1 = time.perf_counter()
    query_emb = model.encode([data.queries[q] for q in query_ids], prompt_type="query", batch_size=batch_size)
    t2 = time.perf_counter()
    if route in ("graph", "channel"):
        graph, links = None, None
        if route == "graph":
            if taxonomy is None:
                graph = own_graph
            elif isinstance(taxonomy, ConceptGraph):
                graph = taxonomy
            else:
                graph = ConceptGraph.from_taxonomy(model, taxonomy, graph_settings, batch_size=batch_size)
            texts = [document_text(data.corpus[d]) for d in doc_ids]
            links = graph.link_documents(doc_ids, texts, doc_emb)
        _, positions = exact_relation_search(
            query_emb,
            lambda a, b: doc_emb[a:b],
            len(doc_ids),
            top_k,
            relation,
            similarity=similarity,
            curvature=c,
            channel=channel,
            route=route,
            graph=graph,
            links=links,
            settings=graph_settings,
        )
    elif relation != "similar":
        kind = "hnsw" if search == "hnsw" else "flat"
        index = VectorIndex.from_embeddings(doc_ids, doc_emb, similarity=similarity, curvature=c, kind=kind)
        weight = DEFAULT_RADIUS_WEIGHT if radius_weight is None else radius_weight
        _, positions = index.search_embeddings(query_emb, top_k, relation=relation, radius_weight=weight)
    elif search == "exact":
        _, positions = exact_search(query_emb, doc_emb, top_k, similarity, c)
    else:
        kind = "flat" if search == "faiss" else "hnsw"
        index = VectorIndex.from_embeddings(doc_ids, doc_emb, similarity=similarity, curvature=c, kind=kind)
        _, positions = index.search_embeddings(query_emb, top_k)
    t3 = time.perf_counter()
    ranked = {qid: [doc_ids[p] for p in row] for qid, row in zip(query_ids, positions.tolist())}
    metrics: dict[str, Any] = compute_metrics(
        {q: data.qrels[q] for q in query_ids}, ranked, per_query=per_query
    )
    t4 = time.perf_counter()
    dropped = [k for k in METRIC_KEYS if METRIC_CUTOFFS[k] > top_k and len(doc_ids) > top_k]
    if dropped:
        warnings.warn(
            f"top_k={top_k} ranks fewer documents than {', '.join(dropped)} read"
            f" ({max(METRIC_CUTOFFS[k] for k in dropped)}); those metrics are not reported",
            stacklevel=2,
        )
        for key in dropped:
            del metrics[key]
    metrics["meta"] = {
        "model": model_path,
        "model_type": getattr(model.settings, "model_type", type(model).__name__),
        "similarity": similarity,
        "curvature": c,
        "data": str(folder),
        "split": split,
        "n_queries": len(query_ids),
        "n_docs": len(doc_ids),
        "top_k": top_k,
        "dropped_metrics": dropped,
        "warnings": list(data.warnings),  # e.g. no relevant judgment: every metric is 0
        "search": search,
        "relation": relation,
        "route": route,  # which score ranked (lorentz_rag.search.relation.relation_route)
        "taxonomy": None
        if route != "graph"
        else _taxonomy_meta(taxonomy if taxonomy is not None else own_graph, graph_settings),
        "hierarchy_channel": None
        if channel is None or route == "similar"
        else {**channel.config.to_dict(), "fingerprint": channel.fingerprint(), "search": "exact"},
        "timings_s": {
            "encode_corpus": t1 - t0,
            "encode_queries": t2 - t1,
            "search": t3 - t2,
            "metrics": t4 - t3,
        },
    }
    return metrics


def _check_relation_options(relation: str, taxonomy: Any, radius_weight: float | None) -> None:
    if relation not in ("similar", "broader", "narrower"):
        raise ValueError(f"relation must be similar, broader or narrower, got {relation!r}")
    if relation == "similar" and taxonomy is not None:
        raise ValueError("a taxonomy ranks broader or narrower documents: pass --relation broader / narrower")
    if radius_weight is not None and (relation == "similar" or taxonomy is not None):
        raise ValueError(
            "--radius-weight weighs the geometric relation score of --relation broader / narrower without "
            "--taxonomy: drop it"
        )


def _taxonomy_meta(taxonomy: Any, settings: GraphKnnSettings | None) -> dict[str, Any]:
    if isinstance(taxonomy, ConceptGraph):
        return {"source": taxonomy.source, "settings": (settings or taxonomy.settings).to_dict()}
    source = None if hasattr(taxonomy, "concepts") else str(taxonomy)
    return {"source": source, "settings": (settings or GraphKnnSettings()).to_dict()}


def run_beir_command(
    model_path: str,
    data: str,
    split: str = "test",
    batch_size: int = 32,
    top_k: int = 100,
    output: str | None = None,
    search: str = "exact",
    *,
    relation: str = "similar",
    taxonomy: str | None = None,
    graph_settings: str | None = None,
    radius_weight: float | None = None,
) -> dict[str, Any]:
    """``lorentz-rag eval beir``: load the model folder, evaluate, print a table, write ``output`` JSON.

    ``relation`` / ``taxonomy`` / ``graph_settings`` (a JSON file) / ``radius_weight``: see
    :func:`evaluate_beir`; the taxonomy and settings files are read before the model loads.

    Under ``torchrun --nproc-per-node=N`` the ranks share the corpus encoding (the same embeddings as one
    process, :mod:`lorentz_rag.eval.encode`); rank 0 prints and writes.
    """
    _check_relation_options(relation, taxonomy, radius_weight)
    request = read_taxonomy_request(taxonomy, graph_settings)
    graph_options: dict[str, Any] = {}
    if request is not None:
        graph_options = {"taxonomy": request.taxonomy, "graph_settings": request.settings}
    with command_process_group() as info:
        model = load_model(model_path)
        result = evaluate_beir(
            model,
            data,
            split,
            batch_size,
            top_k,
            search=search,
            model_path=str(model_path),
            relation=relation,
            radius_weight=radius_weight,
            **graph_options,
        )
    if request is not None:
        result["meta"]["taxonomy"]["source"] = request.source
    if info.rank != 0:
        return result
    print(format_metrics_table({Path(data).name or str(data): result}))
    meta = result["meta"]
    print(
        f"{meta['n_queries']} queries, {meta['n_docs']} documents, similarity {meta['similarity']}"
        + (f", c = {meta['curvature']:.4g}" if meta["curvature"] is not None else "")
        + (f", relation {relation}" if relation != "similar" else "")
        + (" (graph-kNN over the taxonomy)" if request is not None else "")
        + (
            " (graph-kNN over the model's own taxonomy)"
            if request is None and meta["route"] == "graph"
            else ""
        )
        + (
            " (mixed with the hierarchy channel)"
            if meta["route"] in ("graph", "channel") and meta["hierarchy_channel"]
            else ""
        )
    )
    if output:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        with names_path(out):  # a full disk names the file
            out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    if not all(math.isfinite(result[key]) for key in METRIC_KEYS if key in result):
        raise RuntimeError(f"non-finite metric in {result}")
    return result
