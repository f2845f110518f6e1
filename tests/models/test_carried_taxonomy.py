"""A model that carries its taxonomy (``MODEL/taxonomy/``) and a hierarchy channel: relation search is graph-kNN
mixed with H everywhere the model searches, equal to a brute-force reference; the taxonomy saves, loads and
refuses a damaged file in one line; ``relation_route`` picks the score and refuses what it would ignore."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lorentz_rag.models import load_model, packaged_minilm_path
from lorentz_rag.models.companions import TAXONOMY_FOLDER
from lorentz_rag.models.hierarchy_channel import HierarchyChannel, HierarchyChannelConfig
from lorentz_rag.search.graph_files import ConceptGraphFileError
from lorentz_rag.search.graph_knn import ConceptGraph, GraphKnnSettings, mix_scores
from lorentz_rag.search.relation import relation_route

ANIMALS = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "animals.jsonl"
DOCS = [
    "an animal with a backbone",  # a concept's definition: linked to it directly
    "a domesticated carnivorous mammal",
    "a small domesticated feline",
    "a warm-blooded egg-laying vertebrate with feathers",
    "the sea",
    "a living organism that feeds on organic matter",
]
QUERIES = ["puppy", "a young dog", "cat", "sparrow"]


@pytest.fixture(scope="module")
def minilm():
    return load_model(str(packaged_minilm_path()))


@pytest.fixture(scope="module")
def graph(minilm) -> ConceptGraph:
    return ConceptGraph.from_taxonomy(minilm, ANIMALS, GraphKnnSettings(k=4))


def _channel(input_dim: int, graph_weight: float) -> HierarchyChannel:
    torch.manual_seed(0)
    return HierarchyChannel(
        HierarchyChannelConfig(
            input_dim=input_dim,
            dim=16,
            weights={"broader": 0.4, "narrower": 0.6},
            graph_weights={"broader": graph_weight, "narrower": graph_weight},
        )
    )


class _Carrying:
    """Attach a graph and a channel to the shared model for one test, and take them off again."""

    def __init__(self, model, graph, channel) -> None:
        self.model, self.graph, self.channel = model, graph, channel

    def __enter__(self):
        self.model.attach_concept_graph(self.graph)
        self.model.attach_hierarchy_channel(self.channel)
        return self.model

    def __exit__(self, *exc) -> None:
        self.model.attach_concept_graph(None)
        self.model.attach_hierarchy_channel(None)


def _reference(model, graph, channel, relation, docs, doc_ids=None):
    """The three-way mix by hand: (1 - v) z((1 - w) z(S) + w z(G)) + v z(H), sorted stably."""
    q = model.encode(QUERIES, "query")
    d = docs if isinstance(docs, torch.Tensor) else model.encode(docs, "document")
    texts = None if isinstance(docs, torch.Tensor) else docs
    ids = doc_ids or [f"\0{i}" for i in range(len(d))]
    links = graph.link_documents(ids, texts, d)
    s = model.similarity(q.double(), d.double())
    votes = graph.votes(q, relation) @ links.matrix(len(graph), graph.settings.temperature)
    g = mix_scores(
        s, torch.from_numpy(np.asarray(votes.todense(), dtype=np.float64)), graph.settings.graph_weight
    )
    if channel is not None and channel.graph_weight(relation) > 0:
        with torch.no_grad():
            h = channel.relation_scores(channel(q.float()).double(), channel(d.float()).double(), relation)
        g = mix_scores(g, h, channel.graph_weight(relation))
    return torch.sort(g, dim=1, descending=True, stable=True)


@pytest.mark.parametrize("relation", ["broader", "narrower"])
@pytest.mark.parametrize("graph_weight", [0.0, 0.5])
def test_model_search_is_graph_knn_mixed_with_h(minilm, graph, relation, graph_weight) -> None:
    channel = _channel(minilm.embedding_dim, graph_weight)
    with _Carrying(minilm, graph, channel) as model:
        got = model.search(QUERIES, DOCS, k=5, relation=relation)
        with pytest.raises(ValueError, match=r"a taxonomy is at hand.*drop radius_weight"):
            model.search(QUERIES, DOCS, k=5, relation=relation, radius_weight=0.5)
        plain = model.search(QUERIES, DOCS, k=5)
    top = _reference(minilm, graph, channel, relation, DOCS)
    assert [[p for p, _ in row] for row in got] == top.indices[:, :5].tolist()
    assert np.allclose([[v for _, v in row] for row in got], top.values[:, :5].numpy(), rtol=0, atol=1e-12)
    assert plain == minilm.search(QUERIES, DOCS, k=5)  # similarity ignores the graph and H


def test_graph_weight_zero_is_graph_knn_alone(minilm, graph) -> None:
    alone = minilm.search(QUERIES, DOCS, k=6, relation="broader", taxonomy=graph)
    with _Carrying(minilm, graph, _channel(minilm.embedding_dim, 0.0)) as model:
        carried = model.search(QUERIES, DOCS, k=6, relation="broader")
    assert [[p for p, _ in r] for r in carried] == [[p for p, _ in r] for r in alone]


def test_the_carried_taxonomy_round_trips(minilm, graph, tmp_path: Path) -> None:
    channel = _channel(minilm.embedding_dim, 0.5)
    with _Carrying(minilm, graph, channel) as model:
        want = model.search(QUERIES, DOCS, k=6, relation="broader")
        model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / TAXONOMY_FOLDER / "taxonomy.json").is_file()
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.concept_graph.concept_ids == graph.concept_ids
    assert torch.equal(loaded.concept_graph.text_embeddings, graph.text_embeddings)
    assert loaded.hierarchy_channel.config.graph_weights == {"broader": 0.5, "narrower": 0.5}
    assert loaded.search(QUERIES, DOCS, k=6, relation="broader") == want
    # Saving the model without them into the same folder removes the stale ones.
    minilm.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"))
    assert again.concept_graph is None and again.hierarchy_channel is None


@pytest.mark.parametrize("damage", ["json", "tensors", "missing"])
def test_a_damaged_carried_taxonomy_is_refused_in_one_line(minilm, graph, tmp_path: Path, damage) -> None:
    with _Carrying(minilm, graph, None) as model:
        model.save_pretrained(tmp_path / "m")
    folder = tmp_path / "m" / TAXONOMY_FOLDER
    if damage == "json":
        (folder / "taxonomy.json").write_text('{"format_version": 1, "settings": {"k": 0}}')
    elif damage == "tensors":
        data = (folder / "taxonomy.safetensors").read_bytes()
        (folder / "taxonomy.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (folder / "taxonomy.safetensors").unlink()
    with pytest.raises(ConceptGraphFileError) as info:
        load_model(str(tmp_path / "m"))
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_a_taxonomy_embedded_by_another_model_is_refused(minilm) -> None:
    other = ConceptGraph(
        ["a"], ["a"], ["a"], torch.tensor([0]), torch.zeros(1, 12), [[]], similarity="cosine", curvature=None
    )
    with pytest.raises(ValueError, match="12 dimensions, the model 384"):
        minilm.attach_concept_graph(other)
    with pytest.raises(TypeError, match="ConceptGraph"):
        minilm.attach_concept_graph("animals.jsonl")


def test_a_vector_index_uses_the_carried_taxonomy(minilm, graph) -> None:
    from lorentz_rag.eval.index import VectorIndex

    ids = [f"d{i}" for i in range(len(DOCS))]
    index = VectorIndex.from_model(minilm, ids, DOCS)
    channel = _channel(minilm.embedding_dim, 0.5)
    with _Carrying(minilm, graph, channel) as model:
        got = index.search(model, QUERIES, 5, relation="narrower")
        # The index keeps no texts: its documents link by id, else to their nearest concepts.
        want = model.search(QUERIES, index.stored_embeddings(), k=5, relation="narrower", doc_ids=ids)
    assert [[d for d, _ in r] for r in got] == [[ids[p] for p, _ in r] for r in want]
    assert np.allclose([[s for _, s in r] for r in got], [[s for _, s in r] for r in want], atol=1e-12)


@pytest.mark.parametrize("backend", ["lancedb", "qdrant"])
def test_a_store_uses_the_carried_taxonomy(minilm, graph, tmp_path: Path, backend: str) -> None:
    from lorentz_rag.stores import create_store, layout_for_model

    ids = [f"d{i}" for i in range(len(DOCS))]
    store = create_store(f"{backend}:{tmp_path / 'db'}", layout_for_model(minilm))
    try:
        store.add_texts(minilm, DOCS, ids=ids)
        channel = _channel(minilm.embedding_dim, 0.5)
        with _Carrying(minilm, graph, channel) as model:
            got = store.search(model, QUERIES, 5, relation="broader")
            want = model.search(QUERIES, DOCS, k=5, relation="broader", doc_ids=ids)
    finally:
        store.close()
    assert [[h.id for h in r] for r in got] == [[ids[p] for p, _ in r] for r in want]
    # Stored float32 vectors: the same ranking, scores within float32 rounding.
    assert np.allclose([[h.score for h in r] for r in got], [[s for _, s in r] for r in want], atol=1e-4)


def test_relation_route_picks_the_score_and_refuses_what_it_would_ignore(graph) -> None:
    channel = _channel(384, 0.5)
    assert relation_route("similar", channel=channel, graph=graph) == "similar"
    assert relation_route("broader", channel=channel, graph=graph) == "graph"
    assert relation_route("broader", channel=channel) == "channel"
    assert relation_route("narrower", radius_weight=0.3) == "geometric"
    with pytest.raises(ValueError, match="unknown relation 'wider'"):
        relation_route("wider")
    with pytest.raises(ValueError, match=r"^X: --radius-weight weighs .* drop --radius-weight$"):
        relation_route("broader", graph=graph, radius_weight=0.1, where="X", option="--radius-weight")
    with pytest.raises(ValueError, match="hierarchy channel, whose radius weight"):
        relation_route("broader", channel=channel, radius_weight=0.1)


def test_an_old_channel_config_without_graph_weights_loads_with_graph_knn_alone(minilm, tmp_path) -> None:
    channel = _channel(minilm.embedding_dim, 0.5)
    channel.save(tmp_path)
    config = tmp_path / "hierarchy_channel" / "config.json"
    values = json.loads(config.read_text())
    del values["graph_weights"]
    config.write_text(json.dumps(values))
    from lorentz_rag.models.hierarchy_channel import load_hierarchy_channel

    assert load_hierarchy_channel(tmp_path).config.graph_weights == {"broader": 0.0, "narrower": 0.0}


def test_a_relation_kept_out_of_the_graph_ranks_by_the_two_channels(minilm, graph, tmp_path) -> None:
    channel = _channel(minilm.embedding_dim, 0.5)
    channel.config.graph_relations = ["broader"]
    assert relation_route("narrower", channel=channel, graph=graph) == "channel"
    assert relation_route("broader", channel=channel, graph=graph) == "graph"
    with _Carrying(minilm, graph, channel) as model:
        narrower = model.search(QUERIES, DOCS, k=6, relation="narrower")
    with _Carrying(minilm, None, channel) as model:
        assert narrower == model.search(QUERIES, DOCS, k=6, relation="narrower")
    # Every backend honours it, with the taxonomy carried by the model or attached to the index.
    from lorentz_rag.eval.index import VectorIndex
    from lorentz_rag.eval.taxonomy_attachment import attach_taxonomy
    from lorentz_rag.stores import create_store, layout_for_model

    ids = [f"d{i}" for i in range(len(DOCS))]
    index = VectorIndex.from_model(minilm, ids, DOCS)
    store = create_store(f"lancedb:{tmp_path / 'db'}", layout_for_model(minilm))
    try:
        store.add_texts(minilm, DOCS, ids=ids)
        with _Carrying(minilm, graph, channel) as model:
            # The index and store keep float32 vectors: the same order, the scores within float32 rounding.
            want = [[ids[p] for p, _ in row] for row in narrower]
            assert [
                [d for d, _ in row] for row in index.search(model, QUERIES, 6, relation="narrower")
            ] == want
            assert [
                [h.id for h in row] for row in store.search(model, QUERIES, 6, relation="narrower")
            ] == want
            attach_taxonomy(index, model, graph, DOCS)
            assert [
                [d for d, _ in row] for row in index.search(model, QUERIES, 6, relation="narrower")
            ] == want
            # broader still ranks by the graph (the index links by id and text, as model.search with doc_ids).
            broader = model.search(QUERIES, DOCS, k=6, relation="broader", doc_ids=ids)
            got = index.search(model, QUERIES, 6, relation="broader")
            assert [[d for d, _ in row] for row in got] == [[ids[p] for p, _ in row] for row in broader]
    finally:
        store.close()
    with pytest.raises(ValueError, match="graph_relations must be a list of 'broader' / 'narrower'"):
        HierarchyChannelConfig(input_dim=4, graph_relations=["wider"])


def test_an_index_links_its_documents_to_a_carried_taxonomy_once(minilm, graph, monkeypatch) -> None:
    from lorentz_rag.eval.index import VectorIndex

    ids = [f"d{i}" for i in range(len(DOCS))]
    index = VectorIndex.from_model(minilm, ids, DOCS)
    graph.__dict__.pop("_links_cache", None)  # the module's graph may have linked these ids already
    calls = []
    real = ConceptGraph.link_documents
    monkeypatch.setattr(
        ConceptGraph, "link_documents", lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    )
    with _Carrying(minilm, graph, _channel(minilm.embedding_dim, 0.5)) as model:
        first = index.search(model, QUERIES, 3, relation="broader")
        assert index.search(model, QUERIES, 3, relation="broader") == first
    assert len(calls) == 1
