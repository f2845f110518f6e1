"""A taxonomy attached to a local vector store, for graph-kNN ``broader`` / ``narrower`` search.

The attachment lives beside the store, in ``PATH/<collection>.taxonomy/`` (``lancedb:PATH`` or
``qdrant:PATH``): the same ``taxonomy.json`` + ``taxonomy.safetensors`` as a FAISS index folder
(:meth:`lorentz_rag.eval.taxonomy_attachment.AttachedTaxonomy.write`) and ``documents.json``, the document ids
its links' positions refer to. It is written into a fresh folder and renamed into place, so a reader sees
the old attachment or the new one, never a mix. A store on a Qdrant server has no folder to hold one.

Links are per document (a document's links depend only on its id, text and vector), so ``index add``
links the added documents and ``index delete`` drops the deleted ones' links; the search re-keys the links
to the store's order by id and refuses a store holding a document the attachment does not link.

The search is :meth:`lorentz_rag.stores.base.VectorStore.search` (a store opened with
:func:`lorentz_rag.stores.open_store` reads its attachment when a relation search needs it): the one exact
relation search of :mod:`lorentz_rag.search.relation` over every stored vector in insertion order (float64),
as a FAISS folder runs it: the same corpus, model and taxonomy rank the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lorentz_rag.eval.taxonomy_attachment import AttachedTaxonomy, TaxonomyAttachmentError
from lorentz_rag.search.graph_knn import ConceptGraph, DocumentLinks
from lorentz_rag.store_specs import BACKENDS, backend_of, parse_store_spec
from lorentz_rag.stores.base import DEFAULT_COLLECTION, VectorStore

__all__ = [
    "StoreTaxonomy",
    "read_store_taxonomy",
    "remove_store_taxonomy",
    "store_taxonomy_folder",
    "write_store_taxonomy",
]

_IDS_FILE = "documents.json"


class StoreTaxonomy:
    """An :class:`AttachedTaxonomy` whose link positions index ``doc_ids``."""

    def __init__(self, attached: AttachedTaxonomy, doc_ids: Sequence[str]) -> None:
        if attached.links.n_docs != len(doc_ids):
            raise ValueError(f"links cover {attached.links.n_docs} documents, {len(doc_ids)} ids given")
        self.attached = attached
        self.doc_ids = [str(i) for i in doc_ids]

    @property
    def graph(self) -> ConceptGraph:
        return self.attached.graph

    def links_for(self, order: Sequence[str]) -> DocumentLinks:
        """The links re-keyed to documents ``order`` (by id); a document without links is refused."""
        where = {doc_id: pos for pos, doc_id in enumerate(self.doc_ids)}
        missing = [doc_id for doc_id in order if doc_id not in where]
        if missing:
            raise TaxonomyAttachmentError(
                f"{len(missing)} stored documents (e.g. {missing[0]!r}) have no taxonomy links: they were added "
                "without the attachment; build the store again with --taxonomy"
            )
        return self._subset(order)

    def without(self, ids: Sequence[str]) -> StoreTaxonomy:
        """The attachment with the links of ``ids`` dropped."""
        gone = set(map(str, ids))
        keep = [doc_id for doc_id in self.doc_ids if doc_id not in gone]
        return StoreTaxonomy(AttachedTaxonomy(self.graph, self._subset(keep)), keep)

    def _subset(self, keep: Sequence[str]) -> DocumentLinks:
        """The links of documents ``keep`` (ids it links), renumbered to their positions in ``keep``."""
        where = {doc_id: pos for pos, doc_id in enumerate(self.doc_ids)}
        new_pos = np.full(len(self.doc_ids), -1, dtype=np.int64)
        new_pos[[where[doc_id] for doc_id in keep]] = np.arange(len(keep), dtype=np.int64)
        return _select(self.attached.links, new_pos, len(keep))

    def with_documents(
        self, ids: Sequence[str], texts: Sequence[str] | None, embeddings: Tensor
    ) -> StoreTaxonomy:
        """The attachment with documents ``ids`` (re)linked from their texts and embeddings."""
        ids = [str(i) for i in ids]
        base = self.without(ids)
        new = self.graph.link_documents(ids, texts, torch.as_tensor(embeddings))
        old = base.attached.links
        shift = len(base.doc_ids)
        links = DocumentLinks(
            n_docs=shift + len(ids),
            doc=torch.cat([old.doc, new.doc + shift]),
            concept=torch.cat([old.concept, new.concept]),
            score=torch.cat([old.score, new.score]),
            direct=torch.cat([old.direct, new.direct]),
        )
        return StoreTaxonomy(AttachedTaxonomy(self.graph, links), [*base.doc_ids, *ids])


def _select(links: DocumentLinks, new_pos: np.ndarray, n_docs: int) -> DocumentLinks:
    """Links whose documents map to ``new_pos >= 0``, renumbered and sorted by new position (stable)."""
    mapped = torch.from_numpy(new_pos)[links.doc]
    keep = mapped >= 0
    doc = mapped[keep]
    order = torch.sort(doc, stable=True).indices
    return DocumentLinks(
        n_docs=n_docs,
        doc=doc[order].contiguous(),
        concept=links.concept[keep][order].contiguous(),
        score=links.score[keep][order].contiguous(),
        direct=links.direct[keep][order].contiguous(),
    )


def store_taxonomy_folder(spec: str, name: str = DEFAULT_COLLECTION) -> Path:
    """``PATH/<name>.taxonomy`` for a local store; a Qdrant server is refused (one line)."""
    _, where = parse_store_spec(spec)
    if not backend_of(spec).is_local(where):
        local = ", ".join(f for b in BACKENDS.values() for f in b.forms if f.endswith(":PATH"))
        raise ValueError(
            f"{spec}: a taxonomy is kept in files beside the store, and only local stores ({local}) can carry "
            "one yet"
        )
    return Path(where["path"]) / f"{name}.taxonomy"


def write_store_taxonomy(spec: str, name: str, taxonomy: StoreTaxonomy) -> Path:
    """Write the attachment into a fresh folder, then rename it over the old one (if any)."""
    folder = store_taxonomy_folder(spec, name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        taxonomy.attached.write(tmp)
        ids_file = tmp / _IDS_FILE
        ids_file.write_text(json.dumps(taxonomy.doc_ids, ensure_ascii=False) + "\n", encoding="utf-8")
        with open(ids_file, "rb") as handle:
            os.fsync(handle.fileno())
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.old"
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def read_store_taxonomy(spec: str, name: str = DEFAULT_COLLECTION) -> StoreTaxonomy | None:
    """The taxonomy attached to a store, or ``None`` (none, or a Qdrant server)."""
    try:
        folder = store_taxonomy_folder(spec, name)
    except ValueError:
        return None
    if not folder.is_dir():
        return None
    attached = AttachedTaxonomy.read(folder)
    ids_file = folder / _IDS_FILE
    try:
        ids = json.loads(ids_file.read_text(encoding="utf-8"))
        if not isinstance(ids, list):
            raise ValueError("not a list of ids")
        return StoreTaxonomy(attached, [str(i) for i in ids])
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise TaxonomyAttachmentError(f"{ids_file}: not a readable list of document ids: {error}") from None


def remove_store_taxonomy(spec: str, name: str = DEFAULT_COLLECTION) -> None:
    """Remove a store's attachment (a rebuild without ``--taxonomy`` drops the old one)."""
    try:
        folder = store_taxonomy_folder(spec, name)
    except ValueError:
        return
    if folder.is_dir():
        shutil.rmtree(folder)


def attach_store_taxonomy(
    store: VectorStore,
    spec: str,
    model: Any,
    taxonomy: Any,
    settings: Any = None,
    *,
    source: str | None = None,
    batch_size: int = 64,
) -> StoreTaxonomy:
    """Embed ``taxonomy``'s concepts with ``model`` (the store's), link every stored document (by id, by
    text, else to its nearest concepts from its stored vector) and write the attachment beside the store."""
    store_taxonomy_folder(spec, store.name)  # a server is refused before any encoding
    if isinstance(taxonomy, ConceptGraph):  # already embedded (the taxonomy a model carries)
        graph = taxonomy
    else:
        graph = ConceptGraph.from_taxonomy(model, taxonomy, settings, batch_size=batch_size, source=source)
    if graph.similarity != store.layout.similarity:
        raise ValueError(
            f"the store uses similarity {store.layout.similarity!r}, the model {graph.similarity!r}"
        )
    ids, vectors, texts, _ = store.all_documents()
    links = graph.link_documents(ids, texts, torch.from_numpy(vectors))
    attached = StoreTaxonomy(AttachedTaxonomy(graph, links), ids)
    write_store_taxonomy(spec, store.name, attached)
    return attached
