"""LangChain: a lorentz-rag model as ``Embeddings`` for any vector store, and a retriever over :class:`VectorIndex`.

Exactness through a vector store: a hyperbolic model ranks documents by ``-d(q, x)``, which orders them as
the Lorentz inner product ``<q, x>_L = ip_query(q) . x`` does (``ip_query(q) = (-q0, qs)``). So
:class:`LorentzRagEmbeddings` returns documents as their points ``x`` and a query as ``ip_query(q)``: a store
that ranks by dot product (maximum inner product) ranks exactly as the geodesic distance. Cosine models
return unit vectors (dot product = cosine); the Euclidean-distance twin (similarity ``euclidean``) returns
its raw vectors, which rank exactly under an L2-distance store. :attr:`LorentzRagEmbeddings.metric` names the
store metric to use.

:class:`LorentzRagRetriever` skips the store: it searches a :class:`~lorentz_rag.eval.index.VectorIndex` (float64
re-ranked, certified exact for ``flat``) and returns ``Document``s with ``metadata["id"]`` and
``metadata["score"]`` (higher = closer: ``-d(q, x)``, ``<q, x>_L + 1/c``, cosine or ``-|q - x|``).

langchain-core is imported here only (an ``eval`` extra); nothing else in lorentz_rag imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.retrievers import BaseRetriever
except ImportError as error:  # pragma: no cover - langchain-core is a declared eval dependency
    raise ImportError(
        "lorentz_rag.integrations.langchain needs langchain-core (pip install langchain-core, or lorentz-rag[eval])"
    ) from error

from pydantic import Field, model_validator

from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.geometry import lorentz
from lorentz_rag.models.base import check_finite_embeddings

__all__ = ["LorentzRagEmbeddings", "LorentzRagRetriever"]


class LorentzRagEmbeddings(Embeddings):
    """A lorentz_rag :class:`~lorentz_rag.models.base.EmbeddingModel` as LangChain ``Embeddings``.

    ``embed_documents`` embeds with the model's document prefix, ``embed_query`` with its query prefix.
    Hyperbolic models: documents are points ``[d+1]`` (time first), a query is ``ip_query(q)``, so the dot
    product of the two is ``<q, x>_L`` and a dot-product store ranks exactly by geodesic distance.
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
    """

    model: Any
    index: VectorIndex
    texts: Mapping[str, str]
    metadatas: Mapping[str, Mapping[str, Any]] = Field(default_factory=dict)
    k: int = 4
    allow_model_mismatch: bool = False

    @model_validator(mode="after")
    def _check(self) -> LorentzRagRetriever:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
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
            self.model, [query], self.k, allow_model_mismatch=self.allow_model_mismatch
        )
        return [
            Document(
                id=doc_id,
                page_content=self.texts[doc_id],
                metadata={**self.metadatas.get(doc_id, {}), "id": doc_id, "score": score, "rank": rank},
            )
            for rank, (doc_id, score) in enumerate(hits, start=1)
        ]
