"""The contract every vector-store backend keeps (lorentz_rag.stores), run over LanceDB and Qdrant (local mode)
and over the hyperbolic, Euclidean-distance and cosine forms: build, add, replace, delete, flat search equal
to VectorIndex's exact search, ANN results re-ranked in float64, fingerprint refusal, reopen from disk, a
reader while another thread writes, and a document beyond the radius bound refused."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch
from store_fakes import FORMS, RADIUS, FakeModel, points

from lorentz_rag.eval.index import IndexModelMismatchError, VectorIndex, candidate_scores, stored_form
from lorentz_rag.geometry import lorentz
from lorentz_rag.store_specs import BACKENDS as STORE_BACKENDS
from lorentz_rag.stores import (
    LanceDBStore,
    QdrantStore,
    StoreLayout,
    create_store,
    layout_for_model,
    open_store,
    parse_store_spec,
)

BACKENDS = tuple(STORE_BACKENDS)  # every backend of the spec table runs the contract
N_DOCS, N_QUERIES, K = 240, 12, 10


def _layout(form: str, **extra) -> StoreLayout:
    c = 1.0 if form in ("geodesic", "lorentz_inner") else None
    dim = 9 if c else 8
    return StoreLayout(form, c, dim, None if form == "cosine" else RADIUS, **extra)


def _spec(backend: str, tmp_path) -> str:
    return f"{backend}:{tmp_path / backend}"


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"doc-{i}" for i in range(start, start + n)]


def _store(backend, form, tmp_path, docs, **layout_extra):
    store = create_store(_spec(backend, tmp_path), _layout(form, **layout_extra))
    half = len(docs) // 2  # two calls: documents added after the first are searched like the rest
    ids = _ids(len(docs))
    store.add_embeddings(
        ids[:half], docs[:half], [f"text of {i}" for i in ids[:half]], [{"n": i} for i in range(half)]
    )
    store.add_embeddings(
        ids[half:],
        docs[half:],
        [f"text of {i}" for i in ids[half:]],
        [{"n": i} for i in range(half, len(docs))],
    )
    return store


def _assert_equals_index(hits, index: VectorIndex, queries) -> None:
    scores, positions = index.search_embeddings(queries, K)
    for row, (got, pos, ref) in enumerate(zip(hits, positions.tolist(), scores.tolist())):
        assert [h.id for h in got] == [index.doc_ids[p] for p in pos], f"query {row}"
        # The same float64 formulas (candidate_scores); sums over another batch shape may round differently.
        torch.testing.assert_close(
            torch.tensor([h.score for h in got], dtype=torch.float64),
            torch.tensor(ref, dtype=torch.float64),
            rtol=1e-12,
            atol=1e-12,
        )


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_search_equals_vector_index_exact_search(backend, form, tmp_path):
    docs = points(N_DOCS, form, seed=1)
    queries = points(N_QUERIES, form, seed=2)
    store = _store(backend, form, tmp_path, docs)
    assert len(store) == N_DOCS
    index = VectorIndex.from_embeddings(
        _ids(N_DOCS), docs, similarity=form, curvature=_layout(form).curvature
    )
    hits = store.search_embeddings(queries, K, exact=True)
    _assert_equals_index(hits, index, queries)
    first = hits[0][0]
    assert first.text == f"text of {first.id}" and first.metadata == {"n": int(first.id.split("-")[1])}


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_search_is_exact_far_from_the_origin_with_near_ties_and_duplicates(backend, tmp_path):
    # Points near one point at radius ~7.6 (x0 ~ 1e3), where float32 store distances cannot order them:
    # the certificate widens the fetch until the float64 ranking is proven; duplicates tie to the earlier id.
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(8, generator=g, dtype=torch.float64), dim=0) * 7.6
    docs = lorentz.expmap0(base + 1e-3 * torch.randn(150, 8, generator=g, dtype=torch.float64), 1.0).float()
    docs = torch.cat([docs, docs[:10]])
    queries = torch.cat(
        [
            lorentz.expmap0(base + 1e-3 * torch.randn(6, 8, generator=g, dtype=torch.float64), 1.0).float(),
            docs[3:5],
        ]
    )
    store = create_store(_spec(backend, tmp_path), StoreLayout("geodesic", 1.0, 9, 7.7))
    store.add_embeddings(_ids(len(docs)), docs)
    index = VectorIndex.from_embeddings(_ids(len(docs)), docs, similarity="geodesic", curvature=1.0)
    _assert_equals_index(store.search_embeddings(queries, K, exact=True), index, queries)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_add_replace_delete_and_reopen_from_disk(backend, form, tmp_path):
    docs = points(60, form, seed=3)
    store = _store(backend, form, tmp_path, docs)
    # Replacing by id: the document moves (new vector and text), the count stays.
    target = points(1, form, seed=4)
    store.add_embeddings(["doc-7"], target, ["replaced"], [{"v": 2}])
    assert len(store) == 60
    ((hit, *_),) = store.search_embeddings(target, 3, exact=True)
    assert (hit.id, hit.text, hit.metadata) == ("doc-7", "replaced", {"v": 2})
    store.delete(["doc-7", "doc-8", "no-such-id"])
    assert len(store) == 58
    hits = store.search_embeddings(docs, 60, exact=True)
    assert all({"doc-7", "doc-8"}.isdisjoint(h.id for h in row) for row in hits)
    expected = store.search_embeddings(docs[:5], K, exact=True)
    store.close()
    reopened = open_store(_spec(backend, tmp_path))
    assert type(reopened) is (LanceDBStore if backend == "lancedb" else QdrantStore)
    assert reopened.layout == _layout(form) and len(reopened) == 58
    assert reopened.search_embeddings(docs[:5], K, exact=True) == expected
    reopened.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_other_than_the_stores_is_refused(backend, tmp_path):
    model = FakeModel("geodesic")
    layout = layout_for_model(model, max_radius=RADIUS, model_path="/models/a")
    assert layout.model_fingerprint == model.fingerprint() and layout.max_radius == RADIUS
    store = create_store(_spec(backend, tmp_path), layout)
    store.add_texts(model, [f"text {i}" for i in range(30)], ids=_ids(30))
    assert model.calls[-1] == ("document", 30)
    (hits,) = store.search(model, "text 4", k=3)
    assert hits[0].id == "doc-4" and hits[0].text == "text 4"
    store.close()
    store = open_store(_spec(backend, tmp_path))
    other = FakeModel("geodesic", seed=1)
    with pytest.raises(IndexModelMismatchError, match=r"built with another model \(/models/a\)"):
        store.search(other, "text 4")
    with pytest.raises(IndexModelMismatchError):
        store.add_texts(other, ["new"])
    assert len(store.search(other, "text 4", k=2, allow_model_mismatch=True)[0]) == 2
    with pytest.raises(ValueError, match="similarity 'geodesic'"):
        store.search(FakeModel("cosine", dim=9), "text 4")
    store.close()


def test_layout_needs_a_radius_bound_where_the_model_has_none():
    with pytest.raises(ValueError, match=r"no radius bound .* max_radius \(--max-radius\)"):
        layout_for_model(FakeModel("geodesic"))
    docs = FakeModel("geodesic").encode([f"d{i}" for i in range(50)])
    tight = layout_for_model(FakeModel("geodesic"), documents=docs).max_radius
    assert tight == pytest.approx(float(lorentz.radius(docs.double(), 1.0).max()) + 1.0, rel=1e-6)
    assert layout_for_model(FakeModel("geodesic"), max_radius=4.0).max_radius == 4.0
    assert layout_for_model(FakeModel("cosine")).max_radius is None


@pytest.mark.parametrize("form", ["geodesic", "euclidean"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_document_beyond_the_radius_bound_is_refused(backend, form, tmp_path):
    store = _store(backend, form, tmp_path, points(20, form, seed=5))
    far = points(3, form, seed=6, radius=RADIUS * 1.5)
    radii = lorentz.radius(far.double(), 1.0) if form == "geodesic" else far.double().norm(dim=-1)
    first = int((radii > RADIUS * 1.001).nonzero()[0])
    with pytest.raises(
        ValueError,
        match=rf"beyond the store's radius bound 3, the first 'far-{first}' at radius .*--max-radius",
    ):
        store.add_embeddings([f"far-{i}" for i in range(3)], far)
    assert len(store) == 20  # nothing of the refused call was written
    # A point exactly at the bound is accepted (the bound has float32 slack).
    edge = torch.nn.functional.normalize(torch.randn(1, 8, dtype=torch.float64), dim=-1) * RADIUS
    store.add_embeddings(["edge"], lorentz.expmap0(edge, 1.0).float() if form == "geodesic" else edge.float())
    assert len(store) == 21
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reader_searches_while_another_thread_adds(backend, tmp_path):
    form = "geodesic"
    store = _store(backend, form, tmp_path, points(40, form, seed=7))
    # LanceDB: the reader has a connection of its own, as another process would. Qdrant's local mode allows
    # one client per folder, so the two threads share it (the store serialises its calls).
    reader = open_store(_spec(backend, tmp_path)) if backend == "lancedb" else store
    queries = points(3, form, seed=8)
    batches = [points(20, form, seed=100 + b) for b in range(6)]
    seen, errors, done = [], [], threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                hits = reader.search_embeddings(queries, K, exact=True)
                assert all(len(row) == K for row in hits)
                assert all(
                    [h.score for h in row] == sorted((h.score for h in row), reverse=True) for row in hits
                )
                seen.append(len(reader))
        except Exception as error:  # reported below
            errors.append(error)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for b, batch in enumerate(batches):
            store.add_embeddings([f"new-{b}-{i}" for i in range(20)], batch)
    finally:
        done.set()
        thread.join(timeout=120)
    assert not errors, errors[0]
    assert seen and seen == sorted(seen) and seen[-1] <= 160
    all_docs = torch.cat([points(40, form, seed=7), *batches])
    index = VectorIndex.from_embeddings(
        _ids(40) + [f"new-{b}-{i}" for b in range(6) for i in range(20)],
        all_docs,
        similarity=form,
        curvature=1.0,
    )
    _assert_equals_index(reader.search_embeddings(queries, K, exact=True), index, queries)
    store.close()
    if reader is not store:
        reader.close()


@pytest.mark.parametrize("form", FORMS)
def test_lancedb_ann_results_are_reranked_and_later_documents_need_no_rebuild(form, tmp_path):
    docs = points(N_DOCS, form, seed=9)
    queries = points(N_QUERIES, form, seed=10)
    store = _store("lancedb", form, tmp_path, docs)
    exact = store.search_embeddings(queries, K, exact=True)
    store.create_ann_index("ivf_hnsw_sq", num_partitions=4)
    assert store.has_ann_index()
    hits = store.search_embeddings(queries, K)
    recall = sum(len({h.id for h in a} & {h.id for h in b}) for a, b in zip(hits, exact)) / (K * N_QUERIES)
    assert recall >= 0.9
    # Every ANN score is the float64 score of that document, best first.
    layout = store.layout
    by_id = dict(zip(_ids(N_DOCS), docs))
    for q, row in zip(queries, hits):
        x = (
            stored_form(torch.stack([by_id[h.id] for h in row]), form, layout.curvature)
            .to(torch.float32)
            .double()
        )
        scores, _ = candidate_scores(
            stored_form(q[None], form, layout.curvature), x[None], form, layout.curvature
        )
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)
        torch.testing.assert_close(
            torch.tensor([h.score for h in row], dtype=torch.float64), scores[0], rtol=1e-12, atol=1e-12
        )
    # Documents added after the index are found by ANN search without rebuilding it.
    store.add_embeddings(["late"], queries[:1])
    assert store.search_embeddings(queries[:1], 1)[0][0].id == "late"
    store.close()


def test_qdrant_local_mode_searches_by_brute_force_and_records_the_graph_setting(tmp_path):
    store = create_store(_spec("qdrant", tmp_path), _layout("cosine"), hnsw_m=0)
    assert not store.has_ann_index()
    store.close()
    reopened = open_store(_spec("qdrant", tmp_path))
    assert reopened.hnsw_m == 0 and not reopened.has_ann_index()
    reopened.close()


def test_store_specs_and_missing_stores(tmp_path):
    assert parse_store_spec("lancedb:/a/b") == ("lancedb", {"path": "/a/b"})
    assert parse_store_spec("qdrant:rel/q") == ("qdrant", {"path": "rel/q"})
    assert parse_store_spec("qdrant+http://localhost:6333") == ("qdrant", {"url": "http://localhost:6333"})
    assert parse_store_spec("qdrant+https://q.example") == ("qdrant", {"url": "https://q.example"})
    for bad in ("faiss:x", "lancedb:", "qdrant+ftp://h", "/plain/folder"):
        with pytest.raises(ValueError, match="lancedb:PATH, qdrant:PATH or qdrant"):
            parse_store_spec(bad)
    for backend in BACKENDS:
        with pytest.raises(FileNotFoundError, match=f"{backend}:.*no such"):
            open_store(_spec(backend, tmp_path / "missing"))
    store = create_store(_spec("lancedb", tmp_path), _layout("cosine"))
    with pytest.raises(FileExistsError, match="exists"):
        create_store(_spec("lancedb", tmp_path), _layout("cosine"))
    with pytest.raises(FileNotFoundError, match="no table 'other'"):
        open_store(_spec("lancedb", tmp_path), name="other")
    store.close()


_READER = """
import os, sys, time, torch
from lorentz_rag.stores import open_store
store = open_store(sys.argv[1])
queries = torch.load(sys.argv[2])
stop = sys.argv[3]
while True:
    done = os.path.exists(stop)
    hits = store.search_embeddings(queries, 10, exact=True)
    assert all([h.score for h in row] == sorted((h.score for h in row), reverse=True) for row in hits)
    print(len(store), ",".join(h.id for h in hits[0]), flush=True)
    if done:
        break
    time.sleep(0.05)
