"""Direction + radius heads (hyte_h_head pooled / token_radius, euclidean_head direction_norm), the fair
twin's Euclidean distance, trainable top base layers, and the frozen-base state cache."""

from __future__ import annotations

import pytest
import torch

import lorentz_rag
from lorentz_rag.data.beir import document_text, load_beir
from lorentz_rag.data.bundled import faq_dev_path
from lorentz_rag.eval.retrieval import exact_search
from lorentz_rag.geometry import lorentz
from lorentz_rag.models import build_model
from lorentz_rag.models.heads import DirectionRadiusHead, unfreeze_top_layers
from lorentz_rag.models.hf_base import cached_base_states

TEXTS = ["Hyperbolic space grows exponentially.", "A tree embeds with low distortion.", "ok", "a dog"]
COMMON = {
    "model_name": "all-MiniLM-L6-v2",
    "embedding_dim": 384,
    "projection_init": "identity",
    "freeze_base": True,
    "query_prefix": "",
    "document_prefix": "",
    "max_seq_length": 128,
}


def _pooled(**extra):
    torch.manual_seed(0)
    return build_model({"model_type": "hyte_h", "hyte_h_head": "pooled", **COMMON, **extra})


def _twin(**extra):
    torch.manual_seed(0)
    return build_model(
        {
            "model_type": "euclidean",
            "euclidean_base": "pretrained",
            "euclidean_head": "direction_norm",
            "similarity": "euclidean",
            **COMMON,
            **extra,
        }
    )


def test_head_starts_with_equal_radii_and_the_base_direction() -> None:
    head = DirectionRadiusHead(6, 6, radius_init=2.0, length_feature=True)
    with torch.no_grad():
        head.direction.weight.copy_(torch.eye(6))
        head.direction.bias.zero_()
    h = torch.randn(5, 6)
    u, r = head(h, torch.tensor([1, 2, 3, 4, 5]))
    torch.testing.assert_close(u, torch.nn.functional.normalize(h, dim=-1))
    torch.testing.assert_close(r, torch.full((5,), 2.0))
    with torch.no_grad():
        head.radius.bias.fill_(100.0)  # a runaway radius saturates at the safety bound
    saturated = head(h, torch.ones(5))[1].detach()
    assert torch.isfinite(saturated).all() and float(saturated.max()) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="lengths"):
        head(h)


@pytest.mark.slow
def test_pooled_head_and_fair_twin_rank_faq_dev_exactly_as_the_base_at_step_zero() -> None:
    """Untrained, the pooled head (and the direction + norm twin) is zero-shot MiniLM."""
    data = load_beir(faq_dev_path())
    doc_ids = list(data.corpus)
    docs = [document_text(data.corpus[d]) for d in doc_ids]
    queries = [data.queries[q] for q in data.queries]
    base = lorentz_rag.load_model("all-MiniLM-L6-v2")
    # The identity does not depend on the length: 64 tokens (every model alike) keep the encodes short.
    base.settings.max_seq_length = base.st.max_seq_length = 64
    with cached_base_states():
        rankings = {}
        short = {"max_seq_length": 64}
        for name, model in (("base", base), ("pooled", _pooled(**short)), ("twin", _twin(**short))):
            d = model.encode(docs, prompt_type="document")
            q = model.encode(queries, prompt_type="query")
            c = model.curvature()
            _, pos = exact_search(
                q, d, 10, model.settings.similarity, None if c is None else float(c.detach())
            )
            rankings[name] = pos
            if name != "base":  # every radius (norm) equals r0 = 2 at step 0
                radii = model.radius(d)
                torch.testing.assert_close(radii, torch.full_like(radii, 2.0), rtol=1e-5, atol=1e-5)
    assert torch.equal(rankings["pooled"], rankings["base"])
    assert torch.equal(rankings["twin"], rankings["base"])


def test_token_radius_head_puts_every_token_at_r0_and_pools_with_oem() -> None:
    torch.manual_seed(0)
    model = build_model(
        {"model_type": "hyte_h", "hyte_h_head": "token_radius", **{**COMMON, "max_seq_length": 32}}
    )
    assert model.settings.pooling == "outward_einstein_midpoint"
    batch = model.tokenize(TEXTS, "document")
    with torch.no_grad():
        tokens = model.token_points(**batch)
        radii = lorentz.radius(tokens, model.curvature())
        mask = batch["attention_mask"].bool()
        torch.testing.assert_close(radii[mask], torch.full_like(radii[mask], 2.0), rtol=1e-5, atol=1e-5)
        pooled = model(**batch)
    # The midpoint of points on one sphere lies inside it.
    assert bool((lorentz.radius(pooled, model.curvature()) <= 2.0 + 1e-5).all())


@pytest.mark.parametrize("make", [_pooled, _twin], ids=["pooled", "twin"])
def test_new_heads_do_not_depend_on_padding_or_batch_mates(make) -> None:
    model = make(max_seq_length=32)
    with torch.no_grad():
        model.head.radius.weight.normal_()  # a trained-looking radius head
    together = model.encode(TEXTS, batch_size=4)
    alone = torch.cat([model.encode([t]) for t in TEXTS])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [_pooled, _twin], ids=["pooled", "twin"])
