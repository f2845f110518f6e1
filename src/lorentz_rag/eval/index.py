"""An exact hyperbolic vector index: FAISS inner-product search plus a float64 re-rank.

Why inner-product search is exact for the geodesic ranking (docs/design.md, section 13.1): for points of the
hyperboloid ``d(q, x) = arcosh(-c <q, x>_L) / sqrt(c)`` is strictly decreasing in ``<q, x>_L``, and
``<q, x>_L = ip_query(q) . x`` with ``ip_query(q) = (-q0, qs)``. So the documents closest to ``q`` are the
largest Euclidean dot products of ``ip_query(q)`` with the stored points: maximum-inner-product search,
which FAISS ``IndexFlatIP`` does exactly (and an HNSW graph approximately, see below). Euclidean models use the same code with cosine (normalised vectors, inner product).

What FAISS cannot do is compute those dot products accurately: it works in float32, where far from the
origin (``x0 ~ 1e3``) ``<q, x>_L ~ -1e6`` is resolved only to about 0.1. The flat index therefore
over-fetches ``k + margin`` candidates, re-scores them in float64 (the geodesic distance from the space
coordinates, or the float64 Lorentz inner product / cosine), and *certifies* the result: a float32 dot
product of length ``D`` is within ``E = gamma * |q|_2 * max_x |x|_2`` of the exact one
(``gamma ~ (D + 4) * 2^-24``, any summation order), so a document FAISS did not return has an exact score
of at most ``s32_last + E`` (``s32_last``: the lowest float32 score fetched). If the ``k``-th best float64
score among the candidates is not above that by another ``E`` (a margin far above float64 rounding), the
fetch is doubled for that query (up to the whole corpus, which is brute force). By the same bound, only
candidates within ``3E`` of the ``k``-th float32 score are re-scored (usually about ``k`` of them). Ties are broken by document order, as in :func:`lorentz_rag.eval.retrieval.exact_search`.
Rankings are exact with respect to the stored float32 points (what models produce), scored in float64.

HNSW (``kind="hnsw"``) returns approximate candidates (no certificate); they are re-scored the same way.
FAISS's ``IndexHNSWFlat(d, M, METRIC_INNER_PRODUCT)`` builds its graph with the plain dot product between
*documents* (``x0 y0 + xs.ys``, dominated by large radii), not the Lorentz one the queries use: on random
hyperboloid points its recall@10 was about 1%. We use the standard reduction of maximum inner product to
L2 nearest neighbours instead: documents ``b(x) = (x, sqrt(R^2 - |x|^2))`` with ``R = max |x|``, queries
``a(q) = (ip_query(q), 0)``, so ``|a - b|^2 = |a|^2 + R^2 - 2 <q, x>_L``, exactly the same order, and the
graph links documents that are close as points (recall@10 about 0.99 at the same settings).

The Euclidean-distance twin (similarity ``euclidean``, ``-|q - x|``) is served by the same machinery:
``-|q - x|^2 / 2 = q.x - |x|^2 / 2 - |q|^2 / 2``, so documents are stored as ``(x, -|x|^2 / 2)`` and queries
searched as ``(q, 1)``: the inner product orders documents exactly as the distance does (the ``|q|^2`` term
is the same for every document). The re-rank computes ``-|q - x|`` in float64 from the stored ``x``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lorentz_rag.data.beir import read_corpus
from lorentz_rag.errors import names_path, on_interrupt
from lorentz_rag.eval.encode import (
    DEFAULT_SHARD_SIZE,
    EncodingIncompleteError,
    encode_corpus,
    finished_shards,
    work_dir_for,
)
from lorentz_rag.eval.relation_search import relation_search
from lorentz_rag.eval.taxonomy_attachment import (
    AttachedTaxonomy,
    attach_taxonomy,
    index_graph_search,
    read_attached_taxonomy,
    read_taxonomy_request,
)
from lorentz_rag.folder_lock import exclusive_lock, sibling_lock_path
from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry import similarity as similarity_fns
from lorentz_rag.geometry.relation import DEFAULT_RADIUS_WEIGHT
from lorentz_rag.models import load_model
from lorentz_rag.models.base import check_finite_embeddings
from lorentz_rag.search.graph_knn import refuse_radius_weight
from lorentz_rag.search.relation import exact_relation_search, relation_route
from lorentz_rag.training.distributed import barrier, command_process_group, is_distributed, world_info

__all__ = [
    "INDEX_KINDS",
    "IndexFormatError",
    "IndexModelMismatchError",
    "IndexNotEmptyError",
    "VectorIndex",
    "candidate_scores",
    "check_model_matches",
    "rank_candidates",
    "search_form",
    "stored_form",
]

INDEX_KINDS = ("flat", "hnsw")
HYPERBOLIC = similarity_fns.HYPERBOLIC_KINDS
_FAISS_FILE = "faiss.index"
_IDS_FILE = "doc_ids.json"
_META_FILE = "index.json"
_FORMAT_VERSION = 1
# Unit roundoff of float32.
_U32 = 2.0**-24
# Queries re-scored at once: the element-wise float64 re-rank holds [chunk, fetch, D] doubles (kept
# small so the temporaries stay in cache).
_RERANK_CHUNK = 64


class IndexFormatError(ValueError):
    """An index folder cannot be read (a missing, truncated or damaged file); the message names the file."""


class IndexModelMismatchError(ValueError):
    """The model given for a search is not the one the index was built with (its fingerprint differs)."""


class IndexNotEmptyError(FileExistsError):
    """``index build`` would replace an index folder, table or collection that holds documents; the message
    says how many and that ``--overwrite`` replaces them."""


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is a declared eval dependency
        raise ImportError(
            "the vector index needs faiss (pip install faiss-cpu, or lorentz-rag[eval])"
        ) from error
    return faiss


class VectorIndex:
    """Exact (``flat``) or approximate (``hnsw``) nearest-neighbour search over document embeddings.

    Build with :meth:`from_model` or :meth:`from_embeddings`; query with :meth:`search` (texts) or
    :meth:`search_embeddings`; persist with :meth:`save` / :meth:`load`. Scores are "higher = closer":
    ``-d(q, x)`` (``geodesic``), ``<q, x>_L + 1/c`` (``lorentz_inner``) or cosine, in float64.
    """

    def __init__(
        self,
        doc_ids: Sequence[str],
        faiss_index: Any,
        *,
        similarity: str,
        curvature: float | None,
        kind: str,
        max_norm: float,
        ef_search: int = 128,
        model_path: str | None = None,
        model_fingerprint: str | None = None,
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose one of {list(INDEX_KINDS)}")
        _check_similarity(similarity, curvature)
        if faiss_index.ntotal != len(doc_ids):
            raise ValueError(
                f"the FAISS index holds {faiss_index.ntotal} vectors but {len(doc_ids)} ids were given"
            )
        self.doc_ids = list(doc_ids)
        self.faiss_index = faiss_index
        self.similarity = similarity
        self.curvature = float(curvature) if similarity in HYPERBOLIC else None  # type: ignore[arg-type]
        self.kind = kind
        self.max_norm = float(max_norm)
        self.ef_search = int(ef_search)
        self.model_path = model_path
        # EmbeddingModel.fingerprint() of the model that embedded the documents (None: not recorded).
        self.model_fingerprint = model_fingerprint
        # A taxonomy attached for graph-kNN broader / narrower search (search/graph_knn.py); None: none.
        self.taxonomy: AttachedTaxonomy | None = None

    # --- construction -----------------------------------------------------------------------------------

    @property
    def is_hyperbolic(self) -> bool:
        return self.similarity in HYPERBOLIC

    @property
    def dim(self) -> int:
        """Embedding length ``D`` (HNSW and the Euclidean distance store extra coordinates, see the module
        docstring)."""
        return int(self.faiss_index.d) - (self.kind == "hnsw") - (self.similarity == "euclidean")

    def __len__(self) -> int:
        return len(self.doc_ids)

    def _stored_form(self, x: Tensor) -> Tensor:
        return stored_form(x, self.similarity, self.curvature)

    @classmethod
    def from_embeddings(
        cls,
        doc_ids: Sequence[str],
        embeddings: Tensor | np.ndarray,
        *,
        similarity: str,
        curvature: float | Tensor | None = None,
        kind: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        model_path: str | None = None,
    ) -> VectorIndex:
        """Index ``embeddings`` ``[n, D]`` (hyperboloid points, time first, or Euclidean vectors).

        The stored vectors are float32 (hyperbolic: re-lifted space part; cosine: normalised).
        """
        faiss = _faiss()
        emb = torch.as_tensor(embeddings)
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be [n, D], got shape {tuple(emb.shape)}")
        if emb.shape[0] != len(doc_ids):
            raise ValueError(f"{emb.shape[0]} embeddings but {len(doc_ids)} document ids")
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError("document ids must be unique")
        if not torch.isfinite(emb).all():
            raise ValueError("embeddings contain NaN or inf")
        c = float(curvature.detach()) if isinstance(curvature, Tensor) else curvature
        _check_similarity(similarity, c)
        d = int(emb.shape[1]) + (similarity == "euclidean")
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d + 1, int(hnsw_m), faiss.METRIC_L2)
            index.hnsw.efConstruction = int(ef_construction)
        else:
            raise ValueError(f"unknown index kind {kind!r}; choose one of {list(INDEX_KINDS)}")
        stored = stored_form(emb, similarity, c).to(torch.float32)
        norms = stored.to(torch.float64).norm(dim=-1)
        max_norm = float(norms.max()) if len(stored) else 0.0
        if kind == "hnsw":  # MIPS -> L2 reduction: every stored vector gets norm max_norm
            extra = (max_norm**2 - norms**2).clamp_min(0.0).sqrt().to(torch.float32)
            stored = torch.cat([stored, extra.unsqueeze(1)], dim=1)
        index.add(np.ascontiguousarray(stored.numpy()))
        return cls(
            doc_ids,
            index,
            similarity=similarity,
            curvature=c,
            kind=kind,
            max_norm=max_norm,
            ef_search=ef_search,
            model_path=model_path,
        )

    @classmethod
    def from_model(
        cls,
        model: Any,
        doc_ids: Sequence[str],
        doc_texts: Sequence[str],
        *,
        batch_size: int = 64,
        kind: str = "flat",
        model_path: str | None = None,
        **index_options: Any,
    ) -> VectorIndex:
        """Embed ``doc_texts`` with the document prefix and index them (options as :meth:`from_embeddings`).

        Under ``torchrun`` (a running process group) the ranks share the encoding
        (:func:`lorentz_rag.eval.encode.encode_corpus`, identical to one process) and each builds the index.
        """
        if len(doc_ids) != len(doc_texts):
            raise ValueError(f"{len(doc_ids)} document ids but {len(doc_texts)} texts")
        emb = encode_corpus(model, list(doc_texts), batch_size=batch_size)
        return cls.from_model_embeddings(
            model, doc_ids, emb, kind=kind, model_path=model_path, **index_options
        )

    @classmethod
    def from_model_embeddings(
        cls,
        model: Any,
        doc_ids: Sequence[str],
        embeddings: Tensor,
        *,
        kind: str = "flat",
        model_path: str | None = None,
        **index_options: Any,
    ) -> VectorIndex:
        """Index document ``embeddings`` that ``model`` made: its similarity, curvature and fingerprint."""
        c = model.curvature() if model.is_hyperbolic else None
        index = cls.from_embeddings(
            doc_ids,
            embeddings,
            similarity=model.settings.similarity,
            curvature=c,
            kind=kind,
            model_path=model_path,
            **index_options,
        )
        index.model_fingerprint = model.fingerprint() if hasattr(model, "fingerprint") else None
        return index

    # --- search -----------------------------------------------------------------------------------------

    def _error_bound(self, q_norm: Tensor) -> Tensor:
        """Bound on |float32 FAISS score - float64 score| per query ``[n]`` (see the module docstring)."""
        gamma = 2.0 * (self.dim + 4) * _U32  # factor 2: output rounding and safety
        return gamma * q_norm * self.max_norm + 1e-12 * (1.0 + q_norm * self.max_norm)

    def _faiss_search(self, queries32: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "hnsw":
            params = _faiss().SearchParametersHNSW()
            params.efSearch = max(self.ef_search, fetch)
            padded = np.hstack([queries32, np.zeros((len(queries32), 1), dtype=np.float32)])
            return self.faiss_index.search(padded, fetch, params=params)
        return self.faiss_index.search(queries32, fetch)

    def _rerank(self, q: Tensor, cand: Tensor) -> tuple[Tensor, Tensor]:
        """float64 scores and certification scores of queries ``[n, D']`` with candidates ``[n, f]``
        (:func:`candidate_scores` of the stored vectors)."""
        width = self.dim + (
            self.similarity == "euclidean"
        )  # the stored (x, -|x|^2/2) of the Euclidean distance
        vecs = torch.from_numpy(self.faiss_index.reconstruct_batch(cand.reshape(-1).numpy()))[:, :width]
        x = vecs.to(torch.float64).reshape(cand.shape[0], cand.shape[1], -1)
        return candidate_scores(q, x, self.similarity, self.curvature)

    def search_embeddings(
        self,
        queries: Tensor | np.ndarray,
        k: int,
        *,
        relation: str = "similar",
        radius_weight: float = DEFAULT_RADIUS_WEIGHT,
    ) -> tuple[Tensor, Tensor]:
        """Top-``k`` documents for query embeddings ``[n, D]``.

        Returns (scores float64 ``[n, k']``, positions int64 ``[n, k']``), ``k' = min(k, len(index))``,
        best first, ties to the earlier document. ``flat``: equal to a brute-force float64 ranking.
        ``relation="broader"`` / ``"narrower"`` ranks by :mod:`lorentz_rag.geometry.relation`'s score with
        ``radius_weight`` (exact for ``flat``, :mod:`lorentz_rag.eval.relation_search`; refused for cosine);
        with a taxonomy attached (``self.taxonomy``, ``index build --taxonomy``) they are graph-kNN instead
        (:mod:`lorentz_rag.search.graph_knn`: exact, any similarity; ``radius_weight`` unused).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if relation != "similar" and self.taxonomy is not None:  # graph-kNN over the attached taxonomy
            return index_graph_search(self, torch.as_tensor(queries), k, relation)
        if relation != "similar":
            return relation_search(self, torch.as_tensor(queries), k, relation, radius_weight)
        q = torch.as_tensor(queries)
        if q.ndim == 1:
            q = q.unsqueeze(0)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be [n, {self.dim}], got shape {tuple(q.shape)}")
        check_finite_embeddings(q, what="query embeddings")
        n_docs = len(self)
        k_eff = min(k, n_docs)
        out_scores = torch.empty(q.shape[0], k_eff, dtype=torch.float64)
        out_pos = torch.empty(q.shape[0], k_eff, dtype=torch.int64)
        if q.shape[0] == 0 or n_docs == 0:
            return out_scores, out_pos
        q64 = self._stored_form(q)
        faiss_q = search_form(q64, self.similarity)
        faiss_q32 = faiss_q.to(torch.float32)
        bound = self._error_bound(faiss_q32.to(torch.float64).norm(dim=-1))
        # Margin: float32 near-ties around the k-th score almost always fall within a few extra places.
        fetch = min(n_docs, max(2 * k_eff, k_eff + 16))
        pending = torch.arange(q.shape[0])
        while len(pending):
            s32, ids = self._faiss_search(np.ascontiguousarray(faiss_q32[pending].numpy()), fetch)
            ids_t = torch.from_numpy(ids.astype(np.int64))
            if (ids_t < 0).any():  # HNSW may return fewer than `fetch` results
                ids_t = torch.where(ids_t < 0, ids_t.max(dim=1, keepdim=True).values, ids_t)
            s32_t = torch.from_numpy(s32.astype(np.float64))
            uncertified = []
            for start in range(0, len(pending), _RERANK_CHUNK):
                rows = pending[start : start + _RERANK_CHUNK]
                cand = ids_t[start : start + _RERANK_CHUNK]
                if self.kind == "flat":
                    # Pre-filter: a candidate whose float32 score is below the k-th one by more than 3E
                    # is, exactly, at least E below k others, so it cannot reach the top k. FAISS
                    # returns scores in decreasing order, so the survivors are a prefix of each row.
                    chunk32 = s32_t[start : start + _RERANK_CHUNK]
                    floor = chunk32[:, k_eff - 1] - 3.0 * bound[rows]
                    keep = chunk32 >= floor.unsqueeze(1)
                    width = int(keep.sum(1).max())
                    cand, keep = cand[:, :width], keep[:, :width]
                else:
                    keep = torch.ones_like(cand, dtype=torch.bool)
                # Candidates in document order, deduplicated, so the stable sort breaks ties by position.
                cand, order = torch.sort(cand, dim=1, stable=True)
                keep = keep.gather(1, order)
                scores, ip = self._rerank(q64[rows], cand)
                top, order, ip = rank_candidates(scores, ip, cand, keep, k_eff)
                out_scores[rows] = top
                out_pos[rows] = cand.gather(1, order)
                if self.kind == "flat" and fetch < n_docs:
                    # Certificate with a margin of E: a document FAISS did not return is, exactly, at
                    # most last32 + E, i.e. at least E below the k-th candidate.
                    kth_ip = torch.topk(ip, k_eff, dim=1).values[:, -1]
                    last32 = s32_t[start : start + _RERANK_CHUNK, -1]
                    ok = kth_ip > last32 + 2.0 * bound[rows]
                    uncertified.append(rows[~ok])
            pending = torch.cat(uncertified) if uncertified else pending[:0]
            fetch = min(n_docs, 2 * fetch)
        return out_scores, out_pos

    def search(
        self,
        model: Any,
        query_texts: Sequence[str] | str,
        k: int = 10,
        *,
        allow_model_mismatch: bool = False,
        relation: str = "similar",
        radius_weight: float | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Embed ``query_texts`` with the query prefix and return ``(doc_id, score)`` lists, best first.

        ``model`` must be the one the index was built with (same fingerprint: weights, settings, curvature);
        ``allow_model_mismatch=True`` searches with another model of the same dimension and curvature anyway.
        ``relation``: ``similar`` (the model's similarity), ``broader`` or ``narrower`` (see
        :meth:`search_embeddings`; ``radius_weight`` default :data:`DEFAULT_RADIUS_WEIGHT`). A model with a
        hierarchy channel (its fingerprint is its similarity channel's, so an index built with the model
        alone serves it) ranks ``broader`` / ``narrower`` by the two channels, H applied to the stored
        vectors; a taxonomy attached to the index ranks them by graph-kNN, mixed with H where the model has
        one (:func:`lorentz_rag.search.relation.relation_route`; both exact over every stored document).
        """
        self._check_model(model, allow_model_mismatch=allow_model_mismatch)
        channel = getattr(model, "hierarchy_channel", None)
        # The taxonomy attached to the index, else the one the model carries.
        graph = self.taxonomy.graph if self.taxonomy is not None else getattr(model, "concept_graph", None)
        route = relation_route(
            relation, channel=channel, graph=graph, radius_weight=radius_weight, where="the index"
        )
        texts = [query_texts] if isinstance(query_texts, str) else list(query_texts)
        emb = check_finite_embeddings(model.encode(texts, prompt_type="query"), texts, "queries")
        if route in ("graph", "channel"):
            scores, positions = exact_relation_search(
                emb,
                self.stored_embeddings,
                len(self),
                k,
                relation,
                similarity=self.similarity,
                curvature=self.curvature,
                channel=channel,
                route=route,
                graph=graph,
                links=self._links(graph) if route == "graph" else None,
            )
        else:
            weight = DEFAULT_RADIUS_WEIGHT if radius_weight is None else radius_weight
            scores, positions = self.search_embeddings(emb, k, relation=relation, radius_weight=weight)
        return [
            [(self.doc_ids[p], s) for p, s in zip(pos_row, score_row)]
            for pos_row, score_row in zip(positions.tolist(), scores.tolist())
        ]

    def _links(self, graph: Any) -> Any:
        """The documents' concept links: the attachment's, or (a model's own taxonomy) computed once."""
        if self.taxonomy is not None and graph is self.taxonomy.graph:
            return self.taxonomy.links
        return graph.cached_links(self.doc_ids, None, self.stored_embeddings)

    def stored_embeddings(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Documents ``start:stop`` as the model's embeddings ``[n, dim]`` (float32), read back from the index
        (the stored form's first ``dim`` numbers: the unit vector, the lifted point, or ``x``)."""
        stop = len(self) if stop is None else min(stop, len(self))
        if stop <= start:
            return torch.empty(0, self.dim)
        return torch.from_numpy(self.faiss_index.reconstruct_n(start, stop - start))[:, : self.dim]

    def _check_model(self, model: Any, *, allow_model_mismatch: bool = False) -> None:
        check_model_matches(
            model,
            dim=self.dim,
            similarity=self.similarity,
            curvature=self.curvature,
            fingerprint=self.model_fingerprint,
            built_with=self.model_path,
            allow_model_mismatch=allow_model_mismatch,
        )

    # --- persistence ------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``faiss.index``, ``doc_ids.json`` and ``index.json`` (settings, model path and fingerprint)
        to folder ``path`` atomically: into a folder beside it, then renamed over it, so a crash or a full disk
        leaves the previous index (or none) in place, never a mix."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            with names_path(target):  # a full disk names the index folder
                self._write_files(staging)
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                os.replace(staging, target)
                shutil.rmtree(old)
            else:
                os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _write_files(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        # FAISS writes through Python's file: its own writer ignores an error at close (a full disk leaves a
        # truncated faiss.index and only a message on stderr); Python raises OSError at write and close.
        with open(folder / _FAISS_FILE, "wb") as handle:
            writer = _faiss().PyCallbackIOWriter(handle.write)
            _faiss().write_index(self.faiss_index, writer)
            del writer
        (folder / _IDS_FILE).write_text(json.dumps(self.doc_ids, ensure_ascii=False), encoding="utf-8")
        meta = {
            "format_version": _FORMAT_VERSION,
            "kind": self.kind,
            "similarity": self.similarity,
            "curvature": self.curvature,
            "dim": self.dim,
            "n_docs": len(self),
            "max_norm": self.max_norm,
            "ef_search": self.ef_search,
            "model_path": self.model_path,
            "model_fingerprint": self.model_fingerprint,
        }
        (folder / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for name in (_FAISS_FILE, _IDS_FILE, _META_FILE):
            with open(folder / name, "rb") as handle:
                os.fsync(handle.fileno())
        if self.taxonomy is not None:
            self.taxonomy.write(folder)  # taxonomy.json + taxonomy.safetensors, fsynced

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        """Read an index written by :meth:`save`."""
        folder = Path(path)
        for name in (_META_FILE, _IDS_FILE, _FAISS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: missing (not a lorentz-rag index folder?)")
        meta = _read_json(folder / _META_FILE, dict)
        if meta.get("format_version") != _FORMAT_VERSION:
            raise IndexFormatError(
                f"{folder / _META_FILE}: unsupported format_version {meta.get('format_version')!r}"
            )
        doc_ids = _read_json(folder / _IDS_FILE, list)
        try:
            index = _faiss().read_index(str(folder / _FAISS_FILE))
        except RuntimeError as error:
            raise IndexFormatError(
                f"{folder / _FAISS_FILE}: not a readable FAISS index (truncated?): {error}"
            ) from None
        if index.ntotal != len(doc_ids):
            raise IndexFormatError(
                f"{folder / _FAISS_FILE} holds {index.ntotal} vectors but {folder / _IDS_FILE} lists {len(doc_ids)} ids"
            )
        index = cls(
            doc_ids,
            index,
            similarity=meta["similarity"],
            curvature=meta["curvature"],
            kind=meta["kind"],
            max_norm=meta["max_norm"],
            ef_search=meta["ef_search"],
            model_path=meta.get("model_path"),
            model_fingerprint=meta.get("model_fingerprint"),
        )
        index.taxonomy = read_attached_taxonomy(folder, len(doc_ids))
        return index


def _check_similarity(similarity: str, c: float | None) -> None:
    """:func:`lorentz_rag.geometry.similarity.check_kind`, and a hyperbolic index needs a positive curvature."""
    similarity_fns.check_kind(similarity, c)
    if similarity in HYPERBOLIC and not c > 0:  # type: ignore[operator]
        raise ValueError(f"similarity {similarity!r} needs a curvature c > 0, got {c}")


def candidate_scores(q: Tensor, x: Tensor, similarity: str, curvature: float | None) -> tuple[Tensor, Tensor]:
    """float64 scores of stored-form queries ``q`` ``[n, D']`` against candidates ``x`` ``[n, f, D']``.

    Returns (scores ``[n, f]``, certification scores ``[n, f]``: ``<q, x>_L``, cosine, or for the Euclidean
    distance the searched inner product ``(q, 1).(x, -|x|^2/2)``). Both come from one element-wise (not
    matrix-product) evaluation, so identical points get bit-identical scores. Hyperbolic: ``d`` from the
    space coordinates (:func:`lorentz.geodesic_distance`), then ``<q, x>_L = -cosh(sqrt(c) d) / c`` and
    ``<q, x>_L + 1/c = -2 sinh^2(sqrt(c) d / 2) / c`` (exact identities on the hyperboloid, and without the
    inner-product form's cancellation). The one re-rank of :class:`VectorIndex` and ``lorentz_rag.stores``.
    """
    qq = q.unsqueeze(1)
    if similarity == "euclidean":
        # Stored forms (v, -|v|^2/2): the score is the distance of the first D coordinates (element-wise,
        # so identical points score exactly 0), the certificate the searched inner product (q, 1).(x, -|x|^2/2).
        q_, x_ = qq[..., :-1], x[..., :-1]
        return -(q_ - x_).pow(2).sum(-1).sqrt(), (q_ * x_).sum(-1) + x[..., -1]
    if similarity not in HYPERBOLIC:
        cos = (qq * torch.nn.functional.normalize(x, dim=-1)).sum(-1)
        return cos, cos
    c = float(curvature)  # type: ignore[arg-type]
    sc = math.sqrt(c)
    d = lorentz.geodesic_distance(qq, x, c)  # reads space coordinates only
    ip = -torch.cosh(sc * d) / c
    if similarity == "geodesic":
        return -d, ip
    return -2.0 * torch.sinh(sc * d / 2).pow(2) / c, ip


def rank_candidates(
    scores: Tensor, ip: Tensor, keys: Tensor, keep: Tensor, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The top ``k`` of re-scored candidates: scores and certification scores ``[n, f]`` of candidates
    whose order keys ``keys`` ``[n, f]`` (document positions) are sorted ascending per row; ``keep`` ``[n, f]``
    marks those to consider. A repeated key is a duplicate and counts once; ties go to the smaller key.

    Returns (top scores ``[n, k]``, their columns in the candidate row ``[n, k]``, ``ip`` with the
    candidates not considered set to ``-inf``). Dropped places (fewer than ``k`` valid) score ``-inf``.
    """
    invalid = ~keep
    invalid[:, 1:] |= keys[:, 1:] == keys[:, :-1]
    scores = scores.masked_fill(invalid, -math.inf)
    ip = ip.masked_fill(invalid, -math.inf)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), order, ip


def check_model_matches(
    model: Any,
    *,
    dim: int,
    similarity: str,
    curvature: float | None,
    fingerprint: str | None,
    built_with: str | None = None,
    what: str = "index",
    allow_model_mismatch: bool = False,
) -> None:
    """Refuse a ``model`` other than the one an index (or store) was built with: its dimension, similarity
    and curvature must match, and its fingerprint (unless ``allow_model_mismatch`` or none was recorded);
    :class:`IndexModelMismatchError` names ``built_with`` (the model path recorded)."""
    if model.embedding_dim != dim:
        raise ValueError(f"the model embeds into {model.embedding_dim} dimensions, the {what} holds {dim}")
    hyperbolic = similarity in HYPERBOLIC
    if bool(model.is_hyperbolic) != hyperbolic or (
        not hyperbolic and model.settings.similarity != similarity
    ):
        raise ValueError(
            f"the {what} was built for similarity {similarity!r}, the model uses {model.settings.similarity!r}"
        )
    if hyperbolic:
        c = float(model.curvature().detach())
        if not math.isclose(c, curvature, rel_tol=1e-6):  # type: ignore[arg-type]
            raise ValueError(f"the model's curvature c = {c} differs from the {what}'s c = {curvature}")
    if allow_model_mismatch or fingerprint is None or not hasattr(model, "fingerprint"):
        return
    found = model.fingerprint()
    if found != fingerprint:
        built = f" ({built_with})" if built_with else ""
        raise IndexModelMismatchError(
            f"the {what} was built with another model{built}: its fingerprint is {fingerprint[:12]}, "
            f"this model's is {found[:12]} (other weights or settings; was the model folder overwritten?). "
            f"Rankings would silently differ: rebuild the {what} with this model, or pass "
            "--allow-model-mismatch (allow_model_mismatch=True) to search anyway"
        )


def _read_json(file: Path, kind: type) -> Any:
    """A JSON file of an index folder; a truncated or damaged file is an :class:`IndexFormatError` naming it."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise IndexFormatError(f"{file}: not valid JSON (truncated or damaged?): {error}") from None
    if not isinstance(value, kind):
        raise IndexFormatError(f"{file}: expected a JSON {kind.__name__}, found {type(value).__name__}")
    return value


def stored_form(x: Tensor, similarity: str, c: float | None) -> Tensor:
    """float64 points as the index scores them: ``[n, D]`` -> ``[n, D]``.

    Hyperbolic: the time coordinate recomputed from the space part (:func:`lorentz.lift`), so the inner
    product agrees with the geodesic distance, which reads only space coordinates. Cosine: unit vectors.
    Euclidean distance: ``(x, -|x|^2 / 2)`` (``[n, D+1]``; the module docstring says why).
    """
    x = x.detach().to(torch.float64)
    if similarity == "euclidean":
        return torch.cat([x, -0.5 * x.pow(2).sum(-1, keepdim=True)], dim=-1)
    if similarity in HYPERBOLIC:
        return lorentz.lift(x[..., 1:], c)  # type: ignore[arg-type]
    return torch.nn.functional.normalize(x, dim=-1)


def search_form(q64: Tensor, similarity: str) -> Tensor:
    """The FAISS query for a query's stored form ``[n, D']``: ``ip_query`` on the hyperboloid (the inner
    product of the search is then ``<q, x>_L``), ``(q, 1)`` for the Euclidean distance, itself for cosine."""
    if similarity in HYPERBOLIC:
        return lorentz.ip_query(q64)
    if similarity == "euclidean":
        return torch.cat([q64[:, :-1], torch.ones_like(q64[:, -1:])], dim=1)
    return q64


def build_index_command(
    model_path: str,
    corpus: str,
    out: str,
    *,
    kind: str = "flat",
    batch_size: int = 64,
    hnsw_m: int = 32,
    ef_search: int = 128,
    shard_size: int = DEFAULT_SHARD_SIZE,
    resumable: bool = False,
    max_new_shards: int | None = None,
    overwrite: bool = False,
    taxonomy: str | None = None,
    graph_settings: str | None = None,
) -> VectorIndex | None:
    """``lorentz-rag index build``: embed a corpus with the model folder and save the index to ``out``.

    An ``out`` that already holds an index (or anything else) is replaced only with ``overwrite``; without it
    :class:`IndexNotEmptyError` says so before the model loads.

    Under ``torchrun --nproc-per-node=N`` every rank encodes its shards of the corpus and rank 0 writes the
    index (the other ranks return ``None``); the index equals one process's (:mod:`lorentz_rag.eval.encode`).
    Shards of ``shard_size`` documents are kept in ``out.encoding`` beside the index until it is written,
    under ``torchrun`` always and in one process with ``resumable``, so an interrupted build resumes;
    ``max_new_shards`` stops each process after that many new shards: a planned stop, which prints how many
    shards remain and returns ``None`` (exit status 0; :func:`encode_corpus` raises
    :class:`EncodingIncompleteError`). Ctrl-C ends it with one line saying what was kept and how to resume
    (:func:`lorentz_rag.errors.on_interrupt`); an empty corpus is refused before the model is loaded.
    """
    with command_process_group() as info:
        # All ranks of one torchrun job are one build: rank 0 holds the folder's lock for all of them.
        lock = (
            exclusive_lock(sibling_lock_path(out), f"index folder {out}")
            if info.rank == 0
            else contextlib.nullcontext()
        )
        with lock:
            if not overwrite:
                _check_replaceable(Path(out))  # every rank: all of them stop, none waits at the barrier
            barrier()
            work = work_dir_for(out) if (is_distributed() or resumable) else None
            # --taxonomy: read (and its settings checked) before any encoding; attached by rank 0.
            attach = read_taxonomy_request(taxonomy, graph_settings)
            options = {"ef_search": ef_search} | ({"hnsw_m": hnsw_m} if kind == "hnsw" else {})
            try:
                with on_interrupt(lambda: _interrupted_build(out, work)):
                    return _build_index(
                        model_path,
                        corpus,
                        out,
                        kind=kind,
                        batch_size=batch_size,
                        index_options=options,
                        shard_size=shard_size,
                        work=work,
                        max_new_shards=max_new_shards,
                        attach=attach,
                    )
            except EncodingIncompleteError as stop:
                if info.rank == 0:
                    print(
                        f"stopped as asked (--max-new-shards {max_new_shards}): {stop.remaining} of {stop.total} "
                        f"shards remain, {stop.total - stop.remaining} are kept in {stop.work_dir}; run the same "
                        "command again to continue",
                        flush=True,
                    )
                return None


def _check_replaceable(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a folder that is not empty: an index (how many documents it holds)
    or anything else. ``--overwrite`` replaces it."""
    if not out.exists():
        return
    if not out.is_dir():
        raise IndexNotEmptyError(f"--out {out} is a file, not an index folder; choose another --out")
    if not any(out.iterdir()):
        return
    again = "pass --overwrite to replace it (documents are appended only to a --store, with 'lorentz-rag index add')"
    if not (out / _META_FILE).is_file():
        raise IndexNotEmptyError(
            f"index folder {out} is not empty and holds no index ({_META_FILE}); {again}"
        )
    try:
        held = f"{int(json.loads((out / _META_FILE).read_text(encoding='utf-8'))['n_docs'])} documents"
    except (OSError, ValueError, KeyError, TypeError):
        held = "an index"
    raise IndexNotEmptyError(f"index folder {out} already holds {held}; {again}")


def _interrupted_build(out: str, work: Path | None) -> str:
    """The line of a Ctrl-C during ``index build``: what is kept on disk and how to resume."""
    if work is None:
        return (
            f"index build of {out} stopped, nothing kept (the index folder is written only at the end); rerun "
            "with --resumable to keep finished shards across interruptions"
        )
    return (
        f"index build of {out} stopped; {finished_shards(work)} finished shard(s) are kept in {work}: run the "
        "same command again (with --resumable) to continue from them"
    )


def _build_index(
    model_path: str,
    corpus: str,
    out: str,
    *,
    kind: str,
    batch_size: int,
    index_options: dict[str, Any],
    shard_size: int,
    work: Path | None,
    max_new_shards: int | None,
    attach: Any = None,
) -> VectorIndex | None:
    info = world_info()
    ids, texts = read_corpus(corpus)
    if not texts:
        raise ValueError(f"corpus {corpus} has no documents: nothing to index")
    model = load_model(model_path)
    say = print if info.rank == 0 else None
    start = time.perf_counter()
    emb = encode_corpus(
        model,
        texts,
        ids=ids,
        batch_size=batch_size,
        shard_size=shard_size,
        work_dir=work,
        max_new_shards=max_new_shards,
        echo=say,
    )
    seconds = time.perf_counter() - start
    barrier()  # every rank has read the shards: rank 0 may remove them once the index is saved
    if info.rank != 0:
        return None
    print(
        f"encoded {len(texts)} documents in {seconds:.2f} s ({len(texts) / max(seconds, 1e-9):.1f} documents/s, "
        f"{info.world_size} process(es))"
    )
    index = VectorIndex.from_model_embeddings(
        model, ids, emb, kind=kind, model_path=str(Path(model_path).resolve()), **index_options
    )
    if attach is not None:
        attach_taxonomy(index, model, attach.taxonomy, texts, attach.settings, source=attach.source)
        print(index.taxonomy.summary())  # type: ignore[union-attr]
    elif getattr(model, "concept_graph", None) is not None:
        # The model carries the taxonomy it was taught (the taxonomy recipe): attach it, already embedded.
        attach_taxonomy(index, model, model.concept_graph, texts)
        print(f"the model's own {index.taxonomy.summary()}")  # type: ignore[union-attr]
    index.save(out)
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"indexed {len(index)} documents ({index.kind}, {index.similarity}) from {corpus} -> {out}")
    return index


def search_command(
    index_dir: str,
    queries: Sequence[str],
    k: int = 10,
    model_path: str | None = None,
    *,
    allow_model_mismatch: bool = False,
    relation: str = "similar",
    radius_weight: float | None = None,
) -> list:
    """``lorentz-rag search``: load the index and its model (or ``model_path``) and print the top ``k``; a model
    other than the one the index was built with is refused unless ``allow_model_mismatch``. ``relation``:
    ``similar``, ``broader`` or ``narrower`` (:meth:`VectorIndex.search`); ``radius_weight`` (default
    :data:`DEFAULT_RADIUS_WEIGHT`) is refused on an index with a taxonomy attached, whose relation search is
    graph-kNN and has no radius term."""
    index = VectorIndex.load(index_dir)
    if radius_weight is not None and relation != "similar" and index.taxonomy is not None:
        raise refuse_radius_weight(index_dir)
    path = model_path or index.model_path
    if not path:
        raise ValueError(f"{index_dir}: the index records no model path; pass --model PATH")
    model = load_model(path)
    results = index.search(
        model,
        list(queries),
        k,
        allow_model_mismatch=allow_model_mismatch,
        relation=relation,
        radius_weight=radius_weight,
    )
    print_hits(queries, results)
    return results


def print_hits(queries: Sequence[str], results: Sequence[Sequence[tuple[str, float]]]) -> None:
    """What ``lorentz-rag search`` prints: each query, then its ``(doc_id, score)`` hits ranked."""
    for query, hits in zip(queries, results):
        print(f"query: {query}")
        for rank, (doc_id, score) in enumerate(hits, start=1):
            print(f"  {rank:>3}. {score:+.6f}  {doc_id}")
