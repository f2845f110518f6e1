"""Vector stores: exactness of each backend's flat search, ANN recall@10 of the raw
inner-product form beside the L2-reduced form, and latency / memory per 1k queries beside the FAISS folder.

- **Exactness**: top-10 of each store's brute-force search (LanceDB without an ANN index, Qdrant local mode)
  against ``VectorIndex`` exact search (``kind="flat"``), on faq-dev (302 queries) and on a large corpus of
  bundled text (default 100k documents: all 82,115 WordNet noun glosses as ``lemma: gloss``, then Python
  docs paragraphs from ``data/train/mlm_python_docs.jsonl.gz`` up to the count; queries: the 1,000
  wordnet-hier queries). Models: the four quickstart configs, untrained (HyTE-H, HyTE-FH, the cosine twin,
  the Euclidean-distance twin) at a short ``max_seq_length``; ``--large-models`` picks which ones embed the
  large corpus (the three on the frozen MiniLM share its forward pass through ``cached_base_states``).
- **ANN quality**: recall@10 against exact, after the float64 re-rank of the over-fetched candidates, of
  FAISS HNSW (the stand-in for Qdrant HNSW: Qdrant's local mode searches by brute force and no Qdrant
  server can run here) and LanceDB's IVF indexes, with documents stored in the raw form (``x``, inner
  product with ``ip_query(q)``) and in the L2-reduced form (``(x, sqrt(R^2 - |x|^2))``, the stores' form).
  Point sets: HyTE-H's own embeddings of the large corpus, and the same directions moved to radii drawn in
  [1.5, 2.5] (what trained quickstart models produce) and in [6, 10] (large radii).
- **Latency and memory** per 1k queries (k = 10) on the large corpus (HyTE-H): wall time and the peak
  resident-memory growth during the search, for the FAISS folder index (flat, HNSW) and the stores.

Embeddings are cached as ``.npy`` in the work folder (``--work``, default ``runs/bench_vector_stores``), in
chunks, so an interrupted run resumes. Writes ``vector_stores.json`` and ``vector_stores.md`` to ``--out``
(default ``benchmarks/results``). Run: ``.venv/bin/python benchmarks/bench_vector_stores.py``; ``--quick`` is
a smoke setting on tiny data (the test uses it).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from lorentz_rag.data.beir import load_beir, read_corpus
from lorentz_rag.data.bundled import faq_dev_path, mlm_text_path, wordnet_hier_path, wordnet_nouns_path
from lorentz_rag.eval.index import VectorIndex, candidate_scores, stored_form
from lorentz_rag.geometry import lorentz
from lorentz_rag.models import build_model, packaged_minilm_path
from lorentz_rag.models.hf_base import cached_base_states
from lorentz_rag.stores import create_store, layout_for_model, model_radius_bound
from lorentz_rag.stores.layout import documents_radius

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
K = 10
MODEL_CONFIGS = {
    "hyte_h": "hyte_h.yaml",
    "hyte_fh": "hyte_fh_contrastive.yaml",
    "twin_cosine": "euclidean.yaml",
    "twin_distance": "euclidean_distance.yaml",
}
ENCODE_CHUNK = 4096


# --- data -----------------------------------------------------------------------------------------------


def large_corpus(n_docs: int) -> tuple[list[str], list[str]]:
    """``n_docs`` bundled texts: WordNet noun glosses (``lemma: gloss``), then Python docs paragraphs (at least
    40 characters, first occurrence only) from the MLM chunks, in file order."""
    ids: list[str] = []
    texts: list[str] = []
    with gzip.open(wordnet_nouns_path(), "rt", encoding="utf-8") as f:
        for line in f:
            if len(ids) >= n_docs:
                return ids, texts
            row = json.loads(line)
            ids.append(f"wn:{row['id']}")
            texts.append(f"{row['lemmas'][0].replace('_', ' ')}: {row['gloss']}")
    seen: set[str] = set()
    with gzip.open(mlm_text_path(), "rt", encoding="utf-8") as f:
        for row_no, line in enumerate(f):
            for j, para in enumerate(json.loads(line)["text"].split("\n\n")):
                para = " ".join(para.split())
                if len(para) < 40 or para in seen:
                    continue
                if len(ids) >= n_docs:
                    return ids, texts
                seen.add(para)
                ids.append(f"py:{row_no}:{j}")
                texts.append(para)
    if len(ids) < n_docs:
        raise ValueError(f"the bundled text gives {len(ids)} documents, fewer than --docs {n_docs}")
    return ids, texts


def corpora(args: argparse.Namespace) -> dict[str, dict[str, list[str]]]:
    """``{name: {"doc_ids", "docs", "queries"}}`` for faq-dev and the large corpus."""
    faq = load_beir(faq_dev_path())
    faq_ids, faq_docs = read_corpus(faq_dev_path())
    hier_queries = list(load_beir(wordnet_hier_path()).queries.values())
    large_ids, large_docs = large_corpus(args.docs)
    out = {
        "faq-dev": {"doc_ids": faq_ids, "docs": faq_docs, "queries": list(faq.queries.values())},
        "large": {"doc_ids": large_ids, "docs": large_docs, "queries": hier_queries[: args.queries]},
    }
    if args.quick:
        faq_part = {k: v[: args.docs] for k, v in out["faq-dev"].items()}
        faq_part["queries"] = out["faq-dev"]["queries"][: args.queries]
        out["faq-dev"] = faq_part
    return out


# --- models and cached embeddings -----------------------------------------------------------------------


def build_models(names: list[str], max_seq_length: int) -> dict[str, Any]:
    """The quickstart configs' models, untrained (seed 0), at ``max_seq_length`` tokens."""
    models = {}
    for name in names:
        args = yaml.safe_load((REPO / "configs" / "quickstart" / MODEL_CONFIGS[name]).read_text())
        # The quickstart takes the similarity from the training distance (the twin's "euclidean").
        model_args = {
            "similarity": args["train_args"]["distance"],
            **args["model_args"],
            "model_name": str(packaged_minilm_path()),
            "max_seq_length": max_seq_length,
        }
        torch.manual_seed(0)
        models[name] = build_model(model_args).eval()
    return models


