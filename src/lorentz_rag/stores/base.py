"""The vector-store seam: documents (id, text, metadata, vector) in a database, searched exactly or with an
ANN index, and re-ranked in float64 by the model's own similarity.

A backend (:mod:`lorentz_rag.stores.lancedb`, :mod:`lorentz_rag.stores.qdrant`) implements four primitives:
``_put`` (upsert rows), ``_remove`` (delete ids), ``_nearest`` (the stored vectors nearest to float32
queries in squared L2, brute force or through its ANN index) and ``_count``; everything else lives here.

Search (:meth:`VectorStore.search_embeddings`) follows :meth:`lorentz_rag.eval.index.VectorIndex.search_embeddings`:
it over-fetches ``max(2k, k + 16)`` candidates (ANN: ``oversample`` times ``k``), re-scores them with
:func:`~lorentz_rag.eval.index.candidate_scores` and ranks them with
:func:`~lorentz_rag.eval.index.rank_candidates` (the same code as ``VectorIndex``). Brute-force results are
certified as there: the store's float32 squared distance ``|a - b|^2`` gives the certification score
``s = (|a|^2 + B - |a - b|^2) / 2`` (:attr:`StoreLayout.offset`) within ``E = gamma (|a| + R)^2``; a
document the store did not return scores at most ``s_last + E``, so if the ``k``-th float64 score is not
above that by another ``E`` the fetch doubles. So a flat search equals ``VectorIndex``'s exact search. ANN
results are re-ranked the same way without a certificate. Ties go to the document added first.

``relation="broader"`` / ``"narrower"`` ranks by :mod:`lorentz_rag.geometry.relation`'s score, as
:func:`lorentz_rag.eval.relation_search.relation_search` does for a FAISS folder: the store returns the
documents nearest the query, they are scored in float64 from their stored float32 points, and (brute force)
the fetch doubles until no document left out can beat the ``k``-th. A document left out has a certification
score of at most ``s_last + E``, so it lies at least as far from the query as that score says, and
:func:`~lorentz_rag.geometry.relation.relation_upper_bound` bounds its relation score from that distance and
the store's radius bound. So a flat relation search equals the FAISS folder's (ties to the document added
first); through an ANN index it is approximate (one round of candidates, no certificate).

A backend that cannot read its data (damaged files), reach its server, or open a folder another process
holds raises one of :class:`StoreUnreadableError`, :class:`StoreUnreachableError` or
:class:`lorentz_rag.folder_lock.FolderInUseError`, each naming the store and what to do.
"""

from __future__ import annotations

import abc
import json
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lorentz_rag.eval.encode import encode_corpus
from lorentz_rag.eval.index import candidate_scores, check_model_matches, rank_candidates
from lorentz_rag.geometry.relation import (
    DEFAULT_RADIUS_WEIGHT,
    check_relation,
    radius,
    relation_score,
    relation_upper_bound,
)
from lorentz_rag.models.base import check_finite_embeddings
from lorentz_rag.search.relation import exact_relation_search, relation_route
from lorentz_rag.stores.layout import StoreLayout

__all__ = [
    "DEFAULT_COLLECTION",
    "Candidates",
    "StoreHit",
    "StoreUnreachableError",
    "StoreUnreadableError",
    "VectorStore",
]

DEFAULT_COLLECTION = "lorentz_rag"
# Unit roundoff of float32.
_U32 = 2.0**-24
# Most floats a store is asked to return at once (candidates x vector width, over a batch of queries): 256 MiB.
_FETCH_BUDGET = 2**26


class StoreUnreadableError(ValueError):
    """A table or collection whose files cannot be read (deleted, truncated or damaged); the message names
    the store and says how to recover."""


class StoreUnreachableError(ConnectionError):
    """A store's server does not answer; the message names its URL."""


@dataclass(frozen=True)
class StoreHit:
    """One search result: the document's id, float64 score (higher = closer, as ``VectorIndex``), text and
    metadata."""

    id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Candidates:
    """What a backend returns for one query: ``m`` documents nearest first, with their squared L2
    distances ``[m]`` (float64), stored vectors ``[m, width]`` (float32), insertion order keys ``seq``
    ``[m]`` (int64), texts and metadata (JSON strings)."""

    ids: list[str]
    dist2: np.ndarray
    vectors: np.ndarray
    seq: np.ndarray
    texts: list[str]
    metadata: list[str]


