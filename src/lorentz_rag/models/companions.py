"""What a model may carry beside its weights, and the relation search that reads it.

- **A hierarchy channel H** (:mod:`lorentz_rag.models.hierarchy_channel`): a small network over the model's
  embeddings, saved in ``MODEL/hierarchy_channel/``.
- **A taxonomy** (:class:`lorentz_rag.search.graph_knn.ConceptGraph`): the concepts the model was taught by the
  taxonomy recipe (its train split), their texts embedded by the model, saved in ``MODEL/taxonomy/``
  (:func:`lorentz_rag.search.graph_files.write_graph_files`).

Both are kept outside the model's parameters and state dict (``object.__setattr__``: ``nn.Module`` would register
H as a submodule), so the model's own weights, fingerprint, sentence-transformers export and similarity
rankings are exactly those of the model alone. :func:`lorentz_rag.models.load_model` restores both.

``search(relation="broader" | "narrower")`` reads them through :func:`lorentz_rag.search.relation.relation_route`:
a taxonomy (passed in, else the model's own) ranks by graph-kNN, mixed with H where the model has one; else H
mixed with similarity; else the single-channel geometric score.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lorentz_rag.models.hierarchy_channel import CHANNEL_FOLDER
from lorentz_rag.search.graph_files import read_graph_files, write_graph_files
from lorentz_rag.search.graph_knn import ConceptGraph, check_graph_model
from lorentz_rag.search.relation import exact_relation_search

__all__ = ["TAXONOMY_FOLDER", "ModelCompanions", "load_model_taxonomy"]

#: The subfolder of a model folder holding the taxonomy the model carries.
TAXONOMY_FOLDER = "taxonomy"


def load_model_taxonomy(model_folder: str | Path) -> ConceptGraph | None:
    """The taxonomy saved in ``model_folder/taxonomy/``, or ``None`` where the folder has none; a damaged file
    raises :class:`lorentz_rag.search.graph_files.ConceptGraphFileError` naming it."""
    folder = Path(model_folder) / TAXONOMY_FOLDER
    if not folder.exists():
        return None
    graph, _, _ = read_graph_files(folder)
    return graph


class ModelCompanions:
    """Mixed into :class:`lorentz_rag.models.base.EmbeddingModel`: the hierarchy channel and the taxonomy a model
    carries (module docstring)."""

    # --- the hierarchy channel -------------------------------------------------------------------------

    @property
    def hierarchy_channel(self) -> Any:
        """The attached :class:`lorentz_rag.models.hierarchy_channel.HierarchyChannel`, or ``None``."""
        return self.__dict__.get("_hierarchy_channel")

    def attach_hierarchy_channel(self, channel: Any) -> None:
        """Attach a hierarchy channel H over this model's embeddings (``None`` detaches); saved by
        ``save_pretrained`` in its own subfolder."""
        if channel is not None:
            want = channel.config.input_dim
            if want != self.embedding_dim:
                raise ValueError(
                    f"the hierarchy channel reads embeddings of {want} numbers, this model makes "
                    f"{self.embedding_dim}: it was trained over another model"
                )
        object.__setattr__(self, "_hierarchy_channel", channel)

    @torch.no_grad()
    def encode_hierarchy(
        self, texts: Sequence[str] | str, prompt_type: Any = None, batch_size: int = 32
    ) -> Tensor:
        """H's points of ``texts`` ``[n, H.output_dim]``: the hierarchy channel over this model's embeddings."""
        channel = self.hierarchy_channel
        if channel is None:
            raise ValueError("this model has no hierarchy channel (see lorentz_rag.models.hierarchy_channel)")
        return channel(self.encode(texts, prompt_type, batch_size).float())

    # --- the taxonomy ----------------------------------------------------------------------------------

    @property
    def concept_graph(self) -> ConceptGraph | None:
        """The taxonomy this model carries (:class:`lorentz_rag.search.graph_knn.ConceptGraph`), or ``None``."""
        return self.__dict__.get("_concept_graph")

    def attach_concept_graph(self, graph: ConceptGraph | None) -> None:
        """Carry ``graph`` (built with this model: ``ConceptGraph.from_taxonomy(model, T)``; ``None`` drops it).
        ``broader`` / ``narrower`` search then ranks by graph-kNN over it, everywhere the model searches."""
        if graph is not None:
            if not isinstance(graph, ConceptGraph):
                raise TypeError(
                    "attach_concept_graph takes lorentz_rag.search.graph_knn.ConceptGraph.from_taxonomy(model, T), "
                    f"got {type(graph).__name__}"
                )
            check_graph_model(graph, self)
        object.__setattr__(self, "_concept_graph", graph)

    # --- saving ----------------------------------------------------------------------------------------

    def save_companions(self, path: str | Path) -> None:
        """Write the attached channel and taxonomy into the model folder ``path``, and remove stale ones there
        (the folder then describes this model)."""
        channel, graph = self.hierarchy_channel, self.concept_graph
        if channel is not None:
            channel.save(path)
        elif (Path(path) / CHANNEL_FOLDER).is_dir():
            shutil.rmtree(Path(path) / CHANNEL_FOLDER)
        if graph is not None:
            write_graph_files(graph, Path(path) / TAXONOMY_FOLDER)
        elif (Path(path) / TAXONOMY_FOLDER).is_dir():
            shutil.rmtree(Path(path) / TAXONOMY_FOLDER)

    # --- relation search -------------------------------------------------------------------------------

    def _companion_search(
        self,
        queries: Sequence[str],
        documents: Sequence[str] | Tensor,
        k: int,
        relation: str,
        graph: ConceptGraph | None,
        batch_size: int,
        doc_ids: Sequence[str] | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Routes ``graph`` and ``channel`` of ``search`` (:mod:`lorentz_rag.search.relation`), exact."""
        if graph is not None:
            check_graph_model(graph, self)
        texts = None if isinstance(documents, Tensor) else list(documents)
        docs = documents if isinstance(documents, Tensor) else self.encode(texts, "document", batch_size)
        if docs.ndim != 2 or docs.shape[1] != self.embedding_dim:
            raise ValueError(
                f"documents must be texts or embeddings [m, {self.embedding_dim}], got {tuple(docs.shape)}"
            )
        docs = docs.detach()
        links = None
        if graph is not None:
            if doc_ids is not None and len(doc_ids) != len(docs):
                raise ValueError(f"doc_ids has {len(doc_ids)} entries for {len(docs)} documents")
            ids = list(doc_ids) if doc_ids is not None else [f"\0{i}" for i in range(len(docs))]
            links = graph.link_documents(ids, texts, docs)
        c = self.curvature()
        scores, positions = exact_relation_search(
            self.encode(list(queries), "query", batch_size),
            lambda a, b: docs[a:b],
            len(docs),
            k,
            relation,
            similarity=self.settings.similarity,
            curvature=None if c is None else float(c),
            channel=self.hierarchy_channel,
            route="graph" if graph is not None else "channel",
            graph=graph,
            links=links,
        )
        return [list(zip(p, s)) for p, s in zip(positions.tolist(), scores.tolist())]