def test_new_heads_save_and_load_to_identical_outputs(make, tmp_path) -> None:
    model = make(max_seq_length=32)
    with torch.no_grad():
        model.head.radius.weight.normal_()
        model.head.radius.bias.fill_(0.1)
    before = model.encode(TEXTS)
    model.save_pretrained(tmp_path / "m")
    again = lorentz_rag.load_model(tmp_path / "m")
    assert again.head_kind == model.head_kind and again.settings.similarity == model.settings.similarity
    assert torch.equal(again.encode(TEXTS), before)


def test_trainable_base_layers_unfreezes_only_the_top_layers() -> None:
    model = _pooled(trainable_base_layers=1, max_seq_length=32)
    trainable = {n for n, p in model.base.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.5.") for n in trainable)
    model.train()
    assert not model.base.training  # the partly frozen base stays in eval mode (no dropout)
    groups = {g["name"] for g in model.param_groups(1e-3, 0.01)}
    assert any(g.startswith("base/") for g in groups)
    with pytest.raises(ValueError, match="has 6 layers"):
        unfreeze_top_layers(model.base, 7)


def test_model_args_reject_inconsistent_heads() -> None:
    with pytest.raises(ValueError, match="pools the base's token states"):
        build_model({"model_type": "hyte_h", "hyte_h_head": "pooled", "pooling": "outward_einstein_midpoint"})
    with pytest.raises(ValueError, match="direction_norm"):
        build_model({"model_type": "hyte_h", "euclidean_head": "direction_norm"})
    with pytest.raises(ValueError, match="similarity='euclidean' is not valid"):
        build_model({"model_type": "hyte_h", "similarity": "euclidean"})


def test_base_state_cache_gives_the_same_states_and_runs_each_text_once() -> None:
    model = _pooled(max_seq_length=32)
    plain = model.encode(TEXTS)
    with cached_base_states() as cache:
        first = model.encode(TEXTS, batch_size=2)
        assert (cache.misses, cache.hits) == (4, 0)
        second = model.encode(list(reversed(TEXTS)), batch_size=3)
        assert (cache.misses, cache.hits) == (4, 4)
        # A changed base (in place) never reads stale states.
        with torch.no_grad():
            model.base.embeddings.word_embeddings.weight.mul_(1.5)
        model.encode(TEXTS[:1])
        assert cache.misses == 5
        # A trainable base is never cached.
        model.base.requires_grad_(True)
        model.encode(TEXTS[:1])
        assert cache.misses == 5 and cache.hits == 4
    torch.testing.assert_close(first, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, plain.flip(0), rtol=1e-5, atol=1e-5)


def test_mteb_and_the_index_respect_the_twins_euclidean_distance() -> None:
    from lorentz_rag.eval.index import VectorIndex
    from lorentz_rag.eval.mteb_adapter import MTEBEncoder

    twin = _twin(max_seq_length=32)
    with torch.no_grad():
        twin.head.radius.weight.normal_()
    encoder = MTEBEncoder(twin)
    assert encoder.scoring == "euclidean"
    q, d = twin.encode(TEXTS[:2]), twin.encode(TEXTS)
    torch.testing.assert_close(
        encoder.similarity(q, d), -torch.cdist(q.double(), d.double()), atol=1e-6, rtol=1e-6
    )
    torch.testing.assert_close(encoder.similarity_pairwise(q, d[:2]), -(q - d[:2]).double().norm(dim=-1))
    with pytest.raises(ValueError, match="ranks by euclidean"):
        MTEBEncoder(twin, scoring="cosine")
    # The index serves the twin's Euclidean distance exactly: (x, -|x|^2/2) documents, (q, 1) queries.
    index = VectorIndex.from_model(twin, ["a", "b", "c", "d"], TEXTS)
    assert index.dim == 384 and index.similarity == "euclidean"
    hits = index.search(twin, TEXTS, k=4)
    assert [row[0][0] for row in hits] == ["a", "b", "c", "d"]  # each text finds itself first
    assert all(row[0][1] == 0.0 for row in hits)
    cosine_model = build_model(
        {"model_type": "euclidean", "euclidean_base": "pretrained", **{**COMMON, "max_seq_length": 32}}
    )
    with pytest.raises(ValueError, match="built for similarity 'euclidean'"):
        index.search(cosine_model, ["a dog"], k=1)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_the_index_ranks_euclidean_distance_exactly_far_from_the_origin(kind: str, tmp_path) -> None:
    from lorentz_rag.eval.index import VectorIndex
    from lorentz_rag.eval.retrieval import exact_search

    g = torch.Generator().manual_seed(0)
    # Large norms with small differences: float32 inner products alone could not order these.
    docs = 50.0 * torch.nn.functional.normalize(torch.randn(400, 16, generator=g), dim=-1)
    docs = docs + 0.05 * torch.randn(400, 16, generator=g)
    queries = docs[:40] + 0.01 * torch.randn(40, 16, generator=g)
    ids = [f"d{i}" for i in range(400)]
    index = VectorIndex.from_embeddings(ids, docs, similarity="euclidean", kind=kind)
    scores, positions = index.search_embeddings(queries, 10)
    want_scores, want_positions = exact_search(queries, docs, 10, "euclidean")
    if kind == "flat":
        assert torch.equal(positions, want_positions)
        torch.testing.assert_close(scores, want_scores, rtol=1e-9, atol=1e-9)
    else:
        recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(positions, want_positions)) / 400
        assert recall > 0.9
    again = VectorIndex.load(index.save(tmp_path / "idx"))
    assert torch.equal(again.search_embeddings(queries, 10)[1], positions)