def _digest(*parts: Any) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True).encode("utf-8"))
    return h.hexdigest()[:12]


def encode_cached(
    models: dict[str, Any], texts: list[str], prompt: str, folder: Path, log: Callable[[str], None]
) -> dict[str, np.ndarray]:
    """Embeddings ``{name: [n, D] float32}`` of ``texts``, cached in ``folder`` (one ``.npy`` per model and
    chunk of ``ENCODE_CHUNK`` texts, keyed by the texts and the model's fingerprint). Models sharing a
    frozen base run it once per chunk."""
    keys = {name: _digest(texts, prompt, m.fingerprint()) for name, m in models.items()}
    folder.mkdir(parents=True, exist_ok=True)
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in models}
    for start in range(0, len(texts), ENCODE_CHUNK):
        part = texts[start : start + ENCODE_CHUNK]
        files = {name: folder / f"{name}-{keys[name]}-{start:07d}.npy" for name in models}
        missing = [name for name, file in files.items() if not file.is_file()]
        if missing:
            t0 = time.perf_counter()
            with cached_base_states():
                for name in missing:
                    emb = models[name].encode(part, prompt, batch_size=128).numpy()
                    np.save(files[name].with_suffix(".tmp.npy"), emb)
                    files[name].with_suffix(".tmp.npy").replace(files[name])
            log(
                f"encoded {prompt} {start + len(part)}/{len(texts)} with {missing} "
                f"({len(part) / (time.perf_counter() - t0):.0f} texts/s)"
            )
        for name, file in files.items():
            chunks[name].append(np.load(file))
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


# --- measuring ------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def measured() -> Iterator[dict[str, float]]:
    """Wall seconds and the peak growth of this process's resident memory (MiB, sampled every 2 ms) of the
    block, written into the yielded dict when it ends."""
    out: dict[str, float] = {}
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            stop.wait(0.002)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - t0
        stop.set()
        thread.join()
        out["peak_rss_growth_mib"] = (max(peak[0], _rss_bytes()) - base) / 2**20


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def recall_at_k(found: list[list[int]], exact: list[list[int]]) -> float:
    """Mean over queries of |found top-k ∩ exact top-k| / k."""
    hits = [len(set(f[:K]) & set(e[:K])) / max(1, len(e[:K])) for f, e in zip(found, exact)]
    return float(np.mean(hits)) if hits else float("nan")


