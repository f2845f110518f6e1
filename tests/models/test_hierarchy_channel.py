"""The hierarchy channel H (lorentz_rag.models.hierarchy_channel) and its training
(lorentz_rag.training.hierarchy_channel): geometry of its points, config checks, save / load, a model with two
channels (S's rankings unchanged, the mixed relation search against a brute-force reference), the targets and
a training run that learns a synthetic tree."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lorentz_rag.models import load_model, packaged_minilm_path
from lorentz_rag.models.hierarchy_channel import (
    CHANNEL_FOLDER,
    HierarchyChannel,
    HierarchyChannelConfig,
    load_hierarchy_channel,
)
from lorentz_rag.search.graph_knn import ConceptGraph, GraphKnnSettings, mix_scores
from lorentz_rag.training.hierarchy_channel import (
    ChannelTrainingSettings,
    build_channel_targets,
    concept_features,
    train_hierarchy_channel,
)


def _channel(
    geometry: str = "lorentz", dim: int = 8, input_dim: int = 12, seed: int = 0, **kw
) -> HierarchyChannel:
    torch.manual_seed(seed)
    return HierarchyChannel(HierarchyChannelConfig(input_dim=input_dim, dim=dim, geometry=geometry, **kw))


# --- points ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("curvature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("max_radius", [1.0, 8.0])
def test_lorentz_points_lie_on_the_hyperboloid_at_the_polar_radius(
    seed, dtype, curvature, max_radius
) -> None:
    channel = _channel(curvature=curvature, max_radius=max_radius, seed=seed).to(dtype)
    x = torch.randn(64, 12, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 3
    points = channel(x)
    u, r = channel.polar(x)
    assert points.shape == (64, 9) and points.dtype == dtype
    assert torch.isfinite(points).all()
    # <x, x>_L = -1/c and d(o, x) = r, both against float64 references.
    p64 = points.double()
    inner = -(p64[:, 0] ** 2) + (p64[:, 1:] ** 2).sum(-1)
    tol = 1e-9 if dtype == torch.float64 else 2e-3 * math.cosh(math.sqrt(curvature) * max_radius)
    assert torch.allclose(inner, torch.full_like(inner, -1.0 / curvature), atol=tol, rtol=1e-6)
    rtol = 1e-9 if dtype == torch.float64 else 1e-3
    assert torch.allclose(channel.radius(points).double(), r.double(), rtol=rtol, atol=rtol)
    assert (r > 0).all() and (r < max_radius).all()
    assert torch.allclose(u.norm(dim=-1).double(), torch.ones(64, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("geometry", ["lorentz", "euclidean"])
@pytest.mark.parametrize("relation", ["broader", "narrower"])
def test_scores_and_gradients_are_finite_even_for_identical_points(geometry, relation) -> None:
    channel = _channel(geometry)
    x = torch.randn(6, 12)
    x = torch.cat([x, x[:2]])  # repeated rows: distance 0
    points = channel(x)
    scores = channel.relation_scores(points, points, relation)
    assert torch.isfinite(scores).all()
    scores.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in channel.parameters())


def test_euclidean_twin_is_r_times_u() -> None:
    channel = _channel("euclidean", dim=5)
    x = torch.randn(10, 12)
    u, r = channel.polar(x)
    assert channel(x).shape == (10, 5)
    assert torch.allclose(channel(x), r[:, None] * u)
    assert torch.allclose(channel.radius(channel(x)), r, atol=1e-6)


def test_broader_is_narrower_transposed() -> None:
    channel = _channel()
    p = channel(torch.randn(7, 12))
    assert torch.allclose(
        channel.relation_scores(p, p, "broader"), channel.relation_scores(p, p, "narrower").T
    )


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("dim", 0, "dim must be an integer >= 1"),
        ("geometry", "poincare", "geometry must be one of"),
        ("curvature", -1.0, "curvature must be a finite number > 0"),
        ("radius_weight", 1.5, "radius_weight must be a number in [0, 1]"),
        ("weights", {"broader": 2.0, "narrower": 0.5}, "weights['broader'] must be a number in [0, 1]"),
        ("weights", {"broader": 0.5}, "exactly the keys"),
    ],
)
def test_bad_config_is_refused_with_one_line(field, value, needle) -> None:
    with pytest.raises(ValueError) as info:
        HierarchyChannelConfig(input_dim=4, **{field: value})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_wrong_input_width_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected embeddings \[n, 12\], got \(3, 5\)"):
        _channel()(torch.randn(3, 5))


# --- saving and loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("geometry", ["lorentz", "euclidean"])
def test_save_and_load_give_identical_points(tmp_path: Path, geometry: str) -> None:
    channel = _channel(geometry, weights={"broader": 0.3, "narrower": 0.7})
    channel.save(tmp_path)
    loaded = load_hierarchy_channel(tmp_path)
    assert loaded is not None and loaded.config == channel.config
    x = torch.randn(20, 12)
    assert torch.equal(loaded(x), channel(x))
    assert loaded.fingerprint() == channel.fingerprint()
    assert load_hierarchy_channel(tmp_path / "elsewhere") is None


def test_loading_refuses_weights_of_another_shape(tmp_path: Path) -> None:
    _channel(dim=8).save(tmp_path)
    config = tmp_path / CHANNEL_FOLDER / "config.json"
    values = json.loads(config.read_text())
    values["dim"] = 16
    config.write_text(json.dumps(values))
    with pytest.raises(ValueError, match="the weights do not match") as info:
        load_hierarchy_channel(tmp_path)
    assert "model.safetensors" in str(info.value) and "\n" not in str(info.value)


def test_loading_refuses_a_damaged_config(tmp_path: Path) -> None:
    _channel().save(tmp_path)
    config = tmp_path / CHANNEL_FOLDER / "config.json"
    config.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_hierarchy_channel(tmp_path)
    config.write_text(json.dumps({"format": 1, "input_dim": 12, "colour": "red"}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        load_hierarchy_channel(tmp_path)


# --- a model with two channels ----------------------------------------------------------------------------

DOCS = [
    "an animal with a backbone",
    "a domesticated carnivorous mammal",
    "a warm-blooded vertebrate that nurses its young",
    "a living organism that feeds on organic matter",
    "a small domesticated feline",
    "a warm-blooded egg-laying vertebrate with feathers",
]
QUERIES = ["puppy", "a young dog", "cat", "sparrow"]


@pytest.fixture(scope="module")
def minilm():
    return load_model(str(packaged_minilm_path()))


def test_two_channel_model_round_trips_and_keeps_similarity_rankings(minilm, tmp_path: Path) -> None:
    plain = minilm.search(QUERIES, DOCS, k=6)
    channel = _channel(input_dim=minilm.embedding_dim, dim=16, weights={"broader": 0.4, "narrower": 0.6})
    minilm.attach_hierarchy_channel(channel)
    try:
        assert minilm.search(QUERIES, DOCS, k=6) == plain  # S is untouched by H
        assert CHANNEL_FOLDER not in "".join(minilm.state_dict())  # H is not part of S's weights
        minilm.save_pretrained(tmp_path / "two")
    finally:
        minilm.attach_hierarchy_channel(None)
    loaded = load_model(str(tmp_path / "two"))
    assert loaded.hierarchy_channel is not None
    assert loaded.hierarchy_channel.fingerprint() == channel.fingerprint()
    assert loaded.search(QUERIES, DOCS, k=6) == plain
    with torch.no_grad():
        expected = channel(minilm.encode(DOCS, "document"))
    assert torch.equal(loaded.encode_hierarchy(DOCS, "document"), expected)
    # Saving the model without its channel into the same folder removes the stale channel.
    minilm.save_pretrained(tmp_path / "two")
    assert load_model(str(tmp_path / "two")).hierarchy_channel is None


@pytest.mark.parametrize("relation", ["broader", "narrower"])
def test_two_channel_relation_search_is_the_brute_force_mix(minilm, relation: str) -> None:
    channel = _channel(input_dim=minilm.embedding_dim, dim=16, weights={"broader": 0.4, "narrower": 0.6})
    minilm.attach_hierarchy_channel(channel)
    try:
        got = minilm.search(QUERIES, DOCS, k=4, relation=relation)
        with pytest.raises(ValueError, match="drop radius_weight"):
            minilm.search(QUERIES, DOCS, k=4, relation=relation, radius_weight=0.5)
    finally:
        minilm.attach_hierarchy_channel(None)
    q, d = minilm.encode(QUERIES, "query"), minilm.encode(DOCS, "document")
    s = minilm.similarity(q.double(), d.double())
    with torch.no_grad():
        h = channel.relation_scores(channel(q).double(), channel(d).double(), relation)
    mixed = mix_scores(s, h, channel.weight(relation))
    top = torch.sort(mixed, dim=1, descending=True, stable=True)
    assert [[p for p, _ in row] for row in got] == top.indices[:, :4].tolist()
    assert np.allclose([[v for _, v in row] for row in got], top.values[:, :4].numpy(), rtol=0, atol=1e-12)


def test_weight_zero_ranks_as_plain_similarity(minilm) -> None:
    channel = _channel(input_dim=minilm.embedding_dim, dim=16, weights={"broader": 0.0, "narrower": 0.0})
    plain = minilm.search(QUERIES, DOCS, k=6)
    minilm.attach_hierarchy_channel(channel)
    try:
        assert [[p for p, _ in r] for r in minilm.search(QUERIES, DOCS, k=6, relation="broader")] == [
            [p for p, _ in r] for r in plain
        ]
    finally:
        minilm.attach_hierarchy_channel(None)


def test_a_channel_over_another_model_is_refused(minilm, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reads embeddings of 12 numbers, this model makes 384"):
        minilm.attach_hierarchy_channel(_channel(input_dim=12))
    minilm.save_pretrained(tmp_path / "m")
    _channel(input_dim=12).save(tmp_path / "m")
    with pytest.raises(ValueError, match="hierarchy_channel: the hierarchy channel reads embeddings of 12"):
        load_model(str(tmp_path / "m"))


# --- training ---------------------------------------------------------------------------------------------


def _tree_graph(depth: int = 4, branching: int = 3, dim: int = 24, seed: int = 0) -> ConceptGraph:
    """A balanced tree whose concepts' embeddings are their parent's plus noise (so S's neighbours are
    relatives), one text per concept, cosine."""
    rng = np.random.default_rng(seed)
    ids, parents, vectors = ["n0"], [[]], [rng.normal(size=dim)]
    frontier = [0]
    for _ in range(depth):
        nxt = []
        for p in frontier:
            for _ in range(branching):
                ids.append(f"n{len(ids)}")
                parents.append([p])
                vectors.append(vectors[p] + 0.6 * rng.normal(size=dim))
                nxt.append(len(ids) - 1)
        frontier = nxt
    emb = torch.tensor(np.stack(vectors), dtype=torch.float32)
    emb = emb / emb.norm(dim=-1, keepdim=True)
    return ConceptGraph(
        ids,
        ids,
        ids,
        torch.arange(len(ids)),
        emb,
        parents,
        similarity="cosine",
        curvature=None,
        settings=GraphKnnSettings(k=5),
    )


def test_targets_exclude_the_child_and_sum_to_one() -> None:
    graph = _tree_graph()
    targets = build_channel_targets(graph, ChannelTrainingSettings(teacher_top=4, mined_from=6))
    for r in range(len(targets)):
        lo, hi = targets.indptr[r], targets.indptr[r + 1]
        concept = targets.child_concept[r]
        if graph.parents[concept]:
            assert math.isclose(targets.probs[lo:hi].sum(), 1.0, rel_tol=1e-9)
            # The parent is always a target, with the largest edge share.
            assert graph.parents[concept][0] in targets.concepts[lo:hi].tolist()
        else:
            assert hi == lo or math.isclose(targets.probs[lo:hi].sum(), 1.0, rel_tol=1e-9)
        assert concept not in targets.concepts[lo:hi].tolist()
        mined = targets.negatives[r][targets.negatives[r] >= 0].tolist()
        ancestors = targets.ancestors[targets.ancestor_indptr[r] : targets.ancestor_indptr[r + 1]].tolist()
        assert concept not in mined and not set(mined) & set(ancestors)


def _parent_rank_mean(channel: HierarchyChannel, graph: ConceptGraph) -> float:
    _, _, cand = concept_features(graph)
    with torch.no_grad():
        p = channel(cand)
        scores = channel.relation_scores(p, p, "broader")
    scores.fill_diagonal_(-math.inf)
    ranks = []
    for c, parents in enumerate(graph.parents):
        if parents:
            ranks.append(int((scores[c] > scores[c, parents[0]]).sum()))
    return float(np.mean(ranks))


@pytest.mark.parametrize("geometry", ["lorentz", "euclidean"])
def test_training_learns_the_tree_and_is_seeded(geometry: str) -> None:
    graph = _tree_graph()
    settings = ChannelTrainingSettings(steps=150, batch_size=32, random_candidates=32, warmup=10, seed=3)
    targets = build_channel_targets(graph, settings)
    child, _, cand = concept_features(graph)
    channel = HierarchyChannel(HierarchyChannelConfig(input_dim=24, dim=8, geometry=geometry, hidden_dim=64))
    torch.manual_seed(0)
    channel.reset_parameters()
    before = _parent_rank_mean(channel, graph)
    summary = train_hierarchy_channel(channel, child, cand, targets, settings)
    after = _parent_rank_mean(channel, graph)
    assert math.isfinite(summary["final_cross_entropy"])
    # 121 concepts: an untrained channel puts the parent tens of places down, a trained one near the top.
    assert after < 3.0 < before
    again = HierarchyChannel(HierarchyChannelConfig(input_dim=24, dim=8, geometry=geometry, hidden_dim=64))
    train_hierarchy_channel(again, child, cand, targets, settings)
    assert again.fingerprint() == channel.fingerprint()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="teacher_weight must lie in"):
        ChannelTrainingSettings(teacher_weight=2.0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        ChannelTrainingSettings(steps=0)


def _check_served(minilm, search, ids: list[str]) -> None:
    """``search(model, queries, k, **kw) -> [[(id, score, text)]]`` over DOCS (an index or a store built with
    S alone) ranks similar as before H was attached, and broader / narrower as ``model.search`` does."""
    plain = search(minilm, QUERIES, 4)
    channel = _channel(input_dim=minilm.embedding_dim, dim=16, weights={"broader": 0.5, "narrower": 0.8})
    minilm.attach_hierarchy_channel(channel)
    try:
        assert search(minilm, QUERIES, 4) == plain
        for relation in ("broader", "narrower"):
            got = search(minilm, QUERIES, 4, relation=relation)
            want = minilm.search(QUERIES, DOCS, k=4, relation=relation)
            assert [[(i, t) for i, _, t in row] for row in got] == [
                [(ids[p], DOCS[p]) for p, _ in row] for row in want
            ]
            # Stored float32 vectors: the same ranking, scores within float32 rounding.
            assert np.allclose(
                [[s for _, s, _ in r] for r in got], [[s for _, s in r] for r in want], atol=1e-4
            )
        with pytest.raises(ValueError, match="drop radius_weight"):
            search(minilm, QUERIES, 4, relation="broader", radius_weight=0.2)
    finally:
        minilm.attach_hierarchy_channel(None)


def test_a_vector_index_serves_the_two_channel_search(minilm) -> None:
    from lorentz_rag.eval.index import VectorIndex

    ids = [f"d{i}" for i in range(len(DOCS))]
    index = VectorIndex.from_model(minilm, ids, DOCS)
    text = dict(zip(ids, DOCS))

    def search(model, queries, k, **kw):
        return [[(d, s, text[d]) for d, s in row] for row in index.search(model, queries, k, **kw)]

    _check_served(minilm, search, ids)


def test_the_langchain_retriever_ranks_relations_by_the_channels(minilm) -> None:
    from lorentz_rag.integrations.langchain import LorentzRagRetriever

    channel = _channel(input_dim=minilm.embedding_dim, dim=16, weights={"broader": 0.6, "narrower": 0.6})
    minilm.attach_hierarchy_channel(channel)
    try:
        retriever = LorentzRagRetriever.from_texts(minilm, DOCS, k=3)
        retriever.relation = "broader"
        got = [d.id for d in retriever.invoke(QUERIES[1])]
        want = minilm.search([QUERIES[1]], DOCS, k=3, relation="broader")[0]
        assert got == [str(p) for p, _ in want]
        with pytest.raises(ValueError, match="relation must be similar, broader or narrower"):
            LorentzRagRetriever(model=minilm, index=retriever.index, texts=retriever.texts, relation="wider")
    finally:
        minilm.attach_hierarchy_channel(None)


@pytest.mark.parametrize("backend", ["lancedb", "qdrant"])
def test_a_local_store_serves_the_two_channel_search(minilm, tmp_path: Path, backend: str) -> None:
    from lorentz_rag.stores import create_store, layout_for_model

    ids = [f"d{i}" for i in range(len(DOCS))]
    store = create_store(f"{backend}:{tmp_path / 'db'}", layout_for_model(minilm))
    store.add_texts(minilm, DOCS, ids=ids)

    def search(model, queries, k, **kw):
        return [[(h.id, h.score, h.text) for h in row] for row in store.search(model, queries, k, **kw)]

    try:
        _check_served(minilm, search, ids)
    finally:
        store.close()
