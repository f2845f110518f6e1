"""Taxonomy-aware ``broader`` / ``narrower`` search that reads the hierarchy at search time ("graph-kNN").

No training: a model's own similarity finds the concepts of an attached taxonomy nearest to the query, and
the is-a graph says which of them (and which of their relatives) the query is asking for.

For one query ``q`` and relation ``broader`` (``narrower`` reads the graph the other way):

1. **neighbours**: the similarity of ``q`` to a concept is the largest of its similarities to the concept's
   texts (name, definition, synonyms; embedded as documents); the ``k`` most similar concepts are kept
   (ties to the earlier concept);
2. **votes**: neighbour ``c`` with similarity ``s_c`` votes ``exp((s_c - s_max) / T)`` for itself and each of
   its ancestors (``narrower``: descendants) ``a``, discounted by ``hop_discount ** hops(c, a)`` (the fewest
   is-a hops, itself 0, at most ``max_hops``); a concept's vote is the sum it receives. ``s_max`` (the best
   neighbour's similarity) only rescales a query's votes, which the standardisation below removes, and keeps
   ``exp`` finite for any similarity scale;
3. **graph score** of a document: its concepts' votes, weighted by its links. A document whose id or text *is*
   a concept (id equal, or text equal to the concept's name or document text) links to it with weight 1; any
   other document links to its ``links_per_document`` nearest concepts (similarity of the document's
   embedding to the concept's texts, kept with the index), weighted ``softmax(link similarity / T)``;
4. **mix**: ``score = (1 - w) z(similarity) + w z(graph)``, each standardised per query over every document
   (mean 0, standard deviation 1; a constant row is 0), ``w`` = ``graph_weight``; the top ``k`` of that over
   *every* document, in float64, stable (ties to the earlier document). Brute force, so exact by
   construction and deterministic.

A query whose neighbours vote for no indexed document has a zero graph row and is ranked by similarity.
:class:`GraphKnnSettings` holds ``k``, ``T``, the discount, ``w`` and the link count; its defaults were chosen
on the tune halves of the WordNet and ICD-10-CM sets with zero-shot all-MiniLM-L6-v2
(``benchmarks/tune_graph_knn.py``, ``benchmarks/results/graph_knn.md``).

With a hierarchy channel H (:mod:`lorentz_rag.models.hierarchy_channel`) the mixed score of step 4 is mixed once
more with H's relation score: ``(1 - v) z(step 4) + v z(H)``, ``v`` the channel's saved ``graph_weights`` entry
for the relation (0: graph-kNN alone).

A concept graph's files: :mod:`lorentz_rag.search.graph_files`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch import Tensor

from lorentz_rag.data.concepts import Taxonomy, hop_distances
from lorentz_rag.data.taxonomy import read_taxonomy
from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry import similarity as similarity_fns
from lorentz_rag.geometry.relation import mix_scores

__all__ = [
    "GRAPH_RELATIONS",
    "ConceptGraph",
    "DocumentLinks",
    "GraphKnnSettings",
    "check_graph_model",
    "graph_knn_search",
    "mix_scores",
    "refuse_radius_weight",
]

GRAPH_RELATIONS = ("broader", "narrower")


def refuse_radius_weight(where: str) -> ValueError:
    """The one-line error for ``--radius-weight`` on ``where`` (an index folder or a store), whose attached
    taxonomy ranks relations by graph-kNN, which has no radius term."""
    return ValueError(
        f"{where}: --radius-weight weighs the geometric relation score, but it has a taxonomy attached, "
        "which ranks --relation by graph-kNN (its settings are in taxonomy.json): drop --radius-weight"
    )


# Score cells ([query chunk, documents]) held at once.
_CELLS = 4_000_000
_DOC_BLOCK = 65_536


@dataclass(frozen=True)
class GraphKnnSettings:
    """The settings of graph-kNN search (module docstring). Defaults: chosen on the tune halves of WordNet and
    ICD-10-CM with zero-shot all-MiniLM-L6-v2 (``benchmarks/results/graph_knn.md``)."""

    k: int = 20  # neighbour concepts per query
    temperature: float = 0.1  # T of the votes exp(s / T) and of the free-text link weights
    hop_discount: float = 0.5  # a vote's factor per is-a hop
    graph_weight: float = 0.5  # w: (1 - w) z(similarity) + w z(graph)
    links_per_document: int = 3  # concepts a free-text document links to
    max_hops: int = 8  # votes reach ancestors / descendants this many hops away at most

    def __post_init__(self) -> None:
        def bad(field: str, value: Any, want: str) -> ValueError:
            return ValueError(f"graph-kNN setting {field} must be {want}, got {value!r}")

        for name in ("k", "links_per_document"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, value, "an integer >= 1")
        if isinstance(self.max_hops, bool) or not isinstance(self.max_hops, int) or self.max_hops < 0:
            raise bad("max_hops", self.max_hops, "an integer >= 0")
        checks = {
            "temperature": (lambda v: v > 0, "a number > 0"),
            "hop_discount": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
            "graph_weight": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        }
        for name, (ok, want) in checks.items():
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not ok(value)
            ):
                raise bad(name, value, want)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "graph-kNN settings") -> GraphKnnSettings:
        """Settings from a mapping (missing keys take the defaults); an unknown key is a one-line error."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}: expected a JSON object of settings, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown graph-kNN setting {unknown[0]!r}; known: {sorted(known)}")
        try:
            return cls(**dict(values))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GraphKnnSettings:
        """Settings from a JSON file (``save``'s output, or any subset of its keys)."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: cannot read graph-kNN settings: {error}") from None
        return cls.from_dict(values, where=str(path))


def _concept_texts(concept: Any) -> list[str]:
    """A concept's distinct non-empty texts: name, definition, synonyms."""
    texts = [concept.name, concept.definition, *concept.synonyms]
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def _pairwise64(q: Tensor, x: Tensor, similarity: str, curvature: float | None) -> Tensor:
    """float64 similarities ``[n, m]`` the model's way (hyperbolic points re-lifted from their space part)."""
    q, x = q.to(torch.float64), x.to(torch.float64)
    if similarity in similarity_fns.HYPERBOLIC_KINDS:
        q, x = lorentz.lift(q[..., 1:], curvature), lorentz.lift(x[..., 1:], curvature)  # type: ignore[arg-type]
    return similarity_fns.pairwise(q, x, similarity, curvature)


