"""The stores' radius bound from real models (lorentz_rag.stores.layout), R's formula, and the Qdrant
server-mode search parameters (exact vs HNSW) with a recording client in place of a server."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from store_fakes import points

from lorentz_rag.geometry import lorentz
from lorentz_rag.models import build_model, packaged_minilm_path
from lorentz_rag.stores import QdrantStore, StoreLayout, create_store, layout_for_model, model_radius_bound
from lorentz_rag.stores.qdrant import point_id

MINILM = str(packaged_minilm_path())
TEXTS = ["Hyperbolic space grows exponentially.", "A tree embeds with low distortion.", "ok", "a b c d e f g"]


def _model(**args):
    torch.manual_seed(0)
    return build_model({"model_name": MINILM, "max_seq_length": 32, **args}).eval()


def test_hyte_h_token_head_bound_is_its_clip_and_its_documents_fit():
    model = _model(model_type="hyte_h", embedding_dim=24, projection_scale=3.0, max_norm=2.0, pooling="cls")
    assert model_radius_bound(model) == 2.0
    layout = layout_for_model(model)
    emb = model.encode(TEXTS, prompt_type="document")
    assert float(lorentz.radius(emb.double(), 1.0).max()) == pytest.approx(2.0, abs=1e-4)  # at the clip
    vectors = layout.document_vectors([str(i) for i in range(len(TEXTS))], emb)  # no refusal
    # The reduction: every stored vector has the same norm R.
    np.testing.assert_allclose(
        np.linalg.norm(vectors.astype(np.float64), axis=1), layout.norm_bound, rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"beyond the store's radius bound 1\.5"):
        layout_for_model(model, max_radius=1.5).document_vectors(["a", "b", "c", "d"], emb)


def test_pooled_head_and_euclidean_twin_bounds_are_their_heads_max_radius():
    pooled = _model(model_type="hyte_h", hyte_h_head="pooled", embedding_dim=24, max_norm=6.0)
    assert model_radius_bound(pooled) == pooled.head.max_radius == 6.0
    twin = _model(
        model_type="euclidean",
        euclidean_base="pretrained",
        euclidean_head="direction_norm",
        similarity="euclidean",
        embedding_dim=24,
    )
    assert model_radius_bound(twin) == twin.head.max_radius
    assert layout_for_model(twin).similarity == "euclidean"


def test_models_without_a_bound_need_max_radius():
    blocks = _model(model_type="hyte_h", embedding_dim=16, num_hyperbolic_blocks=1, num_attention_heads=2)
    fh = _model(model_type="hyte_fh", hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    for model in (blocks, fh):
        assert model_radius_bound(model) is None
        with pytest.raises(ValueError, match=r"has no radius bound .*max_radius \(--max-radius\)"):
            layout_for_model(model)
        assert layout_for_model(model, max_radius=8.0).max_radius == 8.0
    cosine = _model(model_type="euclidean", hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    assert layout_for_model(cosine).max_radius is None and layout_for_model(
        cosine
    ).norm_bound == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_norm_bound_is_the_norm_of_a_point_at_the_radius_bound(c):
    r = 4.0
    x = lorentz.expmap0(torch.tensor([[r, 0.0, 0.0]], dtype=torch.float64) / 1.0, c)
    layout = StoreLayout("geodesic", c, 4, r)
    assert layout.norm_bound == pytest.approx(float(x.norm()) * (1 + 1e-4), rel=1e-12)
    assert layout.norm_bound == pytest.approx(math.sqrt(math.cosh(2 * math.sqrt(c) * r) / c) * (1 + 1e-4))


class _RecordingClient:
    """Stands in for a QdrantClient talking to a server: records the search requests, returns the points."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors, self.requests = vectors, []

    def query_batch_points(self, name, requests):
        self.requests.extend(requests)
        out = []
        for req in requests:
            d = np.linalg.norm(self.vectors - np.asarray(req.query), axis=1)
            rows = np.argsort(d)[: req.limit]
            out.append(
                SimpleNamespace(
                    points=[
                        SimpleNamespace(
                            score=float(d[i]),
                            vector=self.vectors[i].tolist(),
                            payload={"id": f"d{i}", "seq": int(i), "text": "", "metadata": ""},
                        )
                        for i in rows
                    ]
                )
            )
        return out

    def count(self, name, exact=True):
        return SimpleNamespace(count=len(self.vectors))


def test_qdrant_server_searches_through_hnsw_unless_exact():
    layout = StoreLayout("geodesic", 1.0, 9, 3.0)
    docs = points(50, "geodesic", seed=3)
    client = _RecordingClient(layout.document_vectors([f"d{i}" for i in range(50)], docs))
    store = QdrantStore(client, layout, name="c", location="qdrant+http://server:6333", hnsw_ef=64)
    assert store.has_ann_index()
    queries = points(2, "geodesic", seed=4)
    ann = store.search_embeddings(queries, 5)
    assert [r.params.exact for r in client.requests] == [False, False]
    assert client.requests[0].params.hnsw_ef == 64 and client.requests[0].limit == 21  # max(4k, k+16)
    client.requests.clear()
    exact = store.search_embeddings(queries, 5, exact=True)
    assert {r.params.exact for r in client.requests} == {True}
    assert [[h.id for h in row] for row in ann] == [[h.id for h in row] for row in exact]
    assert point_id("d1") == point_id("d1") != point_id("d2")
    # A collection without a graph (index build --kind flat: hnsw_m=0) is searched by brute force, certified.
    flat = QdrantStore(client, layout, name="c", location="qdrant+http://server:6333", hnsw_m=0)
    assert not flat.has_ann_index()
    client.requests.clear()
    assert [[h.id for h in row] for row in flat.search_embeddings(queries, 5)] == [
        [h.id for h in row] for row in exact
    ]
    assert {r.params.exact for r in client.requests} == {True}


@pytest.mark.parametrize(("module", "spec"), [("lancedb", "lancedb:{}"), ("qdrant_client", "qdrant:{}")])
def test_a_missing_client_names_the_extra(module, spec, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'lorentz-rag\[stores\]'"):
        create_store(spec.format(tmp_path / "db"), StoreLayout("cosine", None, 4, None))


def test_the_recorded_layout_names_its_stored_form_and_a_different_one_is_refused():
    layout = StoreLayout("geodesic", 1.0, 9, 3.0, model_fingerprint="f")
    data = json.loads(layout.to_json())
    assert data["stored_form"] == "l2_reduced" and data["norm_bound"] == layout.norm_bound
    assert StoreLayout.from_json(layout.to_json(), "here") == layout
    for change in ({"stored_form": "raw"}, {"norm_bound": 2.0}, {"format_version": 2}, {"dim": "x"}):
        with pytest.raises(ValueError, match="here: unreadable lorentz-rag store metadata"):
            StoreLayout.from_json(json.dumps({**data, **change}), "here")
    assert json.loads(StoreLayout("cosine", None, 4, None).to_json())["stored_form"] == "unit"
