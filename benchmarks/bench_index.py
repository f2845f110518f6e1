"""Exact hyperbolic top-10 search: the FAISS route of ``VectorIndex`` vs plain PyTorch brute force.

100k documents and 1k queries on the hyperboloid (d = 384 + 1, c = 1), drawn in clusters with radii
between 1.5 and 4 (x0 from about 2.4 to 27, what trained encoders produce), time coordinate first.

- ``torch_bruteforce``: float64 pairwise geodesic distance in blocks of documents + ``torch.topk``
  merge (what an evaluation without an index does);
- ``faiss_flat``: ``VectorIndex(kind="flat")`` (FAISS inner product on time-negated queries, over-fetch,
  float64 re-rank, certified); its result must be identical to the brute force;
- ``faiss_hnsw``: ``VectorIndex(kind="hnsw")`` at the default settings; recall@10 against the brute force.

Writes ``benchmarks/results/index.json`` and ``index.md``. Run: ``.venv/bin/python benchmarks/bench_index.py``
(``--docs``/``--queries`` to shrink it). Timings are wall-clock on whatever CPU runs it; the threads used
are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.geometry import lorentz

RESULTS = Path(__file__).resolve().parent / "results"


def clustered_points(n: int, d: int, n_clusters: int, seed: int) -> torch.Tensor:
    """``n`` float32 points of ``H^d_1`` around ``n_clusters`` centres, radii in [1.5, 4]."""
    g = torch.Generator().manual_seed(seed)
    centre_gen = torch.Generator().manual_seed(1234)  # queries and documents share the centres
    centres = torch.nn.functional.normalize(
        torch.randn(n_clusters, d, generator=centre_gen, dtype=torch.float64), dim=1
    )
    which = torch.randint(n_clusters, (n,), generator=g)
    direction = torch.nn.functional.normalize(
        centres[which] + 0.35 * torch.randn(n, d, generator=g, dtype=torch.float64) / d**0.5 * 4, dim=1
    )
    radius = 1.5 + 2.5 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    return lorentz.expmap0(direction * radius, 1.0).to(torch.float32)


def torch_bruteforce(queries: torch.Tensor, docs: torch.Tensor, k: int, block: int = 8192):
    """float64 pairwise geodesic distance by document block, running ``topk`` merge: (scores, positions)."""
    q = queries.to(torch.float64)
    best_d = torch.full((len(q), 0), float("inf"), dtype=torch.float64)
    best_i = torch.empty((len(q), 0), dtype=torch.int64)
    for start in range(0, len(docs), block):
        dist = lorentz.pairwise_geodesic_distance(q, docs[start : start + block].to(torch.float64), 1.0)
        d, i = torch.topk(dist, min(k, dist.shape[1]), dim=1, largest=False)
        all_d, all_i = torch.cat([best_d, d], 1), torch.cat([best_i, i + start], 1)
        d, sel = torch.topk(all_d, k, dim=1, largest=False)
        best_d, best_i = d, all_i.gather(1, sel)
    return -best_d, best_i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import faiss

    docs = clustered_points(args.docs, args.dim, 1000, seed=0)
    queries = clustered_points(args.queries, args.dim, 1000, seed=1)
    ids = [str(i) for i in range(args.docs)]
    k = args.k
    radii = lorentz.radius(docs.double(), 1.0)

    t = time.perf_counter()
    ref_scores, ref_pos = torch_bruteforce(queries, docs, k)
    t_brute = time.perf_counter() - t

    t = time.perf_counter()
    flat = VectorIndex.from_embeddings(ids, docs, similarity="geodesic", curvature=1.0, kind="flat")
    t_flat_build = time.perf_counter() - t
    t = time.perf_counter()
    flat_scores, flat_pos = flat.search_embeddings(queries, k)
    t_flat = time.perf_counter() - t
    identical = bool(torch.equal(flat_pos, ref_pos))
    max_score_diff = float((flat_scores - ref_scores).abs().max())
    # The faiss-cpu wheel runs OpenMP on top of a multi-threaded BLAS; on a small shared machine the two
    # oversubscribe the cores. The same search with one OpenMP thread (BLAS keeps its own threads):
    default_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    t = time.perf_counter()
    one_scores, one_pos = flat.search_embeddings(queries, k)
    t_flat_one = time.perf_counter() - t
    faiss.omp_set_num_threads(default_threads)
    identical_one = bool(torch.equal(one_pos, ref_pos)) and bool(torch.equal(one_scores, flat_scores))

    t = time.perf_counter()
    hnsw = VectorIndex.from_embeddings(ids, docs, similarity="geodesic", curvature=1.0, kind="hnsw")
    t_hnsw_build = time.perf_counter() - t
    t = time.perf_counter()
    _, hnsw_pos = hnsw.search_embeddings(queries, k)
    t_hnsw = time.perf_counter() - t
    recall = sum(len(set(a) & set(b)) for a, b in zip(hnsw_pos.tolist(), ref_pos.tolist())) / (
        k * args.queries
    )

    nq = args.queries
    result = {
        "setup": {
            "n_docs": args.docs,
            "n_queries": nq,
            "dim": args.dim + 1,
            "k": k,
            "curvature": 1.0,
            "doc_radius_min_mean_max": [float(radii.min()), float(radii.mean()), float(radii.max())],
            "doc_x0_max": float(docs[:, 0].max()),
            "torch_threads": torch.get_num_threads(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "machine": platform.processor() or platform.machine(),
            "load_average_1_5_15_min_at_end": list(os.getloadavg()),
            "note": "2 CPU cores shared with other developers' jobs (see the load average); one run",
        },
        "torch_bruteforce": {"seconds": t_brute, "queries_per_s": nq / t_brute},
        "faiss_flat": {
            "build_seconds": t_flat_build,
            "seconds": t_flat,
            "queries_per_s": nq / t_flat,
            "speedup_vs_bruteforce": t_brute / t_flat,
            "identical_to_bruteforce": identical,
            "max_abs_score_difference": max_score_diff,
        },
        "faiss_flat_one_omp_thread": {
            "seconds": t_flat_one,
            "queries_per_s": nq / t_flat_one,
            "speedup_vs_bruteforce": t_brute / t_flat_one,
            "identical_to_bruteforce": identical_one,
        },
        "faiss_hnsw": {
            "hnsw_m": 32,
            "ef_construction": 200,
            "ef_search": hnsw.ef_search,
            "build_seconds": t_hnsw_build,
            "seconds": t_hnsw,
            "queries_per_s": nq / t_hnsw,
            "recall_at_10": recall,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index.json").write_text(json.dumps(result, indent=2) + "\n")
    s = result["setup"]
    md = f"""# Exact hyperbolic top-{k} search (`benchmarks/bench_index.py`)

