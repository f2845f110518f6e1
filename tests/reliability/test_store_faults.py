"""Faults of the vector-store commands (``lorentz-rag index build|add --store``, ``lorentz-rag search --store``)
and of ``index build --out``: each is honoured exactly or ends with one ``error:`` line (exit status 2) naming
the store and what to do, and nothing already stored is lost.

- ``search --store --relation broader|narrower`` ranks as the FAISS folder does; ``--radius-weight`` without
  a relation is refused (for ``--index`` too), never ignored.
- ``index build`` keeps a table, collection or index folder that holds documents unless ``--overwrite``.
- A Qdrant server that does not answer is named (its URL) before the model loads.
- A damaged LanceDB table (data file deleted or truncated, manifest truncated, ``_versions/`` gone) is named.
- A local Qdrant folder another process holds is named as in use.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorentz_rag import cli
from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.geometry import lorentz
from lorentz_rag.stores import StoreLayout, create_store, open_store

from .conftest import run_main

BACKENDS = ("lancedb", "qdrant")
N_DOCS = 150  # more than a relation search fetches at first for k = 5 (69): the certificate is exercised


def _one_error_line(status: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (status, err)
    return lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store_faults") / "corpus.jsonl"
    topics = [
        "animals",
        "dogs",
        "a small terrier",
        "programming",
        "python lists",
        "geometry",
        "hyperbolic space",
    ]
    rows = [
        {
            "_id": f"d{i}",
            "title": "",
            "text": f"{topics[i % len(topics)]} note {i} about {topics[(i * 3) % 7]}",
        }
        for i in range(N_DOCS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _small_corpus(path: Path, start: int, n: int) -> Path:
    rows = [{"_id": f"x{i}", "title": "", "text": f"extra text {i}"} for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _build(model: Path, corpus: Path, target: list[str], capsys, *extra: str) -> tuple[int, str, str]:
    argv = ["index", "build", "--model", str(model), "--corpus", str(corpus), *target, *extra]
    return run_main(cli.main, argv, capsys)


# --- search --store --relation --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tiny_model_dir, corpus, tmp_path_factory) -> dict[str, str]:
    """The same corpus in a FAISS folder, a LanceDB table and a local Qdrant collection."""
    root = tmp_path_factory.mktemp("relation")
    targets = {
        "index": str(root / "faiss"),
        "lancedb": f"lancedb:{root / 'lance'}",
        "qdrant": f"qdrant:{root / 'qdrant'}",
    }
    for name, target in targets.items():
        option = "--out" if name == "index" else "--store"
        argv = ["index", "build", "--model", str(tiny_model_dir), "--corpus", str(corpus), option, target]
        assert cli.main(argv) == 0
    return targets


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("relation", "weight"), [("broader", "0.3"), ("narrower", "0.8"), ("broader", None)])
def test_store_search_with_a_relation_ranks_as_the_faiss_folder(backend, relation, weight, built, capsys):
    queries = ["a small terrier", "hyperbolic space note 12", "python"]
    options = ["-k", "5", "--relation", relation, *(["--radius-weight", weight] if weight else [])]
    status, faiss_out, err = run_main(
        cli.main, ["search", "--index", built["index"], *queries, *options], capsys
    )
    assert status == 0, err
    for exact in (["--exact"], []):  # a flat store is searched by brute force either way
        status, out, err = run_main(
            cli.main, ["search", "--store", built[backend], *queries, *options, *exact], capsys
        )
        assert status == 0, err
        assert out == faiss_out
    status, similar, _ = run_main(
        cli.main, ["search", "--store", built[backend], *queries, "-k", "5"], capsys
    )
    assert similar != faiss_out  # the relation changed the ranking: it was not ignored


@pytest.mark.parametrize("similarity", ["geodesic", "euclidean"])
def test_store_relation_search_equals_the_faiss_index_on_many_documents(similarity, tmp_path):
    """Library level, both forms with a radius: the certified store search equals VectorIndex's exact one
    (ids, and float64 scores to rounding), for several queries and weights, through several fetch rounds."""
    g = torch.Generator().manual_seed(3)
    n, dim = 400, 6
    v = torch.nn.functional.normalize(torch.randn(n + 8, dim, generator=g, dtype=torch.float64), dim=-1)
    v = v * (0.1 + 2.5 * torch.rand(n + 8, 1, generator=g, dtype=torch.float64))
    points = (lorentz.expmap0(v, 1.0) if similarity == "geodesic" else v).float()
    docs, queries = points[:n], points[n:]
    ids = [f"doc-{i}" for i in range(n)]
    c = 1.0 if similarity == "geodesic" else None
    index = VectorIndex.from_embeddings(ids, docs, similarity=similarity, curvature=c)
    layout = StoreLayout(similarity, c, int(points.shape[1]), 3.0)
    for backend in BACKENDS:
        store = create_store(f"{backend}:{tmp_path / backend}", layout)
        store.add_embeddings(ids[:200], docs[:200])
        store.add_embeddings(ids[200:], docs[200:])
        for relation in ("broader", "narrower"):
            for weight in (0.0, 0.5, 1.0):
                scores, positions = index.search_embeddings(
                    queries, 7, relation=relation, radius_weight=weight
                )
                hits = store.search_embeddings(
                    queries, 7, exact=True, relation=relation, radius_weight=weight
                )
                assert [[h.id for h in row] for row in hits] == [
                    [ids[p] for p in row] for row in positions.tolist()
                ]
                # Equal up to float64 rounding (torch's vectorised sums depend on how many candidates are scored).
                got = torch.tensor([[h.score for h in row] for row in hits], dtype=torch.float64)
                torch.testing.assert_close(got, scores, rtol=1e-12, atol=1e-12)
        store.close()


@pytest.mark.parametrize("target", ["--store", "--index"])
def test_radius_weight_without_a_relation_is_refused(target, built, capsys):
    where = built["lancedb"] if target == "--store" else built["index"]
    status, out, err = run_main(cli.main, ["search", target, where, "a dog", "--radius-weight", "5"], capsys)
    line = _one_error_line(status, err)
    assert "--radius-weight" in line and "--relation broader / narrower" in line and out == ""
    status, _, err = run_main(
        cli.main, ["search", target, where, "a dog", "--relation", "broader", "--radius-weight", "5"], capsys
    )
    assert "radius_weight must lie in [0, 1], got 5" in _one_error_line(status, err)


# --- index build keeps what a target holds --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_build_keeps_a_populated_store_unless_overwrite(
    backend, tiny_model_dir, corpus, tmp_path, capsys
):
    spec = f"{backend}:{tmp_path / 'db'}"
    what = "table" if backend == "lancedb" else "collection"
    small = _small_corpus(tmp_path / "small.jsonl", 0, 8)
    assert _build(tiny_model_dir, small, ["--store", spec], capsys)[0] == 0
    # Refused before the model loads: a model path that does not exist is never read.
    status, _, err = _build(tmp_path / "no-model", corpus, ["--store", spec], capsys)
    assert _one_error_line(status, err) == (
        f"error: {spec} ({what} lorentz_rag) already holds 8 documents; pass --overwrite to replace them, or "
        "use 'lorentz-rag index add' to append"
    )
    more = _small_corpus(tmp_path / "more.jsonl", 8, 3)
    assert run_main(cli.main, ["index", "add", "--store", spec, "--corpus", str(more)], capsys)[0] == 0
    status, _, err = _build(tiny_model_dir, small, ["--store", spec], capsys)
    assert "already holds 11 documents" in _one_error_line(status, err)
    with open_store(spec) as store:
        assert len(store) == 11
    status, out, err = _build(tiny_model_dir, corpus, ["--store", spec, "--overwrite"], capsys)
    assert status == 0 and f"stored {N_DOCS} documents" in out, err
    with open_store(spec) as store:
        assert len(store) == N_DOCS


def test_index_build_keeps_a_populated_index_folder_unless_overwrite(
    tiny_model_dir, corpus, tmp_path, capsys
):
    out = tmp_path / "ix"
    small = _small_corpus(tmp_path / "small.jsonl", 0, 8)
    assert _build(tiny_model_dir, small, ["--out", str(out)], capsys)[0] == 0
    status, _, err = _build(tmp_path / "no-model", corpus, ["--out", str(out)], capsys)
    assert _one_error_line(status, err) == (
        f"error: index folder {out} already holds 8 documents; pass --overwrite to replace it (documents are "
        "appended only to a --store, with 'lorentz-rag index add')"
    )
    assert len(VectorIndex.load(out)) == 8
    status, printed, err = _build(tiny_model_dir, corpus, ["--out", str(out), "--overwrite"], capsys)
    assert status == 0 and f"indexed {N_DOCS} documents" in printed, err
    assert len(VectorIndex.load(out)) == N_DOCS

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine", encoding="utf-8")
    status, _, err = _build(tmp_path / "no-model", corpus, ["--out", str(other)], capsys)
    assert "is not empty and holds no index" in _one_error_line(status, err)
    assert (other / "keep.txt").read_text(encoding="utf-8") == "mine"
    a_file = tmp_path / "a_file"
    a_file.write_text("mine", encoding="utf-8")
    status, _, err = _build(tmp_path / "no-model", corpus, ["--out", str(a_file)], capsys)
    assert "is a file, not an index folder" in _one_error_line(status, err)
    assert a_file.read_text(encoding="utf-8") == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _build(tiny_model_dir, small, ["--out", str(empty)], capsys)[0] == 0  # an empty folder builds


# --- a Qdrant server that does not answer ---------------------------------------------------------------


def _closed_port() -> int:
    """A loopback port nothing listens on (bound and released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_qdrant_server_is_named_before_the_model_loads(corpus, tmp_path, capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    spec = f"qdrant+{url}"
    for argv in (
        ["index", "build", "--model", str(tmp_path / "no-model"), "--corpus", str(corpus), "--store", spec],
        ["index", "add", "--store", spec, "--corpus", str(corpus)],
        ["search", "--store", spec, "a dog"],
        ["index", "delete", "--store", spec, "--ids", "d1"],
    ):
        status, out, err = run_main(cli.main, argv, capsys)
        line = _one_error_line(status, err)
        assert line.startswith(f"error: {spec}: cannot reach the Qdrant server (") and out == "", line
        assert "check that it is running and that the address (host and port) is right" in line


# --- a damaged LanceDB table ----------------------------------------------------------------------------


def _delete_data_file(table: Path) -> None:
    next((table / "data").iterdir()).unlink()


def _truncate_data_file(table: Path) -> None:
    data = next((table / "data").iterdir())
    os.truncate(data, data.stat().st_size // 2)


def _truncate_manifest(table: Path) -> None:
    for manifest in (table / "_versions").glob("*.manifest"):
        os.truncate(manifest, manifest.stat().st_size // 2)


def _remove_versions(table: Path) -> None:
    shutil.rmtree(table / "_versions")


@pytest.mark.parametrize(
    "damage",
    [_delete_data_file, _truncate_data_file, _truncate_manifest, _remove_versions],
    ids=lambda f: f.__name__,
)
def test_a_damaged_lancedb_table_is_named_with_what_to_do(damage, tiny_model_dir, tmp_path, capsys):
    db = tmp_path / "db"
    spec = f"lancedb:{db}"
    small = _small_corpus(tmp_path / "small.jsonl", 0, 8)
    assert _build(tiny_model_dir, small, ["--store", spec], capsys)[0] == 0
    damage(db / "lorentz_rag.lance")
    more = _small_corpus(tmp_path / "more.jsonl", 8, 2)
    for argv in (
        ["search", "--store", spec, "extra text 3", "--exact"],
        ["search", "--store", spec, "extra text 3"],
        ["index", "add", "--store", spec, "--corpus", str(more)],
    ):
        status, _, err = run_main(cli.main, argv, capsys)
        line = _one_error_line(status, err)
        assert line.startswith(f"error: {spec} (table lorentz_rag) cannot be read, its files are damaged"), (
            line
        )
        assert (
            "restore the folder from a backup, or rebuild the table with 'lorentz-rag index build --overwrite'"
            in line
        )
        assert ".rs:" not in line  # no Rust source locations
    # A build without --overwrite replaces nothing: the table cannot be read, or (a data file gone, the
    # manifest intact) it still counts its documents.
    status, _, err = _build(tiny_model_dir, more, ["--store", spec], capsys)
    line = _one_error_line(status, err)
    assert line.startswith(f"error: {spec} (table lorentz_rag) ") and "--overwrite" in line, line
    status, out, err = _build(tiny_model_dir, small, ["--store", spec, "--overwrite"], capsys)
    assert status == 0 and "stored 8 documents" in out, err
    status, out, _ = run_main(
        cli.main, ["search", "--store", spec, "extra text 3", "-k", "8", "--exact"], capsys
    )
    assert status == 0 and len(out.splitlines()) == 1 + 8  # the rebuilt table reads again


# --- a local Qdrant folder in use -----------------------------------------------------------------------


def _hold_qdrant_folder(folder: Path) -> subprocess.Popen:
    """Another process with the local Qdrant store open (as a running ``index add`` would have)."""
    code = (
        "import time; from qdrant_client import QdrantClient\n"
        f"client = QdrantClient(path={str(folder)!r}); print('open', flush=True); time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    return holder


def test_a_local_qdrant_store_in_use_by_another_process_is_named(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "qdrant"
    spec = f"qdrant:{folder}"
    small = _small_corpus(tmp_path / "small.jsonl", 0, 8)
    more = _small_corpus(tmp_path / "more.jsonl", 8, 2)
    assert _build(tiny_model_dir, small, ["--store", spec], capsys)[0] == 0
    holder = _hold_qdrant_folder(folder)
    try:
        for argv in (
            ["index", "add", "--store", spec, "--corpus", str(more)],
            ["search", "--store", spec, "extra text 3"],
            [
                "index",
                "build",
                "--model",
                str(tiny_model_dir),
                "--corpus",
                str(more),
                "--store",
                spec,
                "--overwrite",
            ],
        ):
            status, _, err = run_main(cli.main, argv, capsys)
            line = _one_error_line(status, err)
            assert line.startswith(f"error: {spec} is in use by another process"), line
            assert "wait for it to finish" in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with open_store(spec) as store:
        assert len(store) == 8  # intact
    assert run_main(cli.main, ["index", "add", "--store", spec, "--corpus", str(more)], capsys)[0] == 0
    with open_store(spec) as store:
        assert len(store) == 10