"""


def test_lancedb_reader_in_another_process_sees_each_commit(tmp_path):
    form = "geodesic"
    store = _store("lancedb", form, tmp_path, points(40, form, seed=11))
    queries = points(2, form, seed=12)
    torch.save(queries, tmp_path / "queries.pt")
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, _spec("lancedb", tmp_path), str(tmp_path / "queries.pt"), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().split()[0] == "40"  # the reader is up before the writer starts
        batches = [points(20, form, seed=200 + b) for b in range(5)]
        for b, batch in enumerate(batches):
            store.add_embeddings([f"new-{b}-{i}" for i in range(20)], batch)
        stop.touch()
        out, err = reader.communicate(timeout=300)
    finally:
        reader.kill()
    assert reader.returncode == 0, err
    lines = out.splitlines()
    counts = [int(line.split()[0]) for line in lines]
    assert counts == sorted(counts) and counts[-1] == 140  # after the stop file: every commit is visible
    index = VectorIndex.from_embeddings(
        _ids(40) + [f"new-{b}-{i}" for b in range(5) for i in range(20)],
        torch.cat([points(40, form, seed=11), *batches]),
        similarity=form,
        curvature=1.0,
    )
    _, pos = index.search_embeddings(queries[:1], K)
    assert lines[-1].split()[1] == ",".join(index.doc_ids[p] for p in pos[0].tolist())
    store.close()


def test_every_backend_of_the_spec_table_has_a_store_class_and_a_form_in_the_help():
    from lorentz_rag import store_specs
    from lorentz_rag.stores import STORE_CLASSES, VectorStore

    # The spec grammar and the classes are two tables: a backend missing from either fails here.
    assert set(store_specs.BACKENDS) == set(STORE_CLASSES)
    for name, spec in store_specs.BACKENDS.items():
        assert issubclass(STORE_CLASSES[name], VectorStore)
        assert spec.container and spec.forms
        for form in spec.forms:
            assert form in store_specs.STORE_SPECS
            example = form.replace("PATH", "/tmp/x").replace("HOST[:PORT]", "h:1")
            assert store_specs.parse_store_spec(example)[0] == name
        assert (
            store_specs.store_kinds(spec.forms[0].replace("PATH", "p").replace("HOST[:PORT]", "h"))[0]
            == "flat"
        )
