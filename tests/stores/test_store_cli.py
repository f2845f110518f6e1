"""``lorentz-rag index build|add|delete --store`` and ``lorentz-rag search --store`` over LanceDB and Qdrant, and
the command line's refusals (one ``error:`` line, exit status 2)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from store_fakes import RADIUS, FakeModel

from lorentz_rag import cli
from lorentz_rag.geometry import lorentz
from lorentz_rag.store_specs import BACKENDS as STORE_BACKENDS
from lorentz_rag.stores import commands, open_store
from lorentz_rag.stores.layout import RADIUS_HEADROOM, documents_radius

BACKENDS = tuple(STORE_BACKENDS)  # every backend of the spec table runs the contract


def _corpus(path, start: int, n: int):
    rows = [{"_id": f"id{i}", "title": f"T{i}", "text": f"body text {i}"} for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def model(monkeypatch):
    fake = FakeModel("geodesic")
    loaded = []
    monkeypatch.setattr(commands, "load_model", lambda path: loaded.append(path) or fake)
    fake.loaded = loaded
    return fake


@pytest.mark.parametrize("backend", BACKENDS)
def test_build_search_add_delete_through_the_command_line(backend, model, tmp_path, capsys):
    spec = f"{backend}:{tmp_path / 'db'}"
    corpus = _corpus(tmp_path / "corpus.jsonl", 0, 30)
    kind = ["--kind", "ivf_flat"] if backend == "lancedb" else ["--kind", "hnsw"]
    build = ["index", "build", "--model", str(tmp_path), "--corpus", str(corpus), "--store", spec]
    assert cli.main([*build, "--max-radius", str(RADIUS), *kind]) == 0
    assert f"stored 30 documents ({kind[1]}, geodesic, radius bound 3.0)" in capsys.readouterr().out
    store = open_store(spec)
    assert store.layout.model_path == str(tmp_path.resolve()) and len(store) == 30
    assert store.has_ann_index() == (backend == "lancedb")  # Qdrant's local mode is brute force
    if backend == "qdrant":
        assert store.hnsw_m == 16  # a server would build its HNSW graph (--kind flat: 0, no graph)
    store.close()

    assert cli.main(["search", "--store", spec, "T7 body text 7", "-k", "2", "--exact"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "query: T7 body text 7" and printed[1].endswith("  id7") and len(printed) == 3
    assert model.loaded[-1] == str(tmp_path.resolve())  # the model recorded in the store

    assert (
        cli.main(["index", "add", "--store", spec, "--corpus", str(_corpus(tmp_path / "more.jsonl", 30, 5))])
        == 0
    )
    assert "added 5 documents" in capsys.readouterr().out
    assert cli.main(["search", "--store", spec, "T32 body text 32", "-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("  id32")

    assert cli.main(["index", "delete", "--store", spec, "--ids", "id32", "id7", "nope"]) == 0
    assert "deleted 2 of 3 ids" in capsys.readouterr().out
    assert cli.main(["search", "--store", spec, "T32 body text 32", "-k", "40", "--exact"]) == 0
    out = capsys.readouterr().out
    assert "  id32\n" not in out and "  id7\n" not in out and out.count("\n") == 1 + 33


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "OUT", "--store", "lancedb:DB"], "give exactly one of --out"),
        ([], "give exactly one of --out"),
        (["--out", "OUT", "--kind", "ivf_pq"], "--kind ivf_pq needs a LanceDB --store"),
        (["--store", "qdrant:DB", "--kind", "ivf_pq"], "--kind 'ivf_pq' does not apply to store qdrant:"),
        (["--store", "milvus:DB"], "unknown store 'milvus:.*': give lancedb:PATH"),
    ],
)
def test_index_build_refusals(args, message, model, tmp_path, capsys):
    corpus = _corpus(tmp_path / "corpus.jsonl", 0, 3)
    args = [a.replace("OUT", str(tmp_path / "ix")).replace("DB", str(tmp_path / "db")) for a in args]
    assert cli.main(["index", "build", "--model", str(tmp_path), "--corpus", str(corpus), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert re.search(message, err), err


def test_search_and_edits_of_a_missing_store_are_user_errors(tmp_path, capsys):
    for argv in (
        ["search", "--store", f"lancedb:{tmp_path / 'none'}", "q"],
        ["index", "delete", "--store", f"qdrant:{tmp_path / 'none'}", "--ids", "a"],
        ["search", "--index", str(tmp_path), "--store", "lancedb:x", "q"],
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and ("no such" in err or "exactly one of --index" in err), err


def test_add_refuses_another_model(model, tmp_path, capsys, monkeypatch):
    spec = f"lancedb:{tmp_path / 'db'}"
    corpus = _corpus(tmp_path / "corpus.jsonl", 0, 5)
    build = ["index", "build", "--model", str(tmp_path), "--corpus", str(corpus), "--store", spec]
    assert cli.main([*build, "--max-radius", "3"]) == 0
    monkeypatch.setattr(commands, "load_model", lambda path: FakeModel("geodesic", seed=9))
    assert cli.main(["index", "add", "--store", spec, "--corpus", str(corpus)]) == 2
    assert "built with another model" in capsys.readouterr().err


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_corpus_is_refused_before_the_model_loads(backend, model, tmp_path, capsys):
    spec = f"{backend}:{tmp_path / 'db'}"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    argv = ["index", "build", "--model", str(tmp_path), "--corpus", str(empty), "--store", spec]
    assert cli.main([*argv, "--max-radius", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: corpus {empty} has no documents: nothing to store"
    assert model.loaded == [] and not (tmp_path / "db").exists()
    build = _corpus(tmp_path / "corpus.jsonl", 0, 3)
    assert cli.main([*argv[:5], str(build), *argv[6:], "--max-radius", "3"]) == 0
    capsys.readouterr()
    assert cli.main(["index", "add", "--store", spec, "--corpus", str(empty)]) == 2
    assert "has no documents" in capsys.readouterr().err
    assert len(open_store(spec)) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_max_radius_the_bound_is_the_documents_radius_plus_headroom(backend, model, tmp_path, capsys):
    """A model with no bound of its own (or a loose one) gets the corpus's largest radius + RADIUS_HEADROOM: a
    tight R keeps the reduced form resolvable in float32; a later document beyond it is refused."""
    spec = f"{backend}:{tmp_path / 'db'}"
    corpus = _corpus(tmp_path / "corpus.jsonl", 0, 20)
    assert (
        cli.main(["index", "build", "--model", str(tmp_path), "--corpus", str(corpus), "--store", spec]) == 0
    )
    capsys.readouterr()
    _, texts = commands.read_corpus(str(corpus))
    emb = model.encode(texts, "document")
    store = open_store(spec)
    want = documents_radius(emb, "geodesic", 1.0) + RADIUS_HEADROOM
    assert store.layout.max_radius == pytest.approx(want, rel=1e-9)
    assert store.layout.max_radius < RADIUS + RADIUS_HEADROOM
    store.close()
    direction = torch.nn.functional.normalize(torch.ones(1, model.dim, dtype=torch.float64), dim=-1)
    inside, beyond = (lorentz.expmap0(direction * r, 1.0).float() for r in (want - 0.01, want + 0.01))
    store = open_store(spec)
    store.add_embeddings(["inside"], inside)  # within the headroom: added without a rebuild
    with pytest.raises(ValueError, match="beyond the store's radius bound"):
        store.add_embeddings(["beyond"], beyond)
    assert len(store) == 21
    store.close()