{s["n_docs"]:,} documents, {s["n_queries"]:,} queries, points of H^{args.dim} (d + 1 = {s["dim"]} coordinates),
c = 1, clustered, document radius {s["doc_radius_min_mean_max"][0]:.2f} / {s["doc_radius_min_mean_max"][1]:.2f} /
{s["doc_radius_min_mean_max"][2]:.2f} (min / mean / max). torch threads {s["torch_threads"]}, FAISS threads
{s["faiss_threads"]}; {s["note"]}: load average {s["load_average_1_5_15_min_at_end"][0]:.1f} at the end.

| method | build (s) | search (s) | queries/s | result |
|---|---:|---:|---:|---|
| PyTorch brute force (float64 geodesic, blocks + topk) | - | {t_brute:.2f} | {nq / t_brute:.0f} | reference |
| `VectorIndex` flat (FAISS IP + float64 re-rank) | {t_flat_build:.2f} | {t_flat:.2f} | {nq / t_flat:.0f} | identical: {identical} ({t_brute / t_flat:.1f}x faster) |
| `VectorIndex` flat, `faiss.omp_set_num_threads(1)` | - | {t_flat_one:.2f} | {nq / t_flat_one:.0f} | identical: {identical_one} ({t_brute / t_flat_one:.1f}x faster) |
| `VectorIndex` HNSW (M 32, efSearch {hnsw.ef_search}) | {t_hnsw_build:.1f} | {t_hnsw:.2f} | {nq / t_hnsw:.0f} | recall@{k} {recall:.4f} |

The flat route is exact: FAISS float32 inner products on time-negated queries, an over-fetch certified
by a float32 error bound, and a float64 geodesic re-rank (see `lorentz_rag/eval/index.py`). The faiss-cpu
wheel runs OpenMP threads on top of a multi-threaded BLAS; on this small shared machine they
oversubscribe the cores, hence the second flat row with one OpenMP thread (same results).
HNSW: FAISS `IndexHNSWFlat` on the MIPS-to-L2 reduction, candidates re-scored in float64.
"""
    (args.out / "index.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
