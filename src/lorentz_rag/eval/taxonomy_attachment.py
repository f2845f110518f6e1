"""A taxonomy attached to an index folder for graph-kNN search (:mod:`lorentz_rag.search.graph_knn`): built
from a model, a taxonomy and the index's documents, written with the index and read back.

In an index folder (``lorentz-rag index build ... --taxonomy T``) the attachment is two files written with the
index: ``taxonomy.json`` (settings, the concepts with their texts and parents, the model's similarity) and
``taxonomy.safetensors`` (the concept-text embeddings and the document links).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lorentz_rag.data.concepts import Taxonomy
from lorentz_rag.data.taxonomy import read_taxonomy
from lorentz_rag.search.graph_files import (
    GRAPH_JSON,
    ConceptGraphFileError,
    read_graph_files,
    write_graph_files,
)
from lorentz_rag.search.graph_knn import ConceptGraph, DocumentLinks, GraphKnnSettings, check_graph_model
from lorentz_rag.search.relation import exact_relation_search

__all__ = [
    "AttachedTaxonomy",
    "TaxonomyAttachmentError",
    "TaxonomyRequest",
    "attach_taxonomy",
    "index_graph_search",
    "read_attached_taxonomy",
    "read_taxonomy_request",
]


class TaxonomyAttachmentError(ValueError):
    """An index folder's taxonomy files cannot be read (missing, damaged or inconsistent); names the file."""