def rerank(
    q: np.ndarray, x: np.ndarray, cand: np.ndarray, similarity: str, c: float | None
) -> list[list[int]]:
    """Top-``K`` positions of each query after the float64 re-rank (:func:`candidate_scores`, the stores'
    and ``VectorIndex``'s code) of its candidate positions ``cand`` ``[n, f]`` (``-1``: none)."""
    q64 = stored_form(torch.from_numpy(q), similarity, c)
    out = []
    for row, ids in enumerate(cand):
        ids = np.unique(ids[ids >= 0])
        x64 = stored_form(torch.from_numpy(x[ids]), similarity, c)
        scores, _ = candidate_scores(q64[row : row + 1], x64.unsqueeze(0), similarity, c)
        order = torch.argsort(scores[0], descending=True, stable=True)[:K]
        out.append(ids[order.numpy()].tolist())
    return out


# --- stores ---------------------------------------------------------------------------------------------


def tight_radius(model: Any, docs: np.ndarray) -> float:
    """The largest radius among ``docs`` (:func:`documents_radius`), plus 0.1%."""
    c = model.curvature()
    return (
        documents_radius(torch.from_numpy(docs), model.settings.similarity, None if c is None else float(c))
        * 1.001
    )


def filled_store(
    spec: str, layout: Any, ids: list[str], docs: np.ndarray, texts: list[str] | None, batch: int = 10_000
) -> Any:
    """A new store at ``spec`` holding the documents, added ``batch`` at a time (10k: as a user would)."""
    store = create_store(spec, layout, overwrite=True)
    for start in range(0, len(ids), batch):
        end = start + batch
        store.add_embeddings(ids[start:end], docs[start:end], None if texts is None else texts[start:end])
    return store


