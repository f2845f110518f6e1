"""Saved artifacts and the evaluation cases of the one error boundary: model folders validated like a
config, indexes that know their model and are written atomically by one process, and BEIR qrels."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import torch

from lorentz_rag import cli
from lorentz_rag.data.beir import BeirFormatError, load_beir, write_beir
from lorentz_rag.eval.index import IndexFormatError, IndexModelMismatchError, VectorIndex, build_index_command
from lorentz_rag.folder_lock import FolderInUseError, sibling_lock_path
from lorentz_rag.models import build_model, load_model
from lorentz_rag.models.factory import ModelFolderError

from .conftest import DOCS, TINY_FH, copy_with_weights, edit_config, hold_lock, run_main

IDS = [f"d{i}" for i in range(len(DOCS))]


# --- 5. a model folder is validated like a config --------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.update(similarity="cosine"),
            r"lorentz_rag\.similarity='cosine' is not valid for model_type='hyte_fh'; choose one of \['geodesic'",
        ),
        (
            lambda s: s.update(pooling="max"),
            r"lorentz_rag.pooling='max' is not valid for model_type='hyte_fh'",
        ),
        (
            lambda s: s.update(embedding_dim=99),
            r"lorentz_rag.embedding_dim=99, but the saved hyte_fh architecture produces 17",
        ),
        (
            lambda s: s.update(max_seq_length=100000),
            r"lorentz_rag.max_seq_length=100000 exceeds the encoder's max_position_embeddings",
        ),
        (lambda s: s.update(curvature=-1.0), r"lorentz_rag.curvature=-1.0 must be a finite number > 0"),
    ],
)
def test_a_hand_edited_model_config_is_refused_naming_file_and_key(tiny_model_dir, tmp_path, edit, message):
    folder = tmp_path / "edited"
    shutil.copytree(tiny_model_dir, folder)
    edit_config(folder, lambda config: edit(config["lorentz_rag"]))
    with pytest.raises(ModelFolderError, match=rf"^{folder / 'config.json'}: .*" + message):
        load_model(folder)


def test_an_unedited_model_folder_still_loads_and_embeds_identically(tiny_model_dir):
    a, b = load_model(tiny_model_dir), load_model(tiny_model_dir)
    assert torch.equal(a.encode(DOCS), b.encode(DOCS))


# --- 6. an index knows its model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def index_dir(tiny_model_dir, beir_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "idx"
    build_index_command(str(tiny_model_dir), str(beir_dir), str(out))
    return out


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory) -> Path:
    """Same architecture, dimension and curvature as the tiny model, other weights."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("other") / "model"
    build_model(TINY_FH).save_pretrained(path)
    return path


def test_search_with_another_model_of_the_same_shape_is_refused(
    index_dir, other_model_dir, tiny_model_dir, capsys
):
    argv = ["search", "--index", str(index_dir), "--model", str(other_model_dir), "what is a list"]
    status, out, err = run_main(cli.main, argv, capsys)
    assert status == 2 and out == ""
    assert err.startswith(f"error: the index was built with another model ({tiny_model_dir.resolve()}): ")
    assert "--allow-model-mismatch" in err and len(err.splitlines()) == 1
    status, out, _ = run_main(cli.main, [*argv[:-1], "--allow-model-mismatch", "what is a list"], capsys)
    assert status == 0 and out.startswith("query: what is a list")
    status, out, _ = run_main(cli.main, ["search", "--index", str(index_dir), "what is a list"], capsys)
    assert status == 0 and "1." in out  # the recorded model itself is accepted


