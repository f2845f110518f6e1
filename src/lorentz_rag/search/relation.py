"""The one dispatch of ``broader`` / ``narrower`` search: which score ranks, and the exact search by it.

Every place that searches by a relation (``EmbeddingModel.search``, the FAISS folder's ``VectorIndex.search``,
the vector stores, ``eval beir --relation``, and LangChain through the index and the stores) asks
:func:`relation_route` which score applies, in this order:

1. ``graph``: a taxonomy is at hand (one attached to the index or store, one passed in, or the model's own,
   carried from the taxonomy recipe): graph-kNN (:mod:`lorentz_rag.search.graph_knn`), mixed with the
   hierarchy channel H where the model has one (its ``graph_weights``), unless that channel keeps the
   relation out of the graph (``graph_relations``: its recipe found S + H better there on validation);
2. ``channel``: the model has a hierarchy channel H (:mod:`lorentz_rag.models.hierarchy_channel`): S's
   similarity mixed with H's relation score (its ``weights``);
3. ``geometric``: the single-channel relation score of :mod:`lorentz_rag.geometry.relation` with a radius
   weight (models with a radius), which each index serves with its own certified candidate search.

Routes 1 and 2 are brute force over every document in float64 (:func:`exact_relation_search`), so exact by
construction on every backend. A ``radius_weight`` given to a route that has no use for it is refused in one
line: the graph has no radius term, and H's radius weight was saved with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lorentz_rag.geometry.relation import RELATIONS
from lorentz_rag.models.hierarchy_channel import two_channel_search
from lorentz_rag.search.graph_knn import ConceptGraph, DocumentLinks, GraphKnnSettings, graph_knn_search

__all__ = ["ROUTES", "exact_relation_search", "relation_route"]

ROUTES = ("similar", "graph", "channel", "geometric")


def relation_route(
    relation: str,
    *,
    channel: Any = None,
    graph: ConceptGraph | None = None,
    radius_weight: float | None = None,
    where: str = "this search",
    option: str = "radius_weight",
) -> str:
    """Which score ranks ``relation`` (module docstring): one of :data:`ROUTES`. Refuses, in one line naming
    ``where`` (and ``option``, the radius weight's name there), a ``radius_weight`` that the chosen route would
    ignore, and an unknown relation."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; choose one of {list(RELATIONS)}")
    if relation == "similar":
        return "similar"
    if graph is not None and channel is not None and relation not in channel.config.graph_relations:
        graph = None  # the channel's recipe found S + H better than any mixture with the graph for it
    if graph is not None:
        if radius_weight is not None:
            raise ValueError(
                f"{where}: {option} weighs the geometric relation score, but a taxonomy is at hand, which "
                f"ranks relation={relation!r} by graph-kNN (settings saved with the taxonomy): drop {option}"
            )
        return "graph"
    if channel is not None:
        if radius_weight is not None:
            raise ValueError(
                f"{where}: {option} weighs the single-channel relation score, but this model ranks "
                f"relation={relation!r} by its hierarchy channel, whose radius weight "
                f"({channel.config.radius_weight}) was saved with it: drop {option}"
            )
        return "channel"
    return "geometric"


def exact_relation_search(
    queries: Tensor,
    doc_vectors: Callable[[int, int], Tensor],
    n_docs: int,
    k: int,
    relation: str,
    *,
    route: str,
    similarity: str,
    curvature: float | None,
    channel: Any = None,
    graph: ConceptGraph | None = None,
    links: DocumentLinks | None = None,
    settings: GraphKnnSettings | None = None,
) -> tuple[Tensor, Tensor]:
    """The exact top-``k`` of routes ``graph`` and ``channel``: (scores float64 ``[n, k']``, positions int64
    ``[n, k']``), best first, ties to the earlier document.

    ``queries [n, D]``: the model's query embeddings; ``doc_vectors(start, stop)``: documents ``start:stop``
    as the model's embeddings (an index's stored vectors); ``similarity`` / ``curvature``: the model's.
    ``graph`` with ``links`` (the documents' concepts, :meth:`ConceptGraph.link_documents`) takes route
    ``graph`` (``settings``: other graph-kNN settings than the graph's own); ``route`` is
    :func:`relation_route`'s answer, ``graph`` or ``channel`` (which ignores ``graph`` and ``links``: the
    channel may keep a relation out of a taxonomy at hand)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = torch.as_tensor(queries).detach()
    q = q.unsqueeze(0) if q.ndim == 1 else q
    if route not in ("graph", "channel"):
        raise ValueError(f"exact_relation_search serves the routes graph and channel, got {route!r}")
    if route == "graph":
        if graph is None or links is None or links.n_docs != n_docs:
            raise ValueError("graph-kNN needs a taxonomy and the documents' concept links, one per document")
        return graph_knn_search(graph, links, q, doc_vectors, n_docs, k, relation, settings, channel=channel)
    if channel is None:
        raise ValueError("route 'channel' needs a hierarchy channel")
    docs = doc_vectors(0, n_docs) if n_docs else torch.empty(0, q.shape[1])
    return two_channel_search(channel, q, docs, k, relation, similarity, curvature)
