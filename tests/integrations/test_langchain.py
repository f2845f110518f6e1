"""LangChain on faq-dev: the retriever returns exactly the geodesic top-k, and LorentzRagEmbeddings' dot
products rank as the geodesic distance (lorentz_rag.integrations.langchain)."""

from __future__ import annotations

import pytest
import torch
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda

from lorentz_rag.data.beir import document_text, load_beir
from lorentz_rag.data.bundled import faq_dev_path
from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.eval.retrieval import exact_search
from lorentz_rag.geometry.lorentz import ip_query
from lorentz_rag.integrations.langchain import LorentzRagEmbeddings, LorentzRagRetriever
from lorentz_rag.models import build_model, packaged_minilm_path

MINILM = str(packaged_minilm_path())
HYTE_H = {
    "model_type": "hyte_h",
    "hyte_h_head": "pooled",
    "model_name": MINILM,
    "projection_init": "identity",
    "embedding_dim": 384,
    "freeze_base": True,
    "query_prefix": "",
    "document_prefix": "",
    "max_seq_length": 64,
}
K = 10
# Every SUBSAMPLE-th faq-dev query goes through the one-query-at-a-time LangChain calls (each a forward
# pass of its own); the batch rankings they are compared with cover all queries.
SUBSAMPLE = 5


@pytest.fixture(scope="module")
def faq():
    torch.manual_seed(0)
    model = build_model(HYTE_H).eval()
    # Move the head off its start (where every radius is r0 and the ranking is the base's cosine one), so
    # that radii differ between texts and the geodesic ranking is not a cosine ranking in disguise.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    data = load_beir(faq_dev_path())
    doc_ids = list(data.corpus)
    doc_texts = [document_text(d) for d in data.corpus.values()]
    queries = list(data.queries.values())
    docs = model.encode(doc_texts, "document", batch_size=64)
    c = float(model.curvature().detach())
    _, positions = exact_search(model.encode(queries, "query"), docs, K, "geodesic", c)
    geodesic_top = [[doc_ids[i] for i in row] for row in positions.tolist()]
    # The documents embedded above, indexed (VectorIndex.from_model embeds again; from_texts below does).
    index = VectorIndex.from_embeddings(doc_ids, docs, similarity="geodesic", curvature=c)
    return model, doc_ids, doc_texts, queries, docs, geodesic_top, index


def test_faq_dev_radii_differ_so_the_geodesic_ranking_is_not_the_base_cosine_ranking(faq):
    docs = faq[4]
    assert len(docs) >= 300 and float((docs[:, 0].max() - docs[:, 0].min()) / docs[:, 0].mean()) > 1e-3


def test_retriever_returns_the_exact_geodesic_top_k_with_ids_and_scores(faq):
    model, doc_ids, doc_texts, queries, _, geodesic_top, index = faq
    retriever = LorentzRagRetriever(model=model, index=index, texts=dict(zip(doc_ids, doc_texts)), k=K)
    picked = range(0, len(queries), SUBSAMPLE)
    results = retriever.batch([queries[i] for i in picked])
    searched = index.search(model, [queries[i] for i in picked], K)
    assert len(results) == len(picked) >= 60
    assert [[d.metadata["id"] for d in docs] for docs in results] == [geodesic_top[i] for i in picked]
    for docs, hits in zip(results, searched):
        assert [(d.id, d.metadata["id"]) for d in docs] == [(i, i) for i, _ in hits]
        # A query embedded alone and in a batch differs by float32 rounding in the base's matmuls.
        assert [d.metadata["score"] for d in docs] == pytest.approx([s for _, s in hits], rel=1e-5)
        assert [d.metadata["rank"] for d in docs] == list(range(1, K + 1))
    text_of = dict(zip(doc_ids, doc_texts))
    assert all(d.page_content == text_of[d.id] for docs in results for d in docs)