def test_overwriting_the_model_folder_named_in_the_index_is_detected(tiny_model_dir, beir_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    build_index_command(str(model_dir), str(beir_dir), str(tmp_path / "idx"))
    index = VectorIndex.load(tmp_path / "idx")
    assert index.model_fingerprint == load_model(model_dir).fingerprint()
    shutil.rmtree(model_dir)
    copy_with_weights(
        tiny_model_dir,
        model_dir,
        lambda t: t.update({k: v + 0.01 for k, v in t.items() if v.ndim >= 2}),
    )
    with pytest.raises(IndexModelMismatchError, match="was the model folder overwritten"):
        index.search(load_model(model_dir), ["what is a list"], 2)


@pytest.mark.parametrize("name", ["index.json", "doc_ids.json", "faiss.index"])
def test_a_truncated_index_file_is_named(index_dir, tmp_path, name, capsys):
    copy = tmp_path / "idx"
    shutil.copytree(index_dir, copy)
    data = (copy / name).read_bytes()
    (copy / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match=rf"^{copy / name}: "):
        VectorIndex.load(copy)
    status, _, err = run_main(cli.main, ["search", "--index", str(copy), "q"], capsys)
    assert status == 2 and err.startswith(f"error: {copy / name}: ")


def test_index_save_is_atomic_and_a_failed_save_keeps_the_previous_index(index_dir, tmp_path, monkeypatch):
    copy = tmp_path / "idx"
    shutil.copytree(index_dir, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    index = VectorIndex.load(copy)
    index.doc_ids = [f"new-{i}" for i in range(len(index))]

    def disk_full(self, folder):
        folder.mkdir(parents=True)
        (folder / "faiss.index").write_bytes(b"partial")
        raise OSError(28, "No space left on device", str(folder / "doc_ids.json"))

    monkeypatch.setattr(VectorIndex, "_write_files", disk_full)
    with pytest.raises(OSError, match="No space left"):
        index.save(copy)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no staging folder left behind
    monkeypatch.undo()
    index.save(copy)
    assert VectorIndex.load(copy).doc_ids[0] == "new-0"


def test_two_index_builds_on_one_folder_the_second_fails_at_once(tiny_model_dir, beir_dir, tmp_path):
    out = tmp_path / "idx"
    holder = hold_lock(sibling_lock_path(out))
    try:
        with pytest.raises(
            FolderInUseError, match=rf"index folder {out} is in use by another process \(pid {holder.pid}"
        ):
            build_index_command(str(tiny_model_dir), str(beir_dir), str(out))
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


# --- BEIR qrels, encode inputs ------------------------------------------------------------------------


def _beir_with_qrels(tmp_path: Path, lines: list[str]) -> Path:
    folder = tmp_path / "beir"
    write_beir(folder, {"d0": {"text": "a"}, "d1": {"text": "b"}}, {"q0": "x", "q1": "y"}, {"q0": {"d0": 1}})
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{line}\n" for line in lines)
    )
    return folder


def test_conflicting_duplicate_qrels_are_an_error_and_all_zero_judgments_warn(tmp_path):
    folder = _beir_with_qrels(tmp_path, ["q0\td0\t1", "q1\td1\t1", "q0\td0\t0"])
    with pytest.raises(
        BeirFormatError, match=r"test\.tsv:4: query 'q0', document 'd0' judged 0 here but 1 on line 2"
    ):
        load_beir(folder)
    same = _beir_with_qrels(tmp_path / "same", ["q0\td0\t1", "q0\td0\t1"])
    assert load_beir(same).qrels == {"q0": {"d0": 1}}  # a repeated identical line is harmless
    zeros = _beir_with_qrels(tmp_path / "zeros", ["q0\td0\t0", "q1\td1\t0"])
    with pytest.warns(UserWarning, match=r"every judgment is 0"):
        load_beir(zeros)


def test_encode_refuses_a_text_that_is_not_a_string(tiny_model_dir):
    model = load_model(tiny_model_dir)
    with pytest.raises(
        TypeError, match=r"texts\[1\] is None \(NoneType\); every text to embed must be a str"
    ):
        model.encode(["a", None])


def test_a_sentence_transformers_baseline_refuses_a_text_that_is_not_a_string():
    model = load_model("all-MiniLM-L6-v2")
    with pytest.raises(TypeError, match=r"texts\[2\] is 3 \(int\)"):
        model.encode(["a", "b", 3])


@pytest.mark.parametrize(
    "source",
    ["/no/such/folder", "./missing", "data/missing.jsonl", "some/deep/missing/folder", "rows.jsonl.gz"],
)
def test_a_missing_local_data_path_is_not_sent_to_the_hub(source):
    from lorentz_rag.data.readers import detect_format

    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        detect_format(source)
    assert detect_format("org/dataset-name") == "hf"  # a hub name stays a hub name
