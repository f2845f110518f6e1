"""``EmbeddingModel.search(..., relation=...)``, the index and ``lorentz-rag search --relation``: the same exact
rankings for HyTE-H and the Euclidean-distance twin; cosine models refused (no radius)."""

from __future__ import annotations

import json

import pytest
import torch

from lorentz_rag import cli
from lorentz_rag.eval import index as index_module
from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.geometry.relation import relation_pairwise
from lorentz_rag.models import build_model

DOCS = [
    "entity",
    "an animal",
    "a dog, a domesticated canine",
    "a puppy, a young dog",
    "a cat",
    "a plant",
    "a tree, a tall woody plant",
    "an oak tree",
    "a vehicle",
    "a car with four wheels",
]
QUERIES = ["a young dog", "an oak", "a car"]
COMMON = {
    "model_name": "all-MiniLM-L6-v2",
    "embedding_dim": 384,
    "projection_init": "identity",
    "freeze_base": True,
    "query_prefix": "",
    "document_prefix": "",
    "max_seq_length": 32,
}


def _model(kind: str):
    torch.manual_seed(0)
    if kind == "hyte_h":
        model = build_model({"model_type": "hyte_h", "hyte_h_head": "pooled", **COMMON})
    else:
        model = build_model(
            {
                "model_type": "euclidean",
                "euclidean_base": "pretrained",
                "euclidean_head": "direction_norm",
                "similarity": "euclidean",
                **COMMON,
            }
        )
    with torch.no_grad():  # radii that differ from text to text, as after hierarchy training
        model.head.radius.weight.normal_(std=0.05)
    return model


@pytest.fixture(scope="module", params=["hyte_h", "twin"])
def model(request):
    return _model(request.param)


def test_model_search_ranks_every_document_by_the_relation_score(model) -> None:
    docs = model.encode(DOCS, prompt_type="document").double()
    queries = model.encode(QUERIES, prompt_type="query").double()
    c = model.curvature()
    c = None if c is None else float(c.detach())
    for relation in ("broader", "narrower"):
        hits = model.search(QUERIES, DOCS, k=4, relation=relation, radius_weight=0.7)
        ref = relation_pairwise(queries, docs, relation, model.settings.similarity, c, 0.7)
        order = torch.sort(ref, dim=1, descending=True, stable=True)
        assert [[p for p, _ in row] for row in hits] == order.indices[:, :4].tolist()
        torch.testing.assert_close(
            torch.tensor([[s for _, s in row] for row in hits], dtype=torch.float64), order.values[:, :4]
        )
        # Document embeddings instead of texts give the same result.
        assert model.search(QUERIES, docs.float(), k=4, relation=relation, radius_weight=0.7) == hits
    similar = model.search(QUERIES, DOCS, k=3)
    sim = model.similarity(queries, docs)
    assert [[p for p, _ in row] for row in similar] == torch.sort(
        sim, dim=1, descending=True, stable=True
    ).indices[:, :3].tolist()
    broader = model.search(QUERIES, DOCS, k=3, relation="broader")
    assert broader != similar


def test_index_and_cli_search_with_a_relation_agree_with_the_model(
    model, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(index_module, "load_model", lambda path: model)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(DOCS)))
    out = tmp_path / "ix"
    assert (
        cli.main(["index", "build", "--model", str(tmp_path), "--corpus", str(corpus), "--out", str(out)])
        == 0
    )
    index = VectorIndex.load(out)
    expected = model.search(QUERIES, DOCS, k=3, relation="narrower", radius_weight=0.3)
    got = index.search(model, QUERIES, 3, relation="narrower", radius_weight=0.3)
    assert [[d for d, _ in row] for row in got] == [[f"d{p}" for p, _ in row] for row in expected]
    for row, ref in zip(got, expected):
        torch.testing.assert_close([s for _, s in row], [s for _, s in ref], rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    args = [
        "search",
        "--index",
        str(out),
        QUERIES[0],
        "-k",
        "3",
        "--relation",
        "narrower",
        "--radius-weight",
        "0.3",
    ]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in printed[1:4]] == [d for d, _ in got[0]]


def test_cosine_models_refuse_broader_and_narrower(capsys) -> None:
    torch.manual_seed(0)
    cosine = build_model({"model_type": "euclidean", "euclidean_base": "pretrained", **COMMON})
    with pytest.raises(ValueError, match="no radius"):
        cosine.search(["a dog"], DOCS, relation="broader")
    assert len(cosine.search(["a dog"], DOCS, k=2)[0]) == 2
    with pytest.raises(ValueError, match="unknown relation"):
        cosine.search(["a dog"], DOCS, relation="above")
