"""Which radius bound ``R`` the L2-reduced store form needs: ANN recall@10 of FAISS HNSW (the stand-in for a
store's HNSW graph) over the reduced form with ``R`` from the model's bound (HyTE-H's 10), from the documents'
largest radius, and the stores' default (the documents' largest radius plus ``RADIUS_HEADROOM``), on HyTE-H's
own points of the large corpus and on their directions at radii 1.5-2.5 and 6-10.

It reads the embeddings ``bench_vector_stores.py`` cached (run that first; ``--work`` is its work folder) and
uses its functions, so the numbers are comparable with its table. Results: ``--out`` (JSON and Markdown)::

    .venv/bin/python benchmarks/bench_store_radius.py --docs 20000 --queries 500
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vector_stores import K, at_radii, faiss_hnsw_candidates, recall_at_k, rerank

from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.geometry import lorentz
from lorentz_rag.stores.layout import RADIUS_HEADROOM, StoreLayout, documents_radius

ROOT = Path(__file__).resolve().parents[1]
MODEL_BOUND = 10.0  # configs/quickstart/hyte_h.yaml's head bound (max_radius), the stores' old default


def _cached(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(documents, queries) embeddings of model ``name`` in bench_vector_stores's cache: the key with the most
    chunks is the corpus, the other the queries."""
    keys: dict[str, list[Path]] = {}
    for file in sorted(folder.glob(f"{name}-*-*.npy")):
        keys.setdefault(file.name.split("-")[-2], []).append(file)
    if len(keys) != 2:
        raise SystemExit(
            f"{folder}: expected the corpus and query caches of {name}; run bench_vector_stores.py"
        )
    docs_key, query_key = sorted(keys, key=lambda k: -len(keys[k]))
    load = lambda key: np.concatenate([np.load(f) for f in keys[key]])  # noqa: E731
    return load(docs_key), load(query_key)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_vector_stores")
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "store_radius")
    args = parser.parse_args()
    torch.set_num_threads(1)
    docs, queries = _cached(args.work / "embeddings" / "large-8", "hyte_h")
    docs, queries = docs[: args.docs], queries[: args.queries]
    c = float(
        1.0 / np.mean(docs[:, 0].astype(np.float64) ** 2 - (docs[:, 1:].astype(np.float64) ** 2).sum(1))
    )
    rng = np.random.default_rng(0)
    sets = {"HyTE-H's own points": (docs, queries)}
    for lo, hi in ((1.5, 2.5), (6.0, 10.0)):
        sets[f"radii {lo:g}-{hi:g}"] = (at_radii(docs, lo, hi, c, rng), at_radii(queries, lo, hi, c, rng))
    fetch = max(4 * K, K + 16)
    rows = []
    load = os.getloadavg()
    for set_name, (x, q) in sets.items():
        ids = [str(i) for i in range(len(x))]
        exact = (
            VectorIndex.from_embeddings(ids, x, similarity="geodesic", curvature=c)
            .search_embeddings(torch.from_numpy(q), K)[1]
            .tolist()
        )
        r_docs = documents_radius(torch.from_numpy(x), "geodesic", c)
        bounds = {
            "model's bound": max(MODEL_BOUND, r_docs * 1.001),
            "documents' largest radius": r_docs * 1.001,
            # The stores' default, min(model bound, documents + headroom); the synthetic 6-10 points lie beyond
            # HyTE-H's bound, so there it is the documents + headroom alone.
            f"documents + {RADIUS_HEADROOM:g} (store default)": r_docs + RADIUS_HEADROOM,
        }
        for form, r in bounds.items():
            layout = StoreLayout(similarity="geodesic", curvature=c, dim=x.shape[1], max_radius=r)
            stored = layout.document_vectors(ids, torch.from_numpy(x))
            t0 = time.perf_counter()
            found = rerank(
                q,
                x,
                faiss_hnsw_candidates(stored, layout.query_forms(torch.from_numpy(q))[1], "l2", fetch),
                "geodesic",
                c,
            )
            radii = lorentz.radius(torch.from_numpy(x).double(), c)
            rows.append(
                {
                    "points": set_name,
                    "radius_min": float(radii.min()),
                    "radius_max": float(radii.max()),
                    "R_radius": r,
                    "form": form,
                    "recall_at_10": recall_at_k(found, exact),
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "docs": len(docs),
        "queries": len(queries),
        "curvature": c,
        "load_before": load,
        "load_after": os.getloadavg(),
    }
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Radius bound R of the L2-reduced form: FAISS HNSW recall@10 (float64 re-rank of 40 candidates)",
        "",
        f"{len(docs)} documents, {len(queries)} queries of the large corpus (HyTE-H, quickstart config, untrained), "
        f"c = {c:.4g}; load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after. Command: "
        f"`.venv/bin/python benchmarks/bench_store_radius.py --docs {args.docs} --queries {args.queries}`.",
        "",
        "| points (radius min-max) | R from | R's radius | recall@10 |",
        "|---|---|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['points']} ({row['radius_min']:.2f}-{row['radius_max']:.2f}) | {row['form']} | "
            f"{row['R_radius']:.2f} | {row['recall_at_10']:.3f} |"
        )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