def _model_similarity(model: Any) -> tuple[str, float | None]:
    kind = model.settings.similarity
    c = float(model.curvature().detach()) if kind in similarity_fns.HYPERBOLIC_KINDS else None
    return kind, c


class ConceptGraph:
    """A taxonomy's concepts as graph-kNN reads them: ids, texts and their embeddings, and the is-a graph.

    Build with :meth:`from_taxonomy` (embeds every distinct concept text once, as a document).
    ``text_concept[i]`` is the concept of text ``i``; ``parents[j]`` the parent positions of concept ``j``.
    """

    def __init__(
        self,
        concept_ids: Sequence[str],
        names: Sequence[str],
        texts: Sequence[str],
        text_concept: Tensor,
        text_embeddings: Tensor,
        parents: Sequence[Sequence[int]],
        *,
        similarity: str,
        curvature: float | None,
        settings: GraphKnnSettings | None = None,
        definitions: Sequence[str] | None = None,
        synonyms: Sequence[Sequence[str]] | None = None,
        source: str | None = None,
    ) -> None:
        similarity_fns.check_kind(similarity, curvature)
        self.concept_ids = list(concept_ids)
        self.names = list(names)
        self.definitions = list(definitions) if definitions is not None else [""] * len(self.concept_ids)
        self.synonyms = [list(s) for s in synonyms] if synonyms is not None else [[]] * len(self.concept_ids)
        self.texts = list(texts)
        self.text_concept = torch.as_tensor(text_concept, dtype=torch.int64)
        self.text_embeddings = torch.as_tensor(text_embeddings).to(torch.float32)
        self.parents = [list(p) for p in parents]
        self.similarity = similarity
        self.curvature = float(curvature) if curvature is not None else None
        self.settings = settings or GraphKnnSettings()
        self.source = source
        n = len(self.concept_ids)
        if not (len(self.names) == len(self.parents) == len(self.definitions) == len(self.synonyms) == n):
            raise ValueError("concept ids, names, definitions, synonyms and parents must have one entry each")
        if len(self.texts) != len(self.text_concept) or len(self.texts) != len(self.text_embeddings):
            raise ValueError("concept texts, their concepts and their embeddings must have one row each")
        if len(self.text_concept) and (int(self.text_concept.min()) < 0 or int(self.text_concept.max()) >= n):
            raise ValueError("a concept text points at no concept")
        self.position = {c: i for i, c in enumerate(self.concept_ids)}
        self._closure: dict[tuple[str, int], sparse.csr_matrix] = {}

    def __len__(self) -> int:
        return len(self.concept_ids)

    @classmethod
    def from_taxonomy(
        cls,
        model: Any,
        taxonomy: Taxonomy | str | os.PathLike[str],
        settings: GraphKnnSettings | None = None,
        *,
        batch_size: int = 64,
        source: str | None = None,
        show_progress_bar: bool = False,
    ) -> ConceptGraph:
        """Embed the texts of ``taxonomy`` (a :class:`Taxonomy` or a file :func:`read_taxonomy` reads: JSONL,
        OBO, SKOS) with ``model`` (as documents, each distinct text once; ``show_progress_bar`` is passed to
        ``model.encode``)."""
        if not isinstance(taxonomy, Taxonomy):
            source = source or str(taxonomy)
            taxonomy = read_taxonomy(taxonomy)
        concepts = list(taxonomy)
        position = {c.id: i for i, c in enumerate(concepts)}
        texts, owner = [], []
        for i, concept in enumerate(concepts):
            for text in _concept_texts(concept):
                texts.append(text)
                owner.append(i)
        distinct = list(dict.fromkeys(texts))
        if distinct:
            extra = {"show_progress_bar": True} if show_progress_bar else {}
            emb = model.encode(distinct, "document", batch_size=batch_size, **extra).to(torch.float32)
        else:
            emb = torch.empty(0, model.embedding_dim)
        row = {t: i for i, t in enumerate(distinct)}
        text_emb = emb[torch.tensor([row[t] for t in texts], dtype=torch.int64)] if texts else emb
        kind, c = _model_similarity(model)
        return cls(
            [c_.id for c_ in concepts],
            [c_.name for c_ in concepts],
            texts,
            torch.tensor(owner, dtype=torch.int64),
            text_emb,
            [[position[p] for p in c_.parents] for c_ in concepts],
            similarity=kind,
            curvature=c,
            settings=settings,
            definitions=[c_.definition for c_ in concepts],
            synonyms=[list(c_.synonyms) for c_ in concepts],
            source=source,
        )

    # --- the graph ----------------------------------------------------------------------------------------

    def hop_table(self, relation: str, max_hops: int | None = None) -> list[dict[int, int]]:
        """Per concept: ``{relative: fewest hops}`` for ``broader`` (itself and its ancestors) or ``narrower``
        (itself and its descendants), within ``max_hops`` (default ``settings.max_hops``) hops; itself at 0."""
        _check_relation(relation)
        step = self.parents if relation == "broader" else self._children()
        limit = self.settings.max_hops if max_hops is None else max_hops
        return [{start: 0, **hop_distances(start, step.__getitem__, limit)} for start in range(len(self))]

    def _children(self) -> list[list[int]]:
        children: list[list[int]] = [[] for _ in range(len(self))]
        for child, parents in enumerate(self.parents):
            for parent in parents:
                children[parent].append(child)
        return children

    def propagation(
        self, relation: str, hop_discount: float, max_hops: int | None = None
    ) -> sparse.csr_matrix:
        """``P [C, C]``: ``P[c, a] = hop_discount ** hops(c, a)`` for ``a`` in ``c``'s hop table."""
        key = (relation, self.settings.max_hops if max_hops is None else max_hops)
        if key not in self._closure:
            rows, cols, hops = [], [], []
            for c, table in enumerate(self.hop_table(relation, key[1])):
                for a, h in sorted(table.items()):
                    rows.append(c)
                    cols.append(a)
                    hops.append(h)
            # Built from indptr, so the 0-hop entries (itself) stay stored; values per discount below.
            self._closure[key] = sparse.csr_matrix(
                (
                    np.asarray(hops, dtype=np.float64),
                    np.asarray(cols, dtype=np.int64),
                    np.searchsorted(np.asarray(rows, dtype=np.int64), np.arange(len(self) + 1)),
                ),
                shape=(len(self), len(self)),
            )
        base = self._closure[key]
        return sparse.csr_matrix(
            (np.power(float(hop_discount), base.data), base.indices, base.indptr), shape=base.shape
        )

    # --- scores -------------------------------------------------------------------------------------------

    def concept_similarities(self, queries: Tensor) -> Tensor:
        """float64 ``[n, C]``: each concept's best similarity over its texts (``-inf`` for a concept with none)."""
        q = torch.as_tensor(queries)
        q = q.unsqueeze(0) if q.ndim == 1 else q
        out = torch.full((q.shape[0], len(self)), -math.inf, dtype=torch.float64)
        if not len(self.texts) or not q.shape[0]:
            return out
        step = max(1, _CELLS // max(1, len(self.texts)))
        index = self.text_concept.unsqueeze(0)
        for start in range(0, q.shape[0], step):
            s = _pairwise64(q[start : start + step], self.text_embeddings, self.similarity, self.curvature)
            out[start : start + step] = out[start : start + step].scatter_reduce(
                1, index.expand_as(s), s, reduce="amax"
            )
        return out

    def votes(
        self, queries: Tensor, relation: str, settings: GraphKnnSettings | None = None
    ) -> sparse.csr_matrix:
        """Votes ``[n, C]`` (sparse) of query embeddings for every concept (module docstring, step 2)."""
        return self.votes_from_similarities(self.concept_similarities(queries), relation, settings)

    def votes_from_similarities(
        self, sims: Tensor, relation: str, settings: GraphKnnSettings | None = None
    ) -> sparse.csr_matrix:
        """:meth:`votes` from concept similarities ``[n, C]`` (:meth:`concept_similarities`)."""
        settings = settings or self.settings
        n = sims.shape[0]
        k = min(settings.k, len(self))
        if n == 0 or k == 0 or not len(self.texts):
            return sparse.csr_matrix((n, len(self)), dtype=np.float64)
        top = torch.sort(sims, dim=1, descending=True, stable=True)
        vals, idx = top.values[:, :k], top.indices[:, :k]
        finite = torch.isfinite(vals)
        weights = torch.exp((vals - vals[:, :1]) / settings.temperature).masked_fill(~finite, 0.0)
        w = sparse.csr_matrix(
            (weights.reshape(-1).numpy(), (np.repeat(np.arange(n), k), idx.reshape(-1).numpy())),
            shape=(n, len(self)),
        )
        return (w @ self.propagation(relation, settings.hop_discount, settings.max_hops)).tocsr()

    # --- documents ----------------------------------------------------------------------------------------

    def cached_links(
        self,
        doc_ids: Sequence[str],
        doc_texts: Sequence[str] | None,
        doc_embeddings: Tensor | Callable[[], Tensor],
    ) -> DocumentLinks:
        """:meth:`link_documents`, remembered for the last document list (by its ids): an index or a store
        searched with a model that carries this graph links its documents once, not at every query.
        ``doc_embeddings`` may be a function returning them, called only when the links are computed."""
        key = (len(doc_ids), hash(tuple(doc_ids)), doc_texts is not None)
        cache = self.__dict__.setdefault("_links_cache", {})
        if key not in cache:
            cache.clear()
            embeddings = doc_embeddings() if callable(doc_embeddings) else doc_embeddings
            cache[key] = self.link_documents(doc_ids, doc_texts, embeddings)
        return cache[key]

    def link_documents(
        self,
        doc_ids: Sequence[str],
        doc_texts: Sequence[str] | None,
        doc_embeddings: Tensor,
        links_per_document: int | None = None,
    ) -> DocumentLinks:
        """Each document's concepts: a document whose id is a concept id, or whose text equals a concept's name
        or document text (definition, else name), links to it with score 1 (``direct``); any other document to
        its ``links_per_document`` most similar concepts, with those similarities."""
        links = links_per_document or self.settings.links_per_document
        by_text: dict[str, int] = {}
        for i in range(len(self)):
            for text in (self.names[i], self.definitions[i] or self.names[i]):
                by_text.setdefault(text.strip(), i)
        docs, concepts, scores, direct = [], [], [], []
        free = []
        for pos, doc_id in enumerate(doc_ids):
            hit = self.position.get(doc_id)
            if hit is None and doc_texts is not None:
                hit = by_text.get(str(doc_texts[pos]).strip())
            if hit is None:
                free.append(pos)
            else:
                docs.append(pos)
                concepts.append(hit)
                scores.append(1.0)
                direct.append(True)
        n = min(links, len(self))
        step = max(1, _CELLS // max(1, len(self)))  # [step, C] similarities at a time
        for start in range(0, len(free) if len(self.texts) else 0, step):
            part = free[start : start + step]
            emb = torch.as_tensor(doc_embeddings)[torch.tensor(part, dtype=torch.int64)]
            top = torch.sort(self.concept_similarities(emb), dim=1, descending=True, stable=True)
            for row, pos in enumerate(part):
                for s, c in zip(top.values[row, :n].tolist(), top.indices[row, :n].tolist()):
                    if math.isfinite(s):
                        docs.append(pos)
                        concepts.append(c)
                        scores.append(s)
                        direct.append(False)
        order = sorted(range(len(docs)), key=lambda i: (docs[i], -scores[i], concepts[i]))
        return DocumentLinks(
            n_docs=len(doc_ids),
            doc=torch.tensor([docs[i] for i in order], dtype=torch.int64),
            concept=torch.tensor([concepts[i] for i in order], dtype=torch.int64),
            score=torch.tensor([scores[i] for i in order], dtype=torch.float64),
            direct=torch.tensor([direct[i] for i in order], dtype=torch.bool),
        )


@dataclass
class DocumentLinks:
    """Document -> concept links (one row each, sorted by document): positions, similarity scores (1 for a
    direct link) and whether the link is direct."""

    n_docs: int
    doc: Tensor
    concept: Tensor
    score: Tensor
    direct: Tensor

    def matrix(self, n_concepts: int, temperature: float) -> sparse.csr_matrix:
        """``L [C, N]``: a direct link weighs 1; a free-text document's links ``softmax(score / T)``."""
        doc, concept = self.doc.numpy(), self.concept.numpy()
        score, direct = self.score.numpy().astype(np.float64), self.direct.numpy()
        weight = np.ones(len(doc), dtype=np.float64)
        free = ~direct
        if free.any():
            d = doc[free]
            s = score[free]
            best = np.full(self.n_docs, -np.inf)
            np.maximum.at(best, d, s)
            e = np.exp((s - best[d]) / temperature)
            total = np.zeros(self.n_docs)
            np.add.at(total, d, e)
            weight[free] = e / total[d]
        return sparse.csr_matrix((weight, (concept, doc)), shape=(n_concepts, self.n_docs))


def _check_relation(relation: str) -> None:
    if relation not in GRAPH_RELATIONS:
        raise ValueError(f"graph-kNN search ranks broader or narrower, got relation {relation!r}")


def check_graph_model(graph: ConceptGraph, model: Any) -> None:
    kind, c = _model_similarity(model)
    if kind != graph.similarity or (
        c is not None and not math.isclose(c, graph.curvature or 0.0, rel_tol=1e-6)
    ):
        raise ValueError(
            f"the taxonomy was embedded with similarity {graph.similarity!r} (c = {graph.curvature}), "
            f"the model uses {kind!r} (c = {c}): attach the taxonomy again with this model"
        )
    if graph.text_embeddings.shape[1] != model.embedding_dim and len(graph.texts):
        raise ValueError(
            f"the taxonomy's embeddings have {graph.text_embeddings.shape[1]} dimensions, the model "
            f"{model.embedding_dim}: attach the taxonomy again with this model"
        )


def graph_knn_search(
    graph: ConceptGraph,
    links: DocumentLinks,
    queries: Tensor,
    doc_vectors: Callable[[int, int], Tensor],
    n_docs: int,
    k: int,
    relation: str,
    settings: GraphKnnSettings | None = None,
    *,
    channel: Any = None,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` documents by the mixed graph-kNN score (module docstring) over *every* document: (scores
    float64 ``[n, k']``, positions int64 ``[n, k']``), best first, ties to the earlier document.

    ``doc_vectors(start, stop)`` returns documents ``start:stop`` as points of the model's space ``[b, D]``
    (the index's stored vectors; any float dtype, scored in float64). ``channel``: a hierarchy channel H over
    those points (:class:`lorentz_rag.models.hierarchy_channel.HierarchyChannel`), mixed in with its weight
    ``channel.graph_weight(relation)`` (module docstring); ``None``: graph-kNN alone."""
    _check_relation(relation)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    settings = settings or graph.settings
    q = torch.as_tensor(queries).detach()
    q = q.unsqueeze(0) if q.ndim == 1 else q
    k_eff = min(k, n_docs)
    out_scores = torch.empty(q.shape[0], k_eff, dtype=torch.float64)
    out_pos = torch.empty(q.shape[0], k_eff, dtype=torch.int64)
    if q.shape[0] == 0 or n_docs == 0:
        return out_scores, out_pos
    link_matrix = links.matrix(len(graph), settings.temperature)
    w = settings.graph_weight
    chunk = max(1, min(256, _CELLS // n_docs))
    h_weight = channel.graph_weight(relation) if channel is not None else 0.0
    if h_weight > 0.0:
        with torch.no_grad():
            h_queries = channel(q.float()).double()
            h_docs = torch.cat(
                [
                    channel(doc_vectors(a, min(n_docs, a + _DOC_BLOCK)).float()).double()
                    for a in range(0, n_docs, _DOC_BLOCK)
                ]
            )
    for start in range(0, q.shape[0], chunk):
        qc = q[start : start + chunk]
        sims = torch.empty(qc.shape[0], n_docs, dtype=torch.float64)
        for a in range(0, n_docs, _DOC_BLOCK):
            b = min(n_docs, a + _DOC_BLOCK)
            sims[:, a:b] = _pairwise64(qc, doc_vectors(a, b), graph.similarity, graph.curvature)
        graph_scores = torch.from_numpy(
            np.asarray((graph.votes(qc, relation, settings) @ link_matrix).todense(), dtype=np.float64)
        )
        mixed = mix_scores(sims, graph_scores, w)
        if h_weight > 0.0:
            h = channel.relation_scores(h_queries[start : start + chunk], h_docs, relation)
            mixed = mix_scores(mixed, h, h_weight)
        top = torch.sort(mixed, dim=1, descending=True, stable=True)
        out_scores[start : start + chunk] = top.values[:, :k_eff]
        out_pos[start : start + chunk] = top.indices[:, :k_eff]
    return out_scores, out_pos
