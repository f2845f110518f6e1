"""LangChain: a lorentz-rag model as ``Embeddings``, a LangChain ``VectorStore`` over LanceDB or Qdrant, and a
retriever over :class:`VectorIndex`.

**Use** :class:`LorentzRagVectorStore` **for hyperbolic models**, not ``LorentzRagEmbeddings`` inside another
vector store. A hyperbolic model ranks documents by ``-d(q, x)``, which orders them as the Lorentz inner
product ``<q, x>_L = ip_query(q) . x`` does (``ip_query(q) = (-q0, qs)``). So :class:`LorentzRagEmbeddings`
returns documents as their points ``x`` and a query as ``ip_query(q)``: a *flat* (brute-force) dot-product
store ranks exactly as the geodesic distance. But a dot-product store with an approximate index (HNSW, IVF:
what every store uses at scale) builds its index on the plain dot product between *documents*, which is
dominated by large radii: recall@10 is about 1-2% under HNSW, silently near-random retrieval. The
supported way keeps the L2-reduced form and a float64 re-rank by the model's own similarity
(:mod:`lorentz_rag.stores`)::

    store = LorentzRagVectorStore.from_texts(texts, LorentzRagEmbeddings(model), store="lancedb:./rag_db")
    docs = store.as_retriever(search_kwargs={"k": 4}).invoke("question")

Cosine models return unit vectors (dot product = cosine); the Euclidean-distance twin (similarity
``euclidean``) returns its raw vectors, which rank exactly under an L2-distance store.
:attr:`LorentzRagEmbeddings.metric` names the store metric to use (for flat stores).

:class:`LorentzRagRetriever` skips the store: it searches a :class:`~lorentz_rag.eval.index.VectorIndex` (float64
re-ranked, certified exact for ``flat``) and returns ``Document``s with ``metadata["id"]`` and
``metadata["score"]`` (higher = closer: ``-d(q, x)``, ``<q, x>_L + 1/c``, cosine or ``-|q - x|``).
:class:`LorentzRagVectorStore` returns the same ``Document``s from a database (add, delete, search).

langchain-core is imported here only (an ``eval`` extra); nothing else in lorentz_rag imports this module.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.vectorstores import VectorStore as LangChainVectorStore
except ImportError as error:  # pragma: no cover - langchain-core is a declared eval dependency
    raise ImportError(
        "lorentz_rag.integrations.langchain needs langchain-core (pip install langchain-core, or lorentz-rag[eval])"
    ) from error

import torch
from pydantic import Field, model_validator

from lorentz_rag.eval.encode import encode_corpus
from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.geometry import lorentz
from lorentz_rag.models.base import check_finite_embeddings
from lorentz_rag.store_specs import STORE_SPECS
from lorentz_rag.stores import DEFAULT_COLLECTION, StoreHit, VectorStore, create_store, layout_for_model

__all__ = ["LorentzRagEmbeddings", "LorentzRagRetriever", "LorentzRagVectorStore"]


class LorentzRagEmbeddings(Embeddings):
    """A lorentz_rag :class:`~lorentz_rag.models.base.EmbeddingModel` as LangChain ``Embeddings``.

    ``embed_documents`` embeds with the model's document prefix, ``embed_query`` with its query prefix.
    Hyperbolic models: documents are points ``[d+1]`` (time first), a query is ``ip_query(q)``, so the dot
    product of the two is ``<q, x>_L`` and a *flat* dot-product store ranks exactly by geodesic distance.

    Warning: a dot-product store with an approximate (HNSW / IVF) index is wrong for hyperbolic vectors:
    recall@10 about 1-2% under HNSW. Use :class:`LorentzRagVectorStore` (LanceDB or Qdrant, the L2-reduced
    form and a float64 re-rank), e.g. ``LorentzRagVectorStore.from_texts(texts, embeddings,
    store="lancedb:./rag_db")``.
    """

    def __init__(self, model: Any, *, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size

    @property
    def metric(self) -> str:
        """The vector-store metric under which these vectors rank as the model does: ``"dot"`` (hyperbolic
        and cosine models) or ``"l2"`` (the Euclidean-distance twin)."""
        return "l2" if self.model.settings.similarity == "euclidean" else "dot"

    def _embed(self, texts: list[str], prompt_type: str) -> Any:
        emb = self.model.encode(texts, prompt_type=prompt_type, batch_size=self.batch_size)
        check_finite_embeddings(emb, texts, "queries" if prompt_type == "query" else "documents")
        if self.model.settings.similarity == "cosine":
            emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # zero vectors stay zero
        return emb

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Document vectors ``[n][D]``: hyperboloid points, unit vectors (cosine) or raw vectors."""
        return self._embed(list(texts), "document").tolist()

    def embed_query(self, text: str) -> list[float]:
        """The query vector ``[D]``: ``ip_query(q)`` for hyperbolic models (see the class docstring)."""
        emb = self._embed([text], "query")
        if self.model.is_hyperbolic:
            emb = lorentz.ip_query(emb)
        return emb[0].tolist()


