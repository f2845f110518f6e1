"""Graph-kNN over a vector store with a taxonomy attached (lorentz_rag.stores.taxonomy): ``index build --store
--taxonomy`` keeps it beside the store, ``search --store --relation`` ranks as the FAISS folder with the same
corpus, model and taxonomy does, ``index add`` / ``delete`` keep the links in step, and the refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from eval_fake_models import HashingModel

from lorentz_rag import cli
from lorentz_rag.eval import index as index_module
from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.search.graph_knn import ConceptGraph, GraphKnnSettings, graph_knn_search
from lorentz_rag.stores import commands, open_store
from lorentz_rag.stores.taxonomy import read_store_taxonomy, store_taxonomy_folder

ANIMALS = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "animals.jsonl"
BACKENDS = ("lancedb", "qdrant")
QUERIES = ("a domesticated carnivorous pet", "small insects", "a large animal")
SETTINGS = GraphKnnSettings(k=3, temperature=0.1, hop_discount=0.5, graph_weight=0.9, links_per_document=2)
# Stores and the FAISS folder hold the same float32 points; both score them in float64 the same way, so the
# scores agree to rounding (any difference would be a different document order or a different point).
TOL = 1e-9


def _rows() -> list[dict]:
    concepts = [json.loads(line) for line in ANIMALS.read_text().splitlines()]
    rows = [{"_id": c["id"], "title": "", "text": c.get("definition") or c["name"]} for c in concepts]
    return [
        *rows,
        {"_id": "free1", "title": "", "text": "a cat sleeping on the sofa"},
        {"_id": "free2", "title": "", "text": "ants and beetles"},
    ]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def model(monkeypatch):
    fake = HashingModel(16)
    monkeypatch.setattr(commands, "load_model", lambda path: fake)
    monkeypatch.setattr(index_module, "load_model", lambda path: fake)
    return fake


def _build(tmp_path: Path, spec: str, corpus: Path, *extra: str) -> list[str]:
    settings = SETTINGS.save(tmp_path / "graph.json")
    args = ["index", "build", "--model", str(tmp_path), "--corpus", str(corpus), "--store", spec]
    return [*args, "--taxonomy", str(ANIMALS), "--graph-settings", str(settings), *extra]


def _printed(capsys) -> list[list[tuple[str, float]]]:
    out, blocks = capsys.readouterr().out.splitlines(), []
    for line in out:
        if line.startswith("query: "):
            blocks.append([])
        elif blocks:
            parts = line.split()
            blocks[-1].append((parts[-1], float(parts[-2])))
    return blocks


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("relation", ["broader", "narrower"])
def test_store_graph_search_equals_the_faiss_folder(backend, relation, model, tmp_path, capsys) -> None:
    corpus = _write(tmp_path / "corpus.jsonl", _rows())
    spec = f"{backend}:{tmp_path / 'db'}"
    assert cli.main(_build(tmp_path, spec, corpus)) == 0
    assert "taxonomy attached: 10 concepts" in capsys.readouterr().out
    folder = store_taxonomy_folder(spec)
    assert {p.name for p in folder.iterdir()} == {"taxonomy.json", "taxonomy.safetensors", "documents.json"}
    out = tmp_path / "ix"
    faiss_args = _build(tmp_path, spec, corpus)
    faiss_args[faiss_args.index("--store") : faiss_args.index("--store") + 2] = ["--out", str(out)]
    assert cli.main(faiss_args) == 0
    capsys.readouterr()
    index = VectorIndex.load(out)

    # The store reopened from disk: the CLI search and the FAISS folder's graph ranking agree.
    assert cli.main(["search", "--store", spec, *QUERIES, "-k", "12", "--relation", relation]) == 0
    printed = _printed(capsys)
    expected = index.search(model, list(QUERIES), 12, relation=relation)
    assert len(printed) == len(QUERIES)
    for got, want in zip(printed, expected):
        assert [h[0] for h in got] == [h[0] for h in want]
        # printed to 6 decimals
        assert [h[1] for h in got] == pytest.approx([h[1] for h in want], abs=5e-7)
    # The full-precision scores through the Python entry point.
    hits = commands.search_store_command(spec, list(QUERIES), 12, relation=relation)
    capsys.readouterr()
    for got, want in zip(hits, expected):
        assert [h.id for h in got] == [h[0] for h in want]
        assert [h.score for h in got] == pytest.approx([h[1] for h in want], rel=TOL, abs=TOL)
    # The similar ranking does not use the taxonomy.
    assert cli.main(["search", "--store", spec, QUERIES[0], "-k", "3"]) == 0
    assert [h[0] for h in _printed(capsys)[0]] == [h[0] for h in index.search(model, [QUERIES[0]], 3)[0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_and_delete_keep_the_links_in_step(backend, model, tmp_path, capsys) -> None:
    rows = _rows()
    spec = f"{backend}:{tmp_path / 'db'}"
    first, later = rows[:8], rows[8:]
    assert cli.main(_build(tmp_path, spec, _write(tmp_path / "first.jsonl", first))) == 0
    assert (
        cli.main(["index", "add", "--store", spec, "--corpus", str(_write(tmp_path / "l.jsonl", later))]) == 0
    )
    assert cli.main(["index", "delete", "--store", spec, "--ids", "free1", rows[0]["_id"]]) == 0
    capsys.readouterr()
    kept = [r for r in rows if r["_id"] not in ("free1", rows[0]["_id"])]
    attached = read_store_taxonomy(spec)
    assert attached is not None and sorted(attached.doc_ids) == sorted(r["_id"] for r in kept)

    # The same ranking as graph-kNN over the kept documents, built in one go, in the store's order.
    graph = ConceptGraph.from_taxonomy(model, ANIMALS, SETTINGS)
    texts = [r["text"] for r in kept]
    ids = [r["_id"] for r in kept]
    docs = model.encode(texts, "document").double()
    q = model.encode(list(QUERIES), "query")
    links = graph.link_documents(ids, texts, docs)
    scores, pos = graph_knn_search(graph, links, q, lambda a, b: docs[a:b], len(ids), 5, "broader")
    hits = commands.search_store_command(spec, list(QUERIES), 5, relation="broader")
    for row, got in enumerate(hits):
        assert [h.id for h in got] == [ids[p] for p in pos[row].tolist()]
        torch.testing.assert_close(
            torch.tensor([h.score for h in got], dtype=torch.float64), scores[row], rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_radius_weight_is_refused_with_a_taxonomy(backend, model, tmp_path, capsys) -> None:
    spec = f"{backend}:{tmp_path / 'db'}"
    assert cli.main(_build(tmp_path, spec, _write(tmp_path / "c.jsonl", _rows()))) == 0
    capsys.readouterr()
    argv = ["search", "--store", spec, QUERIES[0], "--relation", "narrower", "--radius-weight", "0.3"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--radius-weight" in err[0] and "taxonomy attached" in err[0], err


def test_rebuild_without_taxonomy_drops_the_attachment(model, tmp_path, capsys) -> None:
    spec = f"lancedb:{tmp_path / 'db'}"
    corpus = _write(tmp_path / "c.jsonl", _rows())
    assert cli.main(_build(tmp_path, spec, corpus)) == 0
    assert read_store_taxonomy(spec) is not None
    args = [
        "index",
        "build",
        "--model",
        str(tmp_path),
        "--corpus",
        str(corpus),
        "--store",
        spec,
        "--overwrite",
    ]
    assert cli.main(args) == 0
    assert read_store_taxonomy(spec) is None and not store_taxonomy_folder(spec).exists()
    store = open_store(spec)
    assert len(store) == len(_rows())
    store.close()


def test_a_server_store_refuses_a_taxonomy(tmp_path, capsys) -> None:
    corpus = _write(tmp_path / "c.jsonl", _rows())
    args = _build(tmp_path, "qdrant+http://localhost:1", corpus)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only local stores" in err[0], err


def test_a_damaged_attachment_or_unlinked_documents_are_refused(model, tmp_path, capsys) -> None:
    spec = f"lancedb:{tmp_path / 'db'}"
    assert cli.main(_build(tmp_path, spec, _write(tmp_path / "c.jsonl", _rows()))) == 0
    capsys.readouterr()
    # A document added behind the attachment's back (no links) is named, never ranked without links.
    store = open_store(spec)
    store.add_embeddings(["stray"], model.encode(["a stray dog"], "document"), ["a stray dog"])
    store.close()
    argv = ["search", "--store", spec, QUERIES[0], "--relation", "broader"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'stray'" in err[0] and "no taxonomy links" in err[0], err
    # A truncated tensor file is an error naming it, not a silent fall-back to the geometric score.
    tensors = store_taxonomy_folder(spec) / "taxonomy.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "taxonomy.safetensors" in err[0], err