def exactness(
    args: argparse.Namespace, data: dict[str, Any], encoded: dict[str, Any], log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows ``{corpus, model, backend, identical_top10, ...}``: each store's flat top-10 against
    ``VectorIndex`` exact search over the same documents (Qdrant: the first ``--qdrant-docs``); and the
    latency rows of the large corpus's HyTE-H (FAISS flat, LanceDB and Qdrant brute force)."""
    rows: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    for corpus, per_model in encoded["embeddings"].items():
        for name, (docs, queries) in per_model.items():
            model = encoded["models"][name]
            timed = corpus == "large" and name == "hyte_h"
            # Hyperbolic stores get R from the documents (the model's bound, HyTE-H's 10, makes the certificate's
            # float32 error bound so wide that every exact search fetches the whole store: default_bound_probe).
            loose = model.is_hyperbolic or model_radius_bound(model) is None
            layout = layout_for_model(model, max_radius=tight_radius(model, docs) if loose else None)
            references: dict[int, Any] = {}
            for backend in ("lancedb", "qdrant"):
                n = len(docs) if backend == "lancedb" else min(len(docs), args.qdrant_docs)
                ids, texts = data[corpus]["doc_ids"][:n], data[corpus]["docs"][:n]
                if n not in references:
                    with measured() as build:
                        index = VectorIndex.from_model_embeddings(model, ids, torch.from_numpy(docs[:n]))
                    with measured() as search:
                        references[n] = index.search_embeddings(torch.from_numpy(queries), K)
                    if timed:
                        latency.append(
                            _latency_row("FAISS folder, flat", n, build, search, len(queries), None)
                        )
                ref_scores, ref_pos = references[n]
                folder = args.work / "stores" / f"{backend}-{corpus}-{name}"
                with measured() as build:
                    store = filled_store(f"{backend}:{folder}", layout, ids, docs[:n], texts)
                with measured() as search:
                    hits = batched_search(store, queries, exact=True)
                store.close()
                same = sum(
                    [h.id for h in row] == [ids[p] for p in ref] for row, ref in zip(hits, ref_pos.tolist())
                )
                diffs = [
                    abs(h.score - v) for row, ref in zip(hits, ref_scores.tolist()) for h, v in zip(row, ref)
                ]
                rows.append(
                    {
                        "corpus": corpus,
                        "model": name,
                        "similarity": model.settings.similarity,
                        "docs": n,
                        "queries": len(queries),
                        "backend": backend,
                        "max_radius": layout.max_radius,
                        "identical_top10": same,
                        "max_abs_score_difference": max(diffs, default=0.0),
                    }
                )
                log(f"exactness {corpus} {name} {backend} ({n} documents): {same}/{len(queries)} identical")
                if timed:
                    label = (
                        "LanceDB, brute force" if backend == "lancedb" else "Qdrant local mode (brute force)"
                    )
                    latency.append(_latency_row(label, n, build, search, len(queries), folder_mib(folder)))
    return rows, latency


def batched_search(store: Any, queries: np.ndarray, exact: bool, batch: int = 100) -> list[list[Any]]:
    """``store.search_embeddings`` over ``batch`` queries at a time (LanceDB's multi-vector search holds
    every query's fetched rows at once)."""
    hits: list[list[Any]] = []
    for start in range(0, len(queries), batch):
        hits += store.search_embeddings(torch.from_numpy(queries[start : start + batch]), K, exact=exact)
    return hits


def default_bound_probe(
    args: argparse.Namespace, data: dict[str, Any], encoded: dict[str, Any], log: Callable[[str], None]
) -> dict[str, Any]:
    """Exact search through a LanceDB store laid out with HyTE-H's own radius bound (the default ``R``) on
    the large corpus, for the first ``--probe-queries`` queries: still exact, at what cost per query."""
    model = encoded["models"]["hyte_h"]
    docs, queries = encoded["embeddings"]["large"]["hyte_h"]
    ids, texts = data["large"]["doc_ids"], data["large"]["docs"]
    queries = queries[: args.probe_queries]
    ref = VectorIndex.from_model_embeddings(model, ids, torch.from_numpy(docs)).search_embeddings(
        torch.from_numpy(queries), K
    )[1]
    layout = layout_for_model(model)
    store = filled_store(
        f"lancedb:{args.work / 'stores' / 'lancedb-default-bound'}", layout, ids, docs, texts
    )
    with measured() as search:
        hits = [store.search_embeddings(torch.from_numpy(q[None]), K, exact=True)[0] for q in queries]
    store.close()
    same = sum([h.id for h in row] == [ids[p] for p in r] for row, r in zip(hits, ref.tolist()))
    out = {
        "model": "hyte_h",
        "documents": len(ids),
        "queries": len(queries),
        "max_radius": layout.max_radius,
        "identical_top10": same,
        "seconds_per_query": search["seconds"] / max(1, len(queries)),
        "peak_rss_growth_mib": search["peak_rss_growth_mib"],
    }
    log(f"default-bound probe: {out}")
    return out


def _latency_row(
    label: str, docs: int, build: dict, search: dict, n_queries: int, size: float | None
) -> dict[str, Any]:
    return {
        "index": label,
        "documents": docs,
        "build_seconds": build["seconds"],
        "seconds_per_1k_queries": search["seconds"] * 1000.0 / n_queries,
        "peak_rss_growth_mib_per_1k_queries": search["peak_rss_growth_mib"],
        "size_mib": size,
    }


# --- ANN recall -----------------------------------------------------------------------------------------


def at_radii(x: np.ndarray, lo: float, hi: float, c: float, rng: np.random.Generator) -> np.ndarray:
    """The points' directions at radii drawn uniformly in ``[lo, hi]`` (float32 hyperboloid points)."""
    u = torch.nn.functional.normalize(torch.from_numpy(x[:, 1:]).to(torch.float64), dim=-1)
    r = torch.from_numpy(rng.uniform(lo, hi, size=(len(x), 1)))
    return lorentz.expmap0(u * r, c).to(torch.float32).numpy()


def faiss_hnsw_candidates(stored: np.ndarray, queries: np.ndarray, metric: str, fetch: int) -> np.ndarray:
    """``[n, fetch]`` positions from a FAISS HNSW graph (M 32, efConstruction 200, efSearch 128) over
    ``stored`` (``metric``: ``ip`` or ``l2``)."""
    import faiss

    kind = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    index = faiss.IndexHNSWFlat(stored.shape[1], 32, kind)
    index.hnsw.efConstruction = 200
    index.add(np.ascontiguousarray(stored, dtype=np.float32))
    params = faiss.SearchParametersHNSW()
    params.efSearch = max(128, fetch)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), fetch, params=params)[1]


