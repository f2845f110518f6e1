"""LorentzRagVectorStore: LangChain's VectorStore over LanceDB and Qdrant (lorentz_rag.integrations.langchain),
with a small deterministic model (tests/stores/store_fakes.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from langchain_core.embeddings import Embeddings

from lorentz_rag.eval.index import IndexModelMismatchError
from lorentz_rag.integrations.langchain import LorentzRagEmbeddings, LorentzRagVectorStore
from lorentz_rag.stores import open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stores"))
from store_fakes import RADIUS, FakeModel

BACKENDS = ("lancedb", "qdrant")
TEXTS = [f"passage {i} about subject {i % 5}" for i in range(40)]


def _build(backend, tmp_path, model=None, **kwargs):
    embeddings = LorentzRagEmbeddings(model or FakeModel("geodesic"))
    return LorentzRagVectorStore.from_texts(
        TEXTS,
        embeddings,
        [{"n": i} for i in range(len(TEXTS))],
        ids=[f"p{i}" for i in range(len(TEXTS))],
        store=f"{backend}:{tmp_path / backend}",
        max_radius=RADIUS,
        **kwargs,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_from_texts_search_retriever_add_and_delete(backend, tmp_path):
    vs = _build(backend, tmp_path)
    scored = vs.similarity_search_with_score(TEXTS[7], k=4)
    doc, score = scored[0]
    assert (doc.id, doc.page_content) == ("p7", TEXTS[7])
    assert doc.metadata == {"n": 7, "id": "p7", "score": score, "rank": 1} and score == 0.0  # the same point
    assert [s for _, s in scored] == sorted((s for _, s in scored), reverse=True)
    # The store's own (float64, re-ranked) results, as LangChain Documents.
    (hits,) = vs.store.search(vs.embeddings.model, [TEXTS[7]], 4)
    assert [(d.id, s) for d, s in scored] == [(h.id, h.score) for h in hits]
    assert [d.id for d in vs.similarity_search(TEXTS[7], k=4)] == [h.id for h in hits]
    by_vector = vs.similarity_search_by_vector(vs.embeddings.embed_query(TEXTS[7]), k=4)
    assert [d.id for d in by_vector] == [h.id for h in hits]
    retrieved = vs.as_retriever(search_kwargs={"k": 2}).invoke(TEXTS[12])
    assert [d.id for d in retrieved][:1] == ["p12"] and len(retrieved) == 2

    new_ids = vs.add_texts(["a brand new passage"], [{"source": "late"}])
    (top,) = vs.similarity_search("a brand new passage", k=1)
    assert top.id == new_ids[0] and top.metadata["source"] == "late"
    assert vs.delete([new_ids[0], "p12"]) is True
    assert {d.id for d in vs.similarity_search("a brand new passage", k=41)}.isdisjoint({new_ids[0], "p12"})
    vs.store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_store_reopens_and_refuses_another_model(backend, tmp_path):
    _build(backend, tmp_path).store.close()
    store = open_store(f"{backend}:{tmp_path / backend}")
    vs = LorentzRagVectorStore(store, LorentzRagEmbeddings(FakeModel("geodesic")))
    assert vs.similarity_search(TEXTS[3], k=1)[0].id == "p3"
    with pytest.raises(IndexModelMismatchError, match="built with another model"):
        LorentzRagVectorStore(store, LorentzRagEmbeddings(FakeModel("geodesic", seed=1)))
    store.close()


def test_from_texts_needs_lorentz_rag_embeddings_and_a_store(tmp_path):
    class Other(Embeddings):
        def embed_documents(self, texts):
            return [[0.0] for _ in texts]

        def embed_query(self, text):
            return [0.0]

    with pytest.raises(TypeError, match="LorentzRagEmbeddings"):
        LorentzRagVectorStore.from_texts(TEXTS, Other(), store=f"lancedb:{tmp_path}")
    with pytest.raises(ValueError, match="give store= one of lancedb:PATH, qdrant:PATH or qdrant"):
        LorentzRagVectorStore.from_texts(TEXTS, LorentzRagEmbeddings(FakeModel("cosine")))


def test_cosine_and_euclidean_models_in_a_store(tmp_path):
    for form in ("cosine", "euclidean"):
        vs = _build("lancedb", tmp_path / form, FakeModel(form))
        assert vs.similarity_search(TEXTS[5], k=1)[0].id == "p5"
        vs.store.close()


def test_the_embeddings_docs_warn_against_dot_product_ann_stores():
    doc = LorentzRagEmbeddings.__doc__
    assert "recall@10 about 1-2% under HNSW" in doc and "LorentzRagVectorStore" in doc