class AttachedTaxonomy:
    """A taxonomy attached to an index: its :class:`ConceptGraph` and the index documents' links."""

    def __init__(self, graph: ConceptGraph, links: DocumentLinks) -> None:
        self.graph = graph
        self.links = links

    @property
    def settings(self) -> GraphKnnSettings:
        return self.graph.settings

    @classmethod
    def build(
        cls,
        model: Any,
        taxonomy: Taxonomy | str | os.PathLike[str],
        doc_ids: Sequence[str],
        doc_texts: Sequence[str] | None,
        doc_embeddings: Tensor,
        settings: GraphKnnSettings | None = None,
        *,
        batch_size: int = 64,
    ) -> AttachedTaxonomy:
        graph = ConceptGraph.from_taxonomy(model, taxonomy, settings, batch_size=batch_size)
        return cls(graph, graph.link_documents(doc_ids, doc_texts, doc_embeddings))

    def summary(self) -> str:
        direct = int(self.links.direct.sum())
        free = len(set(self.links.doc[~self.links.direct].tolist()))
        return (
            f"taxonomy attached: {len(self.graph)} concepts, {len(self.graph.texts)} concept texts; "
            f"{direct} documents are concepts, {free} linked to their {self.settings.links_per_document} "
            "nearest concepts"
        )

    def write(self, folder: str | os.PathLike[str]) -> None:
        """Write ``taxonomy.json`` and ``taxonomy.safetensors`` into ``folder``: the graph and the document links
        (:func:`lorentz_rag.search.graph_files.write_graph_files`, atomic and fsynced)."""
        write_graph_files(
            self.graph,
            folder,
            extra_meta={"n_docs": self.links.n_docs},
            extra_tensors={
                "link_doc": self.links.doc,
                "link_concept": self.links.concept,
                "link_score": self.links.score,
                "link_direct": self.links.direct.to(torch.uint8),
            },
        )

    @classmethod
    def read(cls, folder: str | os.PathLike[str], n_docs: int | None = None) -> AttachedTaxonomy:
        """The attachment :meth:`write` wrote; :class:`TaxonomyAttachmentError` names a bad file."""
        folder = Path(folder)
        try:
            graph, meta, t = read_graph_files(folder)
        except ConceptGraphFileError as error:
            raise TaxonomyAttachmentError(str(error)) from None
        try:
            links = DocumentLinks(
                n_docs=int(meta["n_docs"]),
                doc=t["link_doc"],
                concept=t["link_concept"],
                score=t["link_score"],
                direct=t["link_direct"].to(torch.bool),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise TaxonomyAttachmentError(f"{folder}: inconsistent taxonomy attachment: {error}") from None
        if n_docs is not None and links.n_docs != n_docs:
            raise TaxonomyAttachmentError(
                f"{folder / GRAPH_JSON}: links {links.n_docs} documents but the index holds {n_docs}"
            )
        return cls(graph, links)


def read_attached_taxonomy(
    folder: str | os.PathLike[str], n_docs: int | None = None
) -> AttachedTaxonomy | None:
    """The taxonomy attached to an index folder, or ``None`` when it has none."""
    if not (Path(folder) / GRAPH_JSON).is_file():
        return None
    return AttachedTaxonomy.read(folder, n_docs)


def index_graph_search(index: Any, queries: Tensor, k: int, relation: str) -> tuple[Tensor, Tensor]:
    """Graph-kNN over a :class:`lorentz_rag.eval.index.VectorIndex` with an attached taxonomy
    (``index.taxonomy``), brute force over its stored vectors."""
    attached: AttachedTaxonomy = index.taxonomy
    q = torch.as_tensor(queries)
    q = q.unsqueeze(0) if q.ndim == 1 else q
    if q.ndim != 2 or q.shape[1] != index.dim:
        raise ValueError(f"queries must be [n, {index.dim}], got shape {tuple(q.shape)}")
    return exact_relation_search(
        q,
        index.stored_embeddings,
        len(index),
        k,
        relation,
        similarity=index.similarity,
        curvature=index.curvature,
        route="graph",
        graph=attached.graph,
        links=attached.links,
    )


@dataclass(frozen=True)
class TaxonomyRequest:
    """What ``--taxonomy`` (and ``--graph-settings``) asked for: the taxonomy read, its settings, the file."""

    taxonomy: Taxonomy
    settings: GraphKnnSettings
    source: str


def read_taxonomy_request(
    taxonomy: str | os.PathLike[str] | None, settings_file: str | os.PathLike[str] | None = None
) -> TaxonomyRequest | None:
    """Read ``--taxonomy`` (any format :func:`read_taxonomy` reads) and ``--graph-settings`` (a JSON file of
    :class:`GraphKnnSettings`, default: the defaults) up front, so a bad file stops a command before it
    encodes anything. ``None`` when no taxonomy is given; settings without a taxonomy are refused."""
    if taxonomy is None:
        if settings_file is not None:
            raise ValueError(
                "--graph-settings configures the search over an attached taxonomy: pass --taxonomy too"
            )
        return None
    settings = GraphKnnSettings.load(settings_file) if settings_file is not None else GraphKnnSettings()
    return TaxonomyRequest(read_taxonomy(taxonomy), settings, str(Path(taxonomy).resolve()))


def attach_taxonomy(
    index: Any,
    model: Any,
    taxonomy: Taxonomy | ConceptGraph | str | os.PathLike[str],
    doc_texts: Sequence[str] | None = None,
    settings: GraphKnnSettings | None = None,
    *,
    batch_size: int = 64,
    source: str | None = None,
) -> AttachedTaxonomy:
    """Attach ``taxonomy`` to a :class:`lorentz_rag.eval.index.VectorIndex` (``index.taxonomy``; saved with
    the index): its concept texts embedded by ``model`` (the index's model; a :class:`ConceptGraph`, such as
    the one a model carries, is already embedded) and every indexed document linked (by id, by ``doc_texts``
    when given, else to its nearest concepts from its stored vector). Its ``broader`` / ``narrower`` search
    is graph-kNN from then on."""
    n = len(index)
    docs = (
        torch.from_numpy(index.faiss_index.reconstruct_n(0, n))[:, : index.dim]
        if n
        else torch.empty(0, index.dim)
    )
    if isinstance(taxonomy, ConceptGraph):
        graph = taxonomy
    else:
        if source is None and not isinstance(taxonomy, Taxonomy):
            source = str(Path(taxonomy).resolve())
        graph = ConceptGraph.from_taxonomy(model, taxonomy, settings, batch_size=batch_size, source=source)
    check_graph_model(graph, model)
    if graph.similarity != index.similarity:
        raise ValueError(f"the index uses similarity {index.similarity!r}, the model {graph.similarity!r}")
    index.taxonomy = AttachedTaxonomy(graph, graph.link_documents(index.doc_ids, doc_texts, docs))
    return index.taxonomy