def test_a_tiny_rag_chain_retrieves_faq_dev_context_in_geodesic_order(faq):
    model, doc_ids, doc_texts, queries, _, geodesic_top, _ = faq
    retriever = LorentzRagRetriever.from_texts(
        model, doc_texts, ids=doc_ids, metadatas=[{"source": "faq-dev"}] * len(doc_ids), k=3
    )

    def prompt(inputs: dict) -> str:
        context = "\n".join(f"[{d.metadata['id']}] {d.page_content}" for d in inputs["context"])
        return f"Answer from the context.\n{context}\nQuestion: {inputs['question']}"

    chain = {"context": retriever, "question": RunnableLambda(lambda q: q)} | RunnableLambda(prompt)
    text_of = dict(zip(doc_ids, doc_texts))
    for i in (0, 7, len(queries) - 1):
        want = "\n".join(f"[{d}] {text_of[d]}" for d in geodesic_top[i][:3])
        assert chain.invoke(queries[i]) == f"Answer from the context.\n{want}\nQuestion: {queries[i]}"
    (first,) = retriever.invoke(queries[0])[:1]
    assert isinstance(first, Document) and first.metadata["source"] == "faq-dev"


def test_embeddings_dot_products_rank_faq_dev_as_the_geodesic_distance(faq):
    model, doc_ids, doc_texts, queries, docs, geodesic_top, _ = faq
    embeddings = LorentzRagEmbeddings(model, batch_size=64)
    assert embeddings.metric == "dot"
    doc_vectors = torch.tensor(embeddings.embed_documents(doc_texts), dtype=torch.float64)
    # Documents are the model's points; a query is ip_query(q) = (-q0, qs), so q . x = <q, x>_L.
    torch.testing.assert_close(doc_vectors, docs.double(), atol=0, rtol=0)
    picked = range(0, len(queries), SUBSAMPLE)
    query_vectors = torch.tensor([embeddings.embed_query(queries[i]) for i in picked], dtype=torch.float64)
    q = model.encode([queries[i] for i in picked], "query").double()
    torch.testing.assert_close(query_vectors, ip_query(q), atol=1e-5, rtol=1e-5)
    dot = query_vectors @ doc_vectors.T
    order = torch.sort(dot, dim=1, descending=True, stable=True).indices[:, :K]
    assert [[doc_ids[i] for i in row] for row in order.tolist()] == [geodesic_top[i] for i in picked]
    # The dot product is the Lorentz inner product, a monotone function of the distance.
    c = float(model.curvature().detach())
    distance = -model.similarity(q, docs.double())
    torch.testing.assert_close(dot, -torch.cosh(c**0.5 * distance) / c, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("similarity", "metric"), [("cosine", "dot"), ("euclidean", "l2")], ids=["cosine", "euclidean"]
)
def test_euclidean_models_give_vectors_that_rank_as_the_model_under_their_metric(faq, similarity, metric):
    torch.manual_seed(0)
    args = {"model_type": "euclidean", "euclidean_base": "pretrained", "model_name": MINILM}
    if similarity == "euclidean":
        args.update(euclidean_head="direction_norm", pooling="mean", projection_init="identity")
    model = build_model({**args, "embedding_dim": 384, "similarity": similarity, "max_seq_length": 64}).eval()
    _, _, doc_texts, queries, *_ = faq
    docs, queries = doc_texts[:40], queries[:20]
    embeddings = LorentzRagEmbeddings(model)
    assert embeddings.metric == metric
    d = torch.tensor(embeddings.embed_documents(docs), dtype=torch.float64)
    q = torch.tensor([embeddings.embed_query(t) for t in queries], dtype=torch.float64)
    if metric == "dot":
        torch.testing.assert_close(d.norm(dim=-1), torch.ones(len(docs), dtype=torch.float64))
        store = q @ d.T
    else:
        store = -torch.cdist(q, d)
    want = model.similarity(model.encode(queries, "query").double(), model.encode(docs, "document").double())
    top = [torch.sort(s, dim=1, descending=True, stable=True).indices[:, :5].tolist() for s in (store, want)]
    assert top[0] == top[1]


def test_retriever_refuses_an_index_whose_documents_it_has_no_text_for(faq):
    model, doc_ids, doc_texts, *_, index = faq
    texts = dict(zip(doc_ids[1:], doc_texts[1:]))
    with pytest.raises(ValueError, match=f"texts lacks 1 of the index's 302 document ids .*{doc_ids[0]!r}"):
        LorentzRagRetriever(model=model, index=index, texts=texts)
    with pytest.raises(ValueError, match="k must be >= 1"):
        LorentzRagRetriever(model=model, index=index, texts=dict(zip(doc_ids, doc_texts)), k=0)