class LorentzRagRetriever(BaseRetriever):
    """Top-``k`` documents of a :class:`~lorentz_rag.eval.index.VectorIndex` for a query text.

    ``texts`` maps each indexed document id to its text (the ``page_content``); ``metadatas`` optionally
    maps ids to extra metadata. Every returned ``Document`` has ``id`` set and ``metadata["id"]``,
    ``metadata["score"]`` (float64, higher = closer) and ``metadata["rank"]`` (1 = best).

    ``relation``: ``similar`` (the default), or ``broader`` / ``narrower`` as :meth:`VectorIndex.search` ranks
    them (graph-kNN with a taxonomy attached to the index, the two channels for a model with a hierarchy
    channel, else the model's geometric relation score).
    """

    model: Any
    index: VectorIndex
    texts: Mapping[str, str]
    metadatas: Mapping[str, Mapping[str, Any]] = Field(default_factory=dict)
    k: int = 4
    allow_model_mismatch: bool = False
    relation: str = "similar"

    @model_validator(mode="after")
    def _check(self) -> LorentzRagRetriever:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.relation not in ("similar", "broader", "narrower"):
            raise ValueError(f"relation must be similar, broader or narrower, got {self.relation!r}")
        missing = [doc_id for doc_id in self.index.doc_ids if doc_id not in self.texts]
        if missing:
            raise ValueError(
                f"texts lacks {len(missing)} of the index's {len(self.index)} document ids "
                f"(the first: {missing[0]!r}); give the text of every indexed document"
            )
        return self

    @classmethod
    def from_texts(
        cls,
        model: Any,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any]] | None = None,
        k: int = 4,
        batch_size: int = 64,
        kind: str = "flat",
    ) -> LorentzRagRetriever:
        """Embed ``texts`` with the document prefix, index them, and return a retriever over them. ``ids``
        default to ``"0"``, ``"1"``, ...; ``metadatas`` (one mapping per text) go into each ``Document``."""
        texts = list(texts)
        ids = [str(i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"{len(metadatas)} metadatas but {len(texts)} texts")
        index = VectorIndex.from_model(model, ids, texts, batch_size=batch_size, kind=kind)
        return cls(
            model=model,
            index=index,
            texts=dict(zip(ids, texts)),
            metadatas=dict(zip(ids, metadatas)) if metadatas is not None else {},
            k=k,
        )

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        (hits,) = self.index.search(
            self.model,
            [query],
            self.k,
            allow_model_mismatch=self.allow_model_mismatch,
            relation=self.relation,
        )
        return [
            Document(
                id=doc_id,
                page_content=self.texts[doc_id],
                metadata={**self.metadatas.get(doc_id, {}), "id": doc_id, "score": score, "rank": rank},
            )
            for rank, (doc_id, score) in enumerate(hits, start=1)
        ]


def _document(hit: StoreHit, rank: int) -> Document:
    return Document(
        id=hit.id,
        page_content=hit.text,
        metadata={**hit.metadata, "id": hit.id, "score": hit.score, "rank": rank},
    )


class LorentzRagVectorStore(LangChainVectorStore):
    """A LangChain ``VectorStore`` over a :class:`lorentz_rag.stores.VectorStore` (LanceDB or Qdrant).

    Searches go through the store's exact or ANN index on the L2-reduced form and are re-ranked in float64
    with the model's similarity; scores are "higher = closer" (``-d(q, x)``, ``<q, x>_L + 1/c``, cosine or
    ``-|q - x|``) and each ``Document`` carries ``metadata["id"]``, ``["score"]`` and ``["rank"]``.
    ``exact=True`` searches by brute force (certified exact). The model must be the store's (fingerprint).
    """

    def __init__(
        self,
        store: VectorStore,
        embedding: LorentzRagEmbeddings,
        *,
        exact: bool = False,
        batch_size: int = 64,
        allow_model_mismatch: bool = False,
    ) -> None:
        store.check_model(embedding.model, allow_model_mismatch=allow_model_mismatch)
        self.store = store
        self.embedding = embedding
        self.exact = exact
        self.batch_size = batch_size
        self.allow_model_mismatch = allow_model_mismatch

    @property
    def embeddings(self) -> LorentzRagEmbeddings:
        return self.embedding

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        store: str = "",
        max_radius: float | None = None,
        collection: str = DEFAULT_COLLECTION,
        overwrite: bool = False,
        **kwargs: Any,
    ) -> LorentzRagVectorStore:
        """Create the store ``store`` (any form of :data:`lorentz_rag.store_specs.STORE_SPECS`)
        for ``embedding``'s model and add ``texts``. ``max_radius``: the radius bound every document, now or
        later, must respect (default: the texts' largest radius plus
        :data:`lorentz_rag.stores.layout.RADIUS_HEADROOM`, capped by the model's bound; see
        :func:`lorentz_rag.stores.layout_for_model`); ``kwargs`` go to the constructor."""
        if not isinstance(embedding, LorentzRagEmbeddings):
            raise TypeError(f"embedding must be a LorentzRagEmbeddings, got {type(embedding).__name__}")
        if not store:
            raise ValueError(f"give store= one of {STORE_SPECS}")
        vectors = encode_corpus(embedding.model, list(texts), batch_size=embedding.batch_size)
        layout = layout_for_model(embedding.model, max_radius=max_radius, documents=vectors)
        target = create_store(store, layout, name=collection, overwrite=overwrite)
        vector_store = cls(target, embedding, **kwargs)
        ids = [str(uuid.uuid4()) for _ in texts] if ids is None else [str(i) for i in ids]
        target.add_embeddings(ids, vectors, list(texts), metadatas)
        return vector_store

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and add (or replace, by id) ``texts``; ``ids`` default to fresh UUIDs. Returns the ids."""
        return self.store.add_texts(
            self.embedding.model,
            list(texts),
            ids,
            metadatas,
            batch_size=self.batch_size,
            allow_model_mismatch=self.allow_model_mismatch,
        )

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete documents by id (ids not in the store are ignored)."""
        if ids is None:
            raise ValueError("delete needs the ids of the documents to delete")
        self.store.delete(ids)
        return True

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The top ``k`` documents for ``query`` with their scores (higher = closer), best first."""
        (hits,) = self.store.search(
            self.embedding.model,
            [query],
            k,
            exact=kwargs.get("exact", self.exact),
            allow_model_mismatch=self.allow_model_mismatch,
        )
        return [(_document(hit, rank), hit.score) for rank, hit in enumerate(hits, start=1)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        """Search with a vector from :meth:`LorentzRagEmbeddings.embed_query` (hyperbolic: ``ip_query(q)``)."""
        q = torch.as_tensor([embedding], dtype=torch.float32)
        if self.embedding.model.is_hyperbolic:
            q = lorentz.ip_query(q)  # its own inverse: back to the query point
        (hits,) = self.store.search_embeddings(q, k, exact=kwargs.get("exact", self.exact))
        return [_document(hit, rank) for rank, hit in enumerate(hits, start=1)]