def lancedb_raw_table(folder: Path, stored: np.ndarray) -> Any:
    """A LanceDB table of the raw form ``stored`` ``[n, width]`` with each row's position ``pos``."""
    import lancedb
    import pyarrow as pa

    n, width = stored.shape
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(stored.reshape(-1), pa.float32()), width)
    rows = pa.table({"pos": pa.array(np.arange(n), pa.int64()), "vector": vectors})
    return lancedb.connect(str(folder)).create_table("raw", rows, mode="overwrite")


def lancedb_raw_candidates(table: Any, queries: np.ndarray, kind: str, fetch: int) -> np.ndarray:
    """``[n, fetch]`` positions from a LanceDB ``kind`` index (built now, replacing any) over the raw form
    (``dot`` metric), searched as the store searches (nprobes 20, refine_factor 4)."""
    n, width = table.count_rows(), len(queries[0])
    options: dict[str, Any] = {"num_sub_vectors": _pq_sub_vectors(width)} if "pq" in kind else {}
    table.create_index(
        metric="dot", index_type=kind.upper(), num_partitions=max(1, int(n**0.5)), replace=True, **options
    )
    search = table.search(list(queries)).distance_type("dot").limit(fetch).nprobes(20).refine_factor(4)
    result = search.to_arrow()
    cand = np.full((len(queries), fetch), -1, dtype=np.int64)
    qi = (
        result["query_index"].to_numpy()
        if "query_index" in result.column_names
        else np.zeros(result.num_rows, int)
    )
    pos = result["pos"].to_numpy()
    for i in range(len(queries)):
        found = pos[qi == i][:fetch]
        cand[i, : len(found)] = found
    return cand


