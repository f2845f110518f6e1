"""Graph-kNN taxonomy search (lorentz_rag.search.graph_knn): votes and hop discounts against a hand
computation, document links, the exact top-k against a brute-force reference, both directions, the index
folder and CLI round trip, settings validation, and ``eval beir --relation`` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_fake_models import HashingModel

from lorentz_rag import cli
from lorentz_rag.data.beir import write_beir
from lorentz_rag.data.concepts import Concept, Taxonomy
from lorentz_rag.eval import index as index_module
from lorentz_rag.eval import retrieval as retrieval_module
from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.eval.retrieval import evaluate_beir
from lorentz_rag.eval.taxonomy_attachment import TaxonomyAttachmentError, attach_taxonomy
from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry import similarity as sf
from lorentz_rag.models.base import EmbeddingModel
from lorentz_rag.models.companions import ModelCompanions
from lorentz_rag.search.graph_knn import ConceptGraph, GraphKnnSettings, graph_knn_search

ANIMALS = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "animals.jsonl"


def _unit(angle_deg: float) -> list[float]:
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


def _chain_graph(settings: GraphKnnSettings) -> ConceptGraph:
    """A (root) <- B <- C, A <- D; cosine in the plane. B has two texts: its similarity is their max."""
    ids = ["A", "B", "C", "D"]
    texts = ["a", "b", "b2", "c", "d"]
    owner = torch.tensor([0, 1, 1, 2, 3])
    emb = torch.tensor([_unit(90), _unit(0), _unit(20), _unit(10), _unit(-60)])
    return ConceptGraph(
        ids,
        ids,
        texts,
        owner,
        emb,
        [[], [0], [1], [0]],
        similarity="cosine",
        curvature=None,
        settings=settings,
    )


def test_votes_and_hop_discounts_match_a_hand_computation() -> None:
    settings = GraphKnnSettings(k=2, temperature=0.5, hop_discount=0.5, graph_weight=1.0, max_hops=8)
    graph = _chain_graph(settings)
    q = torch.tensor([_unit(14)])
    sims = graph.concept_similarities(q)[0]
    cos = lambda a: math.cos(math.radians(a))  # noqa: E731
    # B: the larger of its texts' similarities (b2 at 6 degrees, not b at 14); float32 embeddings.
    assert sims.tolist() == pytest.approx([cos(76), cos(6), cos(4), cos(74)], abs=1e-7)
    # Neighbours (k = 2): C (4 degrees), then B.
    s_b, s_c = sims[1].item(), sims[2].item()
    w_b, w_c = math.exp((s_b - s_c) / 0.5), 1.0
    broader = graph.votes(q, "broader").toarray()[0]
    # C votes for C (0 hops), B (1), A (2); B for B (0), A (1). D gets nothing.
    hand = [w_c * 0.25 + w_b * 0.5, w_c * 0.5 + w_b, w_c, 0.0]
    assert broader.tolist() == pytest.approx(hand, rel=1e-12)
    narrower = graph.votes(q, "narrower").toarray()[0]
    # C votes for itself; B for itself and C (1 hop).
    assert narrower.tolist() == pytest.approx([0.0, w_b, w_c + 0.5 * w_b, 0.0], rel=1e-12)
    # max_hops bounds the reach: with 1 hop, C no longer reaches A.
    near = GraphKnnSettings(k=2, temperature=0.5, hop_discount=0.5, max_hops=1)
    assert graph.votes(q, "broader", near).toarray()[0].tolist() == pytest.approx(
        [w_b * 0.5, w_c * 0.5 + w_b, w_c, 0.0], rel=1e-12
    )


def test_documents_link_by_id_by_text_or_to_their_nearest_concepts() -> None:
    graph = _chain_graph(GraphKnnSettings(links_per_document=2, temperature=0.5))
    docs = torch.tensor([_unit(0), _unit(0), _unit(-50), _unit(80)])
    links = graph.link_documents(["C", "x1", "x2", "x3"], ["whatever", "B", "free text", "more text"], docs)
    rows = list(zip(links.doc.tolist(), links.concept.tolist(), links.score.tolist(), links.direct.tolist()))
    assert rows[0] == (0, 2, 1.0, True)  # id C
    assert rows[1] == (1, 1, 1.0, True)  # text "B" is B's name
    free = [r for r in rows if r[0] == 2]
    assert [r[1] for r in free] == [3, 1] and not any(r[3] for r in free)  # D (-60), then B (0)
    assert free[0][2] == pytest.approx(math.cos(math.radians(10)))
    m = graph.link_documents(["C", "x1", "x2", "x3"], None, docs).matrix(len(graph), 0.5).toarray()
    # Without texts, x1 links by its vector; every document's weights sum to 1; direct weigh 1.
    assert m.sum(axis=0).tolist() == pytest.approx([1.0] * 4)
    w = np.exp((np.array([free[0][2], free[1][2]]) - free[0][2]) / 0.5)
    assert m[[3, 1], 2].tolist() == pytest.approx((w / w.sum()).tolist())


def _reference(graph: ConceptGraph, links, q: torch.Tensor, docs: torch.Tensor, k: int, relation: str):
    """Graph-kNN the slow way: loops over neighbours, hop tables and links."""
    s = graph.settings
    out_scores, out_pos = [], []
    hop = graph.hop_table(relation)
    lm = links.matrix(len(graph), s.temperature).toarray()
    for row in q.double():
        csim = graph.concept_similarities(row[None])[0]
        order = sorted(range(len(graph)), key=lambda i: (-csim[i].item(), i))[: s.k]
        votes = np.zeros(len(graph))
        for c in order:
            weight = math.exp((csim[c].item() - csim[order[0]].item()) / s.temperature)
            for a, h in hop[c].items():
                votes[a] += weight * s.hop_discount**h
        g = torch.from_numpy(votes @ lm)
        sim = (
            torch.tensor(
                [float(torch.nn.functional.cosine_similarity(row, d.double(), dim=0)) for d in docs],
                dtype=torch.float64,
            )
            if graph.similarity == "cosine"
            else None
        )
        if sim is None:
            lift = lambda x: lorentz.lift(x[..., 1:], graph.curvature)  # noqa: E731
            sim = sf.pairwise(lift(row[None]), lift(docs.double()), graph.similarity, graph.curvature)[0]

        def z(x):
            sd = (x - x.mean()).pow(2).mean().sqrt()
            return (x - x.mean()) / sd if sd > 0 else torch.zeros_like(x)

        mixed = (1 - s.graph_weight) * z(sim) + s.graph_weight * z(g)
        rank = sorted(range(len(docs)), key=lambda i: (-mixed[i].item(), i))[:k]
        out_pos.append(rank)
        out_scores.append([mixed[i].item() for i in rank])
    return torch.tensor(out_scores, dtype=torch.float64), torch.tensor(out_pos)


@pytest.mark.parametrize("hyperbolic", [True, False])
@pytest.mark.parametrize("relation", ["broader", "narrower"])
def test_exact_top_k_equals_brute_force(hyperbolic: bool, relation: str) -> None:
    model = HashingModel(16, hyperbolic=hyperbolic)
    settings = GraphKnnSettings(
        k=4, temperature=0.1, hop_discount=0.7, graph_weight=0.6, links_per_document=2
    )
    graph = ConceptGraph.from_taxonomy(model, ANIMALS, settings)
    texts = [
        "a dog that barks",
        "sparrow",
        "a small invertebrate with six legs",
        "companionship",
        "the sea",
        "an animal with a backbone",
        "cat food",
        "hexapod",
    ]
    ids = ["t0", "t1", "EX:0010", "t3", "t4", "t5", "t6", "t7"]
    docs = model.encode(texts, "document")
    links = graph.link_documents(ids, texts, docs)
    q = model.encode(["domestic dog", "a bird", "insect", "pet cat"], "query")
    d64 = docs.double()
    for k in (1, 3, 8):
        scores, pos = graph_knn_search(graph, links, q, lambda a, b: d64[a:b], len(docs), k, relation)
        ref_scores, ref_pos = _reference(graph, links, q, docs, k, relation)
        assert torch.equal(pos, ref_pos)
        torch.testing.assert_close(scores, ref_scores, rtol=1e-9, atol=1e-9)


def test_broader_and_narrower_read_the_graph_in_opposite_directions() -> None:
    settings = GraphKnnSettings(k=1, temperature=0.05, hop_discount=0.7, graph_weight=1.0)
    graph = _chain_graph(settings)
    docs = torch.tensor([_unit(90), _unit(0), _unit(10), _unit(-60)])
    links = graph.link_documents(["A", "B", "C", "D"], None, docs)
    q = torch.tensor([_unit(1)])  # nearest concept: B
    d = docs.double()
    _, up = graph_knn_search(graph, links, q, lambda a, b: d[a:b], 4, 2, "broader")
    _, down = graph_knn_search(graph, links, q, lambda a, b: d[a:b], 4, 2, "narrower")
    assert up.tolist() == [[1, 0]]  # B itself, then its parent A
    assert down.tolist() == [[1, 2]]  # B itself, then its child C


def test_a_taxonomy_that_matches_nothing_ranks_by_similarity() -> None:
    # Documents linked to concepts no vote reaches: every graph row is 0, so the ranking is the similarity's.
    settings = GraphKnnSettings(k=1, graph_weight=0.8)
    graph = _chain_graph(settings)
    docs = torch.tensor([_unit(170), _unit(-100), _unit(120)])
    links = graph.link_documents(["p", "q", "r"], None, docs)
    links.concept[:] = 3  # all on D, a leaf
    q = torch.tensor([_unit(-5)])  # nearest concept: B, whose narrower votes do not reach D
    d = docs.double()
    scores, pos = graph_knn_search(graph, links, q, lambda a, b: d[a:b], 3, 3, "narrower")
    plain = torch.sort((q.double() @ d.T)[0], descending=True, stable=True).indices
    assert pos[0].tolist() == plain.tolist() and torch.isfinite(scores).all()
    # A taxonomy sharing no text, id or word with the corpus: free-text links, still a full ranking.
    model = HashingModel(16)
    other = ConceptGraph.from_taxonomy(
        model, Taxonomy([Concept("Z1", "zeta"), Concept("Z2", "eta", parents=("Z1",))])
    )
    texts = ["alpha", "beta", "gamma"]
    emb = model.encode(texts, "document").double()
    res = graph_knn_search(
        other,
        other.link_documents(["1", "2", "3"], texts, emb),
        model.encode(["delta"], "query"),
        lambda a, b: emb[a:b],
        3,
        5,
        "broader",
    )
    assert res[1].shape == (1, 3) and torch.isfinite(res[0]).all()


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"k": 0}, "k"),
        ({"temperature": 0.0}, "temperature"),
        ({"hop_discount": 1.5}, "hop_discount"),
        ({"graph_weight": -0.1}, "graph_weight"),
        ({"links_per_document": 2.5}, "links_per_document"),
        ({"max_hops": -1}, "max_hops"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_bad_settings_are_refused_with_one_line(values: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        GraphKnnSettings(**values)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown graph-kNN setting 'kk'"):
        GraphKnnSettings.from_dict({"kk": 3})


def test_settings_round_trip_as_json(tmp_path: Path) -> None:
    s = GraphKnnSettings(k=7, temperature=0.1, hop_discount=0.9, graph_weight=0.5, links_per_document=4)
    assert GraphKnnSettings.load(s.save(tmp_path / "s.json")) == s
    (tmp_path / "partial.json").write_text('{"k": 5}')
    assert GraphKnnSettings.load(tmp_path / "partial.json") == GraphKnnSettings(k=5)


def _corpus_file(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    concepts = [json.loads(line) for line in ANIMALS.read_text().splitlines()]
    rows = [{"_id": c["id"], "title": "", "text": c.get("definition") or c["name"]} for c in concepts]
    rows += [
        {"_id": "free1", "title": "", "text": "a cat sleeping on the sofa"},
        {"_id": "free2", "title": "", "text": "ants and beetles"},
    ]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, [r["_id"] for r in rows], [r["text"] for r in rows]


def test_index_build_with_taxonomy_then_search_relation_through_the_cli(
    tmp_path, monkeypatch, capsys
) -> None:
    model = HashingModel(16)
    monkeypatch.setattr(index_module, "load_model", lambda path: model)
    corpus, ids, texts = _corpus_file(tmp_path)
    settings = GraphKnnSettings(
        k=3, temperature=0.1, hop_discount=0.5, graph_weight=0.9, links_per_document=2
    )
    settings_file = settings.save(tmp_path / "graph.json")
    out = tmp_path / "ix"
    args = [
        "index",
        "build",
        "--model",
        str(tmp_path),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--taxonomy",
        str(ANIMALS),
        "--graph-settings",
        str(settings_file),
    ]
    assert cli.main(args) == 0
    assert (out / "taxonomy.json").is_file() and (out / "taxonomy.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "taxonomy attached: 10 concepts" in printed and "10 documents are concepts" in printed
    index = VectorIndex.load(out)
    assert index.taxonomy is not None and index.taxonomy.settings == settings
    links = index.taxonomy.links
    assert links.direct.sum().item() == 10 and set(links.doc[~links.direct].tolist()) == {10, 11}

    query = "a domesticated carnivorous pet"
    assert cli.main(["search", "--index", str(out), query, "-k", "4", "--relation", "broader"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    # The graph ranking: the same as graph-kNN over the stored vectors computed directly.
    graph = ConceptGraph.from_taxonomy(model, ANIMALS, settings)
    docs = model.encode(texts, "document").double()
    q = model.encode([query], "query")
    scores, pos = graph_knn_search(
        graph, graph.link_documents(ids, texts, docs), q, lambda a, b: docs[a:b], len(ids), 4, "broader"
    )
    assert [line.split()[-1] for line in lines] == [ids[p] for p in pos[0].tolist()]
    hits = index.search(model, [query], 4, relation="broader")[0]
    assert [h[0] for h in hits] == [ids[p] for p in pos[0].tolist()]
    torch.testing.assert_close(
        torch.tensor([h[1] for h in hits], dtype=torch.float64), scores[0], rtol=1e-9, atol=1e-9
    )
    # The graph ranking has no radius term: --radius-weight is refused, never ignored.
    argv = ["search", "--index", str(out), query, "--relation", "broader", "--radius-weight", "0.3"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--radius-weight" in err[0] and "taxonomy attached" in err[0], err
    # Saving again keeps the attachment; the similar ranking does not use it.
    index.save(tmp_path / "ix2")
    again = VectorIndex.load(tmp_path / "ix2")
    assert again.taxonomy.settings == settings
    assert again.search(model, [query], 4, relation="broader") == index.search(
        model, [query], 4, relation="broader"
    )
    plain = index.search(model, [query], 4)[0]
    assert plain == VectorIndex.from_model(model, ids, texts).search(model, [query], 4)[0]
    # A damaged attachment is an error naming the file, not a silent fall-back to the geometric score.
    blob = (out / "taxonomy.safetensors").read_bytes()
    (out / "taxonomy.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(TaxonomyAttachmentError, match=r"taxonomy\.safetensors"):
        VectorIndex.load(out)
    (out / "taxonomy.safetensors").write_bytes(blob)
    (out / "taxonomy.json").write_text("{")
    with pytest.raises(TaxonomyAttachmentError, match=r"taxonomy\.json"):
        VectorIndex.load(out)


def test_an_index_without_taxonomy_keeps_the_geometric_relation(tmp_path) -> None:
    model = HashingModel(16)
    _, ids, texts = _corpus_file(tmp_path)
    index = VectorIndex.from_model(model, ids, texts)
    geometric = index.search(model, ["dog"], 3, relation="broader")
    attach_taxonomy(index, model, ANIMALS, texts)
    assert index.search(model, ["dog"], 3, relation="broader") != geometric  # graph-kNN's mixed scores
    index.taxonomy = None
    assert index.search(model, ["dog"], 3, relation="broader") == geometric


def test_bad_graph_settings_file_stops_the_build_with_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(index_module, "load_model", lambda path: HashingModel(16))
    corpus, _, _ = _corpus_file(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"k": 0}')
    code = cli.main(
        [
            "index",
            "build",
            "--model",
            "m",
            "--corpus",
            str(corpus),
            "--out",
            str(tmp_path / "ix"),
            "--taxonomy",
            str(ANIMALS),
            "--graph-settings",
            str(bad),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "k must be an integer >= 1" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ix").exists()


class _CarryingModel(ModelCompanions, HashingModel):
    """The hashing model with what every EmbeddingModel carries beside its weights (a channel, a taxonomy)."""


def test_model_search_takes_a_taxonomy() -> None:
    model = _CarryingModel(16, hyperbolic=False)  # cosine: no geometric relation, graph-kNN works
    graph = ConceptGraph.from_taxonomy(model, ANIMALS, GraphKnnSettings(k=3))
    docs = ["a warm-blooded vertebrate that nurses its young", "an animal with a backbone", "the sea"]
    hits = EmbeddingModel.search(model, ["domestic dog"], docs, k=3, relation="broader", taxonomy=graph)
    emb = model.encode(docs, "document").double()
    ids = [f"\0{i}" for i in range(3)]
    ref = graph_knn_search(
        graph,
        graph.link_documents(ids, docs, emb),
        model.encode(["domestic dog"], "query"),
        lambda a, b: emb[a:b],
        3,
        3,
        "broader",
    )
    assert [p for p, _ in hits[0]] == ref[1][0].tolist()
    with pytest.raises(TypeError, match="ConceptGraph"):
        EmbeddingModel.search(model, ["x"], docs, k=1, relation="broader", taxonomy="animals.jsonl")


def test_eval_beir_relation_with_taxonomy_end_to_end(tmp_path, monkeypatch, capsys) -> None:
    model = HashingModel(12)
    monkeypatch.setattr(retrieval_module, "load_model", lambda path: model)
    concepts = [json.loads(line) for line in ANIMALS.read_text().splitlines()]
    corpus = {c["id"]: {"title": "", "text": c.get("definition") or c["name"]} for c in concepts}
    queries = {"q1": "a puppy", "q2": "a robin", "q3": "a beetle"}
    qrels = {
        "q1": {"EX:0003": 2, "EX:0008": 2, "EX:0002": 1},
        "q2": {"EX:0004": 2, "EX:0002": 1},
        "q3": {"EX:0009": 2, "EX:0001": 1},
    }
    folder = write_beir(tmp_path / "beir", corpus, queries, qrels)
    out = tmp_path / "m.json"
    code = cli.main(
        [
            "eval",
            "beir",
            "--model",
            "m",
            "--data",
            str(folder),
            "--top-k",
            "10",
            "--output",
            str(out),
            "--relation",
            "broader",
            "--taxonomy",
            str(ANIMALS),
        ]
    )
    assert code == 0
    written = json.loads(out.read_text())
    assert written["meta"]["relation"] == "broader"
    assert written["meta"]["taxonomy"]["source"] == str(ANIMALS.resolve())
    assert written["meta"]["taxonomy"]["settings"] == GraphKnnSettings().to_dict()
    direct = evaluate_beir(model, folder, top_k=10, relation="broader", taxonomy=ANIMALS)
    assert written["ndcg@10"] == pytest.approx(direct["ndcg@10"], abs=1e-12)
    assert "graph-kNN" in capsys.readouterr().out
    # Without --taxonomy: the geometric relation score (the flat index's exact relation search).
    geo = evaluate_beir(model, folder, top_k=10, relation="broader", radius_weight=0.3)
    assert geo["meta"]["taxonomy"] is None and 0.0 <= geo["ndcg@10"] <= 1.0
    for bad in (["--taxonomy", str(ANIMALS)], ["--relation", "similar", "--radius-weight", "0.2"]):
        code = cli.main(["eval", "beir", "--model", "m", "--data", str(folder), *bad])
        assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_server_store_build_refuses_a_taxonomy(tmp_path, capsys) -> None:
    corpus, _, _ = _corpus_file(tmp_path)
    args = [
        "index",
        "build",
        "--model",
        "m",
        "--corpus",
        str(corpus),
        "--store",
        "qdrant+http://localhost:1",
    ]
    code = cli.main([*args, "--taxonomy", str(ANIMALS)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "only local stores" in err and len(err.splitlines()) == 1