class VectorStore(abc.ABC):
    """Documents in a database table (LanceDB) or collection (Qdrant) named ``name``, laid out for one
    model (:class:`StoreLayout`, recorded in the table or collection metadata)."""

    backend = "?"

    def __init__(self, layout: StoreLayout, name: str, location: str) -> None:
        self.layout = layout
        self.name = name
        self.location = location
        # The taxonomy attached beside the store (lorentz_rag.stores.taxonomy.StoreTaxonomy) or None, read when a
        # relation search needs it; open_store points it at the store's attachment.
        self.taxonomy_reader: Callable[[], Any] = lambda: None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r}, name={self.name!r}, {len(self)} documents)"

    # --- backend primitives -----------------------------------------------------------------------------

    @abc.abstractmethod
    def _put(
        self, ids: list[str], seq: np.ndarray, vectors: np.ndarray, texts: list[str], metadata: list[str]
    ) -> None:
        """Insert or replace (by id) ``n`` documents: vectors ``[n, width]`` float32."""

    @abc.abstractmethod
    def _remove(self, ids: list[str]) -> None:
        """Delete the documents with these ids (absent ids are ignored)."""

    @abc.abstractmethod
    def _nearest(self, queries: np.ndarray, fetch: int, exact: bool) -> list[Candidates]:
        """The ``fetch`` stored vectors nearest each query ``[n, width]`` (squared L2), by brute force if
        ``exact`` or else through the ANN index (if any)."""

    @abc.abstractmethod
    def _count(self) -> int:
        """The number of documents."""

    def has_ann_index(self) -> bool:
        """Whether a search with ``exact=False`` goes through an approximate index."""
        return False

    @classmethod
    def build_options(cls, kind: str) -> dict[str, Any]:
        """Options for :meth:`create` that ``index build --kind`` implies (none by default)."""
        return {}

    def build_index(self, kind: str) -> None:  # noqa: B027 - a backend without ANN kinds builds nothing
        """Build the ANN index ``kind`` once the documents are in (``flat``: nothing to build)."""

    def close(self) -> None:  # noqa: B027 - optional for backends (LanceDB holds no connection to close)
        """Release the connection (a no-op where there is none)."""

    def __len__(self) -> int:
        return self._count()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------------------

    def add_embeddings(
        self,
        ids: Sequence[str],
        embeddings: Tensor | np.ndarray,
        texts: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Add (or replace, by id) documents with their embeddings ``[n, D]`` from the store's model."""
        ids = [str(i) for i in ids]
        emb = torch.as_tensor(embeddings)
        if emb.ndim != 2 or emb.shape[1] != self.layout.dim:
            raise ValueError(f"embeddings must be [n, {self.layout.dim}], got shape {tuple(emb.shape)}")
        for name, values in (("embeddings", emb), ("texts", texts), ("metadatas", metadatas)):
            if values is not None and len(values) != len(ids):
                raise ValueError(f"{len(values)} {name} but {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise ValueError("document ids must be unique within one call")
        if not ids:
            return
        check_finite_embeddings(emb, texts, "documents")
        vectors = self.layout.document_vectors(ids, emb)
        # Insertion order keys (ties in search go to the earlier document): nanoseconds since the epoch.
        seq = time.time_ns() + np.arange(len(ids), dtype=np.int64)
        texts_list = [""] * len(ids) if texts is None else [str(t) for t in texts]
        meta = [json.dumps(dict(m or {}), ensure_ascii=False) for m in (metadatas or [None] * len(ids))]
        self._put(ids, seq, vectors, texts_list, meta)

    def add_texts(
        self,
        model: Any,
        texts: Sequence[str],
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        batch_size: int = 64,
        allow_model_mismatch: bool = False,
    ) -> list[str]:
        """Embed ``texts`` with the document prefix of ``model`` (the store's model) and add them; ``ids``
        default to fresh UUIDs. Returns the ids."""
        self.check_model(model, allow_model_mismatch=allow_model_mismatch)
        texts = list(texts)
        ids = [_new_id() for _ in texts] if ids is None else [str(i) for i in ids]
        emb = encode_corpus(model, texts, batch_size=batch_size)
        self.add_embeddings(ids, emb, texts, metadatas)
        return ids

    def delete(self, ids: Sequence[str]) -> None:
        """Delete documents by id (ids not in the store are ignored)."""
        ids = [str(i) for i in ids]
        if ids:
            self._remove(ids)

    # --- searching --------------------------------------------------------------------------------------

    def check_model(self, model: Any, *, allow_model_mismatch: bool = False) -> None:
        """Refuse a model other than the store's (as ``VectorIndex``: dimension, similarity, curvature,
        fingerprint)."""
        check_model_matches(
            model,
            dim=self.layout.dim,
            similarity=self.layout.similarity,
            curvature=self.layout.curvature,
            fingerprint=self.layout.model_fingerprint,
            built_with=self.layout.model_path,
            what=f"store {self.location} ({self.name})",
            allow_model_mismatch=allow_model_mismatch,
        )

    def search(
        self,
        model: Any,
        query_texts: Sequence[str] | str,
        k: int = 10,
        *,
        exact: bool = False,
        oversample: int = 4,
        allow_model_mismatch: bool = False,
        relation: str = "similar",
        radius_weight: float | None = None,
    ) -> list[list[StoreHit]]:
        """Embed ``query_texts`` with the query prefix and return the top ``k`` of each, best first.
        ``relation``: ``similar`` (the model's similarity), ``broader`` or ``narrower`` (see
        :meth:`search_embeddings`; ``radius_weight`` default :data:`DEFAULT_RADIUS_WEIGHT`). A taxonomy attached
        to the store (``index build --taxonomy``, or the one the model carries) ranks ``broader`` /
        ``narrower`` by graph-kNN, mixed with the model's hierarchy channel where it has one; without one a
        hierarchy channel ranks them by the two channels (:func:`lorentz_rag.search.relation.relation_route`).
        Both are exact over every stored document in float64 (H is applied to the stored vectors, so a store
        built with the model alone serves it; ``exact`` and ``oversample`` play no part)."""
        self.check_model(model, allow_model_mismatch=allow_model_mismatch)
        channel = getattr(model, "hierarchy_channel", None)
        attached = self.taxonomy_reader() if relation != "similar" else None
        # The taxonomy attached to the store, else the one the model carries.
        graph = attached.graph if attached is not None else getattr(model, "concept_graph", None)
        route = relation_route(
            relation,
            channel=channel,
            graph=graph,
            radius_weight=radius_weight,
            where=f"store {self.location} ({self.name})",
        )
        if route not in ("graph", "channel"):
            radius_weight = DEFAULT_RADIUS_WEIGHT if radius_weight is None else radius_weight
            check_relation(relation, self.layout.similarity, radius_weight)  # before any encoding
        texts = [query_texts] if isinstance(query_texts, str) else list(query_texts)
        emb = check_finite_embeddings(model.encode(texts, prompt_type="query"), texts, "queries")
        if route in ("graph", "channel"):
            ids, vectors, doc_texts, metadata = self.all_documents()
            if not ids:
                return [[] for _ in texts]
            docs = torch.from_numpy(vectors)
            links = None
            if route == "graph":
                # The attachment's links, or (the model's own taxonomy) links computed once per document list.
                links = (
                    attached.links_for(ids)
                    if attached is not None
                    else graph.cached_links(ids, doc_texts, docs)
                )
            scores, positions = exact_relation_search(
                emb,
                lambda a, b: docs[a:b],
                len(ids),
                k,
                relation,
                similarity=self.layout.similarity,
                curvature=self.layout.curvature,
                channel=channel,
                route=route,
                graph=graph,
                links=links,
            )
            return [
                [StoreHit(ids[p], s, doc_texts[p], _metadata(metadata[p])) for p, s in zip(pos, sc)]
                for pos, sc in zip(positions.tolist(), scores.tolist())
            ]
        return self.search_embeddings(
            emb, k, exact=exact, oversample=oversample, relation=relation, radius_weight=radius_weight
        )

    def all_documents(self) -> tuple[list[str], np.ndarray, list[str], list[str]]:
        """Every stored document in insertion order: ids, points ``[n, D]`` (float32: the stored form's first
        ``D`` numbers, the model's embedding), texts and metadata (JSON strings)."""
        n = len(self)
        if n == 0:
            return [], np.zeros((0, self.layout.dim), dtype=np.float32), [], []
        # Brute force with fetch = n returns every document, whatever the query.
        cand = self._nearest(np.zeros((1, self.layout.width), dtype=np.float32), n, exact=True)[0]
        order = np.argsort(np.asarray(cand.seq, dtype=np.int64), kind="stable")
        vectors = np.asarray(cand.vectors, dtype=np.float32)[order, : self.layout.dim]
        return (
            [cand.ids[i] for i in order],
            vectors,
            [cand.texts[i] for i in order],
            [cand.metadata[i] for i in order],
        )

    def search_embeddings(
        self,
        queries: Tensor | np.ndarray,
        k: int,
        *,
        exact: bool = False,
        oversample: int = 4,
        relation: str = "similar",
        radius_weight: float = DEFAULT_RADIUS_WEIGHT,
    ) -> list[list[StoreHit]]:
        """Top-``k`` documents for query embeddings ``[n, D]``: ``exact=True`` (or a store without an ANN
        index) searches by brute force and certifies the result (module docstring); otherwise the ANN index
        returns ``max(oversample * k, k + 16)`` candidates, re-ranked in float64. ``relation="broader"`` /
        ``"narrower"`` ranks by :mod:`lorentz_rag.geometry.relation`'s score with ``radius_weight``, as
        :meth:`lorentz_rag.eval.index.VectorIndex.search_embeddings` does (refused for cosine)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        check_relation(relation, self.layout.similarity, radius_weight)
        q = torch.as_tensor(queries)
        if q.ndim == 1:
            q = q.unsqueeze(0)
        if q.ndim != 2 or q.shape[1] != self.layout.dim:
            raise ValueError(f"queries must be [n, {self.layout.dim}], got shape {tuple(q.shape)}")
        check_finite_embeddings(q, what="query embeddings")
        n_docs = len(self)
        results: list[list[StoreHit]] = [[] for _ in range(q.shape[0])]
        if q.shape[0] == 0 or n_docs == 0:
            return results
        certify = exact or not self.has_ann_index()
        k_eff = min(k, n_docs)
        q64, a32 = self.layout.query_forms(q)
        a_norm = torch.from_numpy(a32).to(torch.float64).norm(dim=-1)
        gamma = 2.0 * (self.layout.width + 4) * _U32
        bound = gamma * (a_norm + self.layout.norm_bound).pow(2) + 1e-12 * (1.0 + a_norm.pow(2))
        offset = a_norm.pow(2) + self.layout.offset
        if relation != "similar":
            # As relation_search: the candidates of a relation are not the nearest k, so fetch more.
            margin = max(4 * k_eff, k_eff + 64) if certify else max(oversample * k_eff, k_eff + 64)
            points = q64 if self.layout.is_hyperbolic else q.detach().to(torch.float64)
            r_q = radius(points, self.layout.similarity, self.layout.curvature)

            def rank(row: int, cand: Candidates) -> tuple[list[StoreHit], bool]:
                return self._rank_relation(
                    points[row], r_q[row], cand, k_eff, offset[row], bound[row], relation, radius_weight
                )

        else:
            margin = max(2 * k_eff, k_eff + 16) if certify else max(oversample * k_eff, k_eff + 16)

            def rank(row: int, cand: Candidates) -> tuple[list[StoreHit], bool]:
                return self._rank(q64[row], cand, k_eff, offset[row], bound[row], certify)

        fetch = min(n_docs, margin)
        pending = list(range(q.shape[0]))
        while pending:
            retry = []
            # Queries go to the store a few at a time, so that what it returns (fetch candidates per query,
            # with their vectors) stays within _FETCH_BUDGET floats however large fetch grows.
            step = max(1, _FETCH_BUDGET // (fetch * self.layout.width))
            for start in range(0, len(pending), step):
                rows = pending[start : start + step]
                for row, cand in zip(rows, self._nearest(a32[rows], fetch, exact=certify)):
                    results[row], certified = rank(row, cand)
                    if certify and not certified and fetch < n_docs:
                        retry.append(row)
            pending, fetch = retry, min(n_docs, 2 * fetch)
        return results

    def _max_document_radius(self) -> float:
        """A bound on every stored document's radius ``r`` (:func:`lorentz_rag.geometry.relation.radius`)
        from the norm bound ``R`` the store enforces: hyperbolic, ``|x|^2 = 1/c + 2 |x_s|^2 <= R^2`` and
        ``r = asinh(sqrt(c) |x_s|) / sqrt(c)``; Euclidean, ``r = |x| <= R``."""
        bound = self.layout.norm_bound
        if not self.layout.is_hyperbolic:
            return bound
        c = float(self.layout.curvature)  # type: ignore[arg-type]
        # 1e-6: the stored time coordinate is rounded to float32, so |x_s| may exceed the exact form a little.
        space = math.sqrt(max(0.0, bound**2 - 1.0 / c) / 2.0) * (1.0 + 1e-6)
        return math.asinh(math.sqrt(c) * space) / math.sqrt(c)

    def _min_distance_left_out(self, point: Tensor, ip_bound: float) -> float:
        """The smallest distance ``d`` (the relation scores' distance) that a document whose certification
        score is at most ``ip_bound`` can have from the query ``point``: hyperbolic, ``<q, x>_L = -cosh(sqrt(c)
        d) / c``; Euclidean, ``(q, 1).(x, -|x|^2/2) = (|q|^2 - |q - x|^2) / 2``."""
        if self.layout.is_hyperbolic:
            c = float(self.layout.curvature)  # type: ignore[arg-type]
            return math.acosh(max(1.0, -c * ip_bound)) / math.sqrt(c)
        return math.sqrt(max(0.0, float(point.pow(2).sum()) - 2.0 * ip_bound))

    def _rank_relation(
        self,
        point: Tensor,
        r_q: Tensor,
        cand: Candidates,
        k: int,
        offset: Tensor,
        bound: Tensor,
        relation: str,
        radius_weight: float,
    ) -> tuple[list[StoreHit], bool]:
        """The top ``k`` of one query's candidates by ``relation`` (query ``point`` ``[D]`` as the FAISS
        folder's relation search reads it, radius ``r_q``), and whether no document left out can beat the
        ``k``-th (module docstring)."""
        if not cand.ids:
            return [], True
        order = np.argsort(np.asarray(cand.seq, dtype=np.int64), kind="stable")
        # The document points: hyperbolic, the stored (re-lifted) x; Euclidean, x itself.
        x = torch.from_numpy(np.asarray(cand.vectors, dtype=np.float32)[order, : self.layout.dim])
        x = x.to(torch.float64)
        kind, c = self.layout.similarity, self.layout.curvature
        scores = relation_score(point.unsqueeze(0), x, relation, kind, c, radius_weight)
        top = torch.sort(scores, descending=True, stable=True).indices[:k]
        hits = [
            StoreHit(cand.ids[col], score, cand.texts[col], _metadata(cand.metadata[col]))
            for score, col in zip(scores[top].tolist(), order[top.numpy()].tolist())
        ]
        if len(hits) < k:
            return hits, False
        # A document left out has a certification score at most s_last + E (module docstring; a second E
        # of margin as the similarity search keeps), so it lies at least this far from the query.
        est_last = float((offset - float(np.max(cand.dist2))) / 2.0)
        distance = self._min_distance_left_out(point, est_last + 2.0 * float(bound))
        best_left_out = relation_upper_bound(
            torch.tensor(distance, dtype=torch.float64),
            r_q,
            self._max_document_radius(),
            relation,
            radius_weight,
        )
        kth = hits[-1].score
        return hits, bool(kth > float(best_left_out) + 1e-9 * (1.0 + abs(float(best_left_out))))

    def _rank(
        self, q64: Tensor, cand: Candidates, k: int, offset: Tensor, bound: Tensor, certify: bool
    ) -> tuple[list[StoreHit], bool]:
        """The top ``k`` of one query's candidates, and whether the brute-force result is certified."""
        if not cand.ids:
            return [], True
        est = (offset - torch.from_numpy(np.asarray(cand.dist2, dtype=np.float64))) / 2.0
        keep = torch.ones(len(cand.ids), dtype=torch.bool)
        if certify and len(cand.ids) > k:
            # A candidate more than 3E below the k-th estimate cannot reach the top k (VectorIndex's filter).
            keep = est >= torch.topk(est, k).values[-1] - 3.0 * bound
        order = torch.from_numpy(np.argsort(np.asarray(cand.seq, dtype=np.int64), kind="stable"))
        keys = torch.from_numpy(np.asarray(cand.seq, dtype=np.int64))[order]
        x = self.layout.rerank_form(cand.vectors[order.numpy()])
        scores, ip = candidate_scores(
            q64.unsqueeze(0), x.unsqueeze(0), self.layout.similarity, self.layout.curvature
        )
        top, cols, ip = rank_candidates(scores, ip, keys.unsqueeze(0), keep[order].unsqueeze(0), k)
        hits = []
        for score, col in zip(top[0].tolist(), order[cols[0]].tolist()):
            if score == float("-inf"):
                break
            hits.append(StoreHit(cand.ids[col], score, cand.texts[col], _metadata(cand.metadata[col])))
        valid = ip[0][ip[0] > float("-inf")]
        certified = len(valid) >= k and bool(torch.topk(valid, k).values[-1] > est.min() + 2.0 * bound)
        return hits, certified


def _metadata(text: str) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {"value": value}


def _new_id() -> str:
    return str(uuid.uuid4())