def ann_recall(
    args: argparse.Namespace, encoded: dict[str, Any], log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Recall@10 rows ``{points, index, form, recall_at_10}`` on HyTE-H's points of the large corpus and on
    their directions at drawn radii; and the latency rows of the ANN indexes on HyTE-H's own points."""
    model = encoded["models"]["hyte_h"]
    docs, queries = encoded["embeddings"]["large"]["hyte_h"]
    c = float(model.curvature().detach())
    rng = np.random.default_rng(0)
    point_sets = {"HyTE-H's own points": (docs, queries)}
    for lo, hi in ((1.5, 2.5), (6.0, 10.0)):
        point_sets[f"radii {lo:g}-{hi:g}"] = (
            at_radii(docs, lo, hi, c, rng),
            at_radii(queries, lo, hi, c, rng),
        )
    ids = [str(i) for i in range(len(docs))]
    fetch = max(4 * K, K + 16)  # the stores' ANN over-fetch (oversample 4)
    rows: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    for set_name, (x, q) in point_sets.items():
        own = set_name.startswith("HyTE-H")
        q_t = torch.from_numpy(q)
        exact = VectorIndex.from_embeddings(ids, x, similarity="geodesic", curvature=c).search_embeddings(
            q_t, K
        )
        exact_pos = exact[1].tolist()
        radii = lorentz.radius(torch.from_numpy(x).to(torch.float64), c)
        raw = stored_form(torch.from_numpy(x), "geodesic", c).to(torch.float32).numpy()
        raw_q = lorentz.ip_query(stored_form(q_t, "geodesic", c)).to(torch.float32).numpy()
        forms = {
            "reduced, R from the model's bound": layout_for_model(model),
            "reduced, R from the documents": layout_for_model(model, max_radius=tight_radius(model, x)),
        }

        where = {"points": set_name, "radius_min": float(radii.min()), "radius_max": float(radii.max())}

        def record(
            index: str, form: str, found: list[list[int]], where: dict = where, exact=exact_pos
        ) -> None:
            rows.append({**where, "index": index, "form": form, "recall_at_10": recall_at_k(found, exact)})
            log(f"ANN {where['points']} {index} {form}: recall@10 {rows[-1]['recall_at_10']:.4f}")

        if own:  # the FAISS folder index's own HNSW (R from the documents), timed
            with measured() as build:
                hnsw = VectorIndex.from_embeddings(ids, x, similarity="geodesic", curvature=c, kind="hnsw")
            with measured() as search:
                found = hnsw.search_embeddings(q_t, K)[1].tolist()
            record("FAISS HNSW (VectorIndex)", "reduced, R from the documents", found)
            latency.append(
                _latency_row("FAISS folder, HNSW (reduced form)", len(x), build, search, len(q), None)
            )
        else:
            record(
                "FAISS HNSW",
                "raw",
                rerank(q, x, faiss_hnsw_candidates(raw, raw_q, "ip", fetch), "geodesic", c),
            )
            for form, layout in forms.items():
                stored = layout.document_vectors(ids, torch.from_numpy(x))
                a32 = layout.query_forms(q_t)[1]
                found = rerank(q, x, faiss_hnsw_candidates(stored, a32, "l2", fetch), "geodesic", c)
                record("FAISS HNSW", form, found)
        # LanceDB: one table per form, each index kind built on it in turn (HyTE-H's own points: a fresh
        # store per kind, timed, so the size on disk is that one index's).
        kinds = args.lancedb_kinds.split(",")
        folder = args.work / "stores" / "lancedb-ann"
        raw_table = None if own else lancedb_raw_table(folder / "raw", raw)
        shared = {}
        if not own:
            for i, (form, layout) in enumerate(forms.items()):
                shared[form] = filled_store(
                    f"lancedb:{folder / str(i)}", layout, ids, x, None, batch=len(ids)
                )
        for kind in kinds:
            if raw_table is not None:
                found = rerank(q, x, lancedb_raw_candidates(raw_table, raw_q, kind, fetch), "geodesic", c)
                record(f"LanceDB {kind}", "raw", found)
            for form, layout in forms.items():
                if own and not form.endswith("bound"):
                    continue
                spec = f"lancedb:{folder / kind}"
                with measured() as build:
                    store = (
                        shared[form]
                        if form in shared
                        else filled_store(spec, layout, ids, x, None, batch=len(ids))
                    )
                    store.create_ann_index(kind)
                with measured() as search:
                    hits = batched_search(store, q, exact=False)
                record(f"LanceDB {kind}", form, [[int(h.id) for h in row] for row in hits])
                if own:
                    store.close()
                    label = f"LanceDB {kind} (reduced form)"
                    latency.append(
                        _latency_row(label, len(x), build, search, len(q), folder_mib(folder / kind))
                    )
        for store in shared.values():
            store.close()
    return rows, latency


def _pq_sub_vectors(width: int) -> int:
    """The most PQ sub-vectors that divide ``width`` with at least 8 coordinates each."""
    return next(n for n in range(max(1, width // 8), 0, -1) if width % n == 0)


# --- the run --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000, help="documents of the large corpus")
    parser.add_argument("--queries", type=int, default=1_000, help="queries of the large corpus")
    parser.add_argument("--max-seq-length", type=int, default=8, help="tokens per text when encoding")
    parser.add_argument(
        "--large-models",
        default=",".join(MODEL_CONFIGS),
        help="models that embed the large corpus (comma-separated; all four embed faq-dev)",
    )
    parser.add_argument(
        "--qdrant-docs",
        type=int,
        default=2_000,
        help="documents of the large corpus in the Qdrant local store (local mode commits point by point)",
    )
    parser.add_argument(
        "--probe-queries", type=int, default=5, help="queries of the exact search with HyTE-H's own bound"
    )
    parser.add_argument(
        "--lancedb-kinds", default="ivf_hnsw_sq,ivf_pq", help="LanceDB ANN index types (comma-separated)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is faster on a shared, loaded machine)"
    )
    parser.add_argument("--encode-only", action="store_true", help="fill the embedding cache and stop")
    parser.add_argument("--quick", action="store_true", help="a smoke run on tiny data (tests)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_vector_stores")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.docs, args.queries = min(args.docs, 300), min(args.queries, 20)
        args.qdrant_docs = min(args.qdrant_docs, 100)
    return args


def embeddings(args: argparse.Namespace, data: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """``{corpus: {model: (doc embeddings, query embeddings)}}`` and the models."""
    large = [m for m in args.large_models.split(",") if m]
    unknown = sorted(set(large) - set(MODEL_CONFIGS))
    if unknown:
        raise SystemExit(f"error: unknown --large-models {unknown}; choose from {list(MODEL_CONFIGS)}")
    models = build_models(list(MODEL_CONFIGS), args.max_seq_length)
    out: dict[str, Any] = {}
    for corpus, names in (("faq-dev", list(MODEL_CONFIGS)), ("large", large)):
        chosen = {n: models[n] for n in names}
        folder = args.work / "embeddings" / f"{corpus}-{args.max_seq_length}"
        docs = encode_cached(chosen, data[corpus]["docs"], "document", folder, log)
        queries = encode_cached(chosen, data[corpus]["queries"], "query", folder, log)
        out[corpus] = {n: (docs[n], queries[n]) for n in names}
    return {"embeddings": out, "models": models}


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown tables (what README's "Vector databases" section shows)."""
    large = result["large_corpus"]
    lines = [
        "# Vector stores: exactness, ANN recall, latency (`benchmarks/bench_vector_stores.py`)",
        "",
        f"Command: `.venv/bin/python {result['command']}` ({result['date_utc']} UTC, {result['machine']}, "
        f"torch threads {result['torch_threads']}; load average 1/5/15 min "
        f"{'/'.join(f'{v:.1f}' for v in result['load_average_1_5_15_min_before'])} before the measurements, "
        f"{'/'.join(f'{v:.1f}' for v in result['load_average_1_5_15_min_at_end'])} at the end: "
        "a shared machine, so times are indicative). Untrained quickstart models, "
        f"max_seq_length {result['max_seq_length']}, k = {result['k']}.",
        "",
        f"Large corpus: {large['documents']:,} bundled documents ({large['wordnet_glosses']:,} WordNet noun "
        f"glosses + {large['python_docs_paragraphs']:,} Python docs paragraphs), {large['queries']:,} "
        f"wordnet-hier queries; embedded by {', '.join(large['models'])}.",
        "",
        "## Exactness: flat search of each store vs `VectorIndex` exact search (top-10 ids, in order)",
        "",
        "| corpus | model | similarity | documents | queries | LanceDB brute force | Qdrant local | "
        "max abs score difference |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for row in result["exactness"]:
        cells.setdefault((row["corpus"], row["model"]), {})[row["backend"]] = row
    for (corpus, model), by in cells.items():
        first = next(iter(by.values()))
        same = {
            b: f"{r['identical_top10']}/{r['queries']}"
            + (f" (first {r['docs']:,} documents)" if r["docs"] != first["docs"] else "")
            for b, r in by.items()
        }
        diff = max(r["max_abs_score_difference"] for r in by.values())
        lines.append(
            f"| {corpus} | {model} | {first['similarity']} | {first['docs']:,} | {first['queries']:,} | "
            f"{same.get('lancedb', '-')} | {same.get('qdrant', '-')} | {diff:.1e} |"
        )
    probe = result["default_bound_probe"]
    lines += [
        "",
        "Hyperbolic stores here take `R` from the documents' largest radius (`max_radius`, +0.1%). With "
        f"HyTE-H's own bound (max_radius {probe['max_radius']:g}, the store's default) the exact search of the "
        f"large corpus is still exact ({probe['identical_top10']}/{probe['queries']} identical) but costs "
        f"{probe['seconds_per_query']:.1f} s and {probe['peak_rss_growth_mib']:.0f} MiB per query: the "
        "certificate's float32 error bound grows with `R^2 = cosh(2 sqrt(c) r) / c`, no candidate can be "
        "certified, and the fetch doubles up to every document.",
    ]
    lines += [
        "",
        "## ANN recall@10 against exact search, after the float64 re-rank",
        "",
        "Raw form: documents `x`, inner product with `ip_query(q)`. Reduced: the stores' L2 form "
        "`(x, sqrt(R^2 - |x|^2))` with `R` from the model's radius bound (what a store uses by default) or "
        "from the documents' largest radius. FAISS HNSW (M 32, efConstruction 200, efSearch 128) stands in "
        "for Qdrant's HNSW: Qdrant local mode searches by brute force and no Qdrant server runs here. "
        "LanceDB: `create_ann_index` defaults, searched with the store's defaults (nprobes 20, refine_factor 4; "
        "the raw form the same). 40 candidates re-ranked per query (the stores' over-fetch, oversample 4).",
        "",
        "| points (radius min-max) | index | raw | reduced, R from the model's bound | "
        "reduced, R from the documents |",
        "|---|---|---:|---:|---:|",
    ]
    grid: dict[tuple[str, str], dict[str, Any]] = {}
    for row in result["ann_recall"]:
        points = f"{row['points']} ({row['radius_min']:.2f}-{row['radius_max']:.2f})"
        grid.setdefault((points, row["index"]), {})[row["form"]] = row["recall_at_10"]
    forms = ("raw", "reduced, R from the model's bound", "reduced, R from the documents")
    for (points, index), by in grid.items():
        values = " | ".join(f"{by[f]:.4f}" if f in by else "-" for f in forms)
        lines.append(f"| {points} | {index} | {values} |")
    lines += [
        "",
        "## Latency and memory per 1k queries (k = 10), large corpus, HyTE-H",
        "",
        "Peak growth of the process's resident memory during the 1k-query search; size: the store's folder "
        "on disk (texts included).",
        "",
        "| index | documents | build (s) | search (s per 1k queries) | peak RSS growth (MiB) | size (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["latency_per_1k_queries"]:
        size = "-" if row["size_mib"] is None else f"{row['size_mib']:.0f}"
        lines.append(
            f"| {row['index']} | {row['documents']:,} | {row['build_seconds']:.1f} | {row['seconds_per_1k_queries']:.2f} | "
            f"{row['peak_rss_growth_mib_per_1k_queries']:.0f} | {size} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {message}", flush=True)

    data = corpora(args)
    log(f"large corpus: {len(data['large']['docs'])} documents, {len(data['large']['queries'])} queries")
    encoded = embeddings(args, data, log)
    if args.encode_only:
        return
    load_before = list(os.getloadavg())
    exact_rows, latency = exactness(args, data, encoded, log)
    probe = default_bound_probe(args, data, encoded, log)
    ann_rows, ann_latency = ann_recall(args, encoded, log)
    result = {
        "command": " ".join(["benchmarks/bench_vector_stores.py", *map(shlex.quote, sys.argv[1:])])
        if argv is None
        else " ".join(["benchmarks/bench_vector_stores.py", *map(shlex.quote, argv)]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_average_1_5_15_min_before": load_before,
        "load_average_1_5_15_min_at_end": list(os.getloadavg()),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "k": K,
        "max_seq_length": args.max_seq_length,
        "large_corpus": {
            "documents": len(data["large"]["docs"]),
            "wordnet_glosses": sum(i.startswith("wn:") for i in data["large"]["doc_ids"]),
            "python_docs_paragraphs": sum(i.startswith("py:") for i in data["large"]["doc_ids"]),
            "queries": len(data["large"]["queries"]),
            "models": sorted(encoded["embeddings"]["large"]),
        },
        "exactness": exact_rows,
        "default_bound_probe": probe,
        "ann_recall": ann_rows,
        "latency_per_1k_queries": latency + ann_latency,
        "wall_seconds": time.time() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vector_stores.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "vector_stores.md").write_text(markdown(result))
    log(f"wrote {args.out / 'vector_stores.json'} and vector_stores.md")


if __name__ == "__main__":
    main()
