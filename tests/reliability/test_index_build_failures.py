"""Failures of ``lorentz-rag index build``: an empty corpus is refused before the model is
loaded; Ctrl-C ends the build with one line saying what was kept and how to resume (exit 130, no
traceback); ``--max-new-shards`` is a planned stop (exit 0) that says how many shards remain."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from lorentz_rag import cli, load_model
from lorentz_rag.eval import encode as encode_module
from lorentz_rag.eval import index as index_module
from lorentz_rag.eval.encode import EncodingIncompleteError, encode_corpus, work_dir_for
from lorentz_rag.eval.index import VectorIndex

from .conftest import REPO, run_main


def _corpus(path, n: int):
    path.write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "text": f"document {i} " + "word " * (i % 7)}) + "\n"
            for i in range(n)
        ),
        encoding="utf-8",
    )
    return path


def _build_args(model, corpus, out, *extra: str) -> list[str]:
    return ["index", "build", "--model", str(model), "--corpus", str(corpus), "--out", str(out), *extra]


# --- 6. an empty corpus ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["jsonl", "beir folder", "blank lines"])
def test_an_empty_corpus_is_refused_before_the_model_is_loaded(
    layout, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    if layout == "beir folder":
        corpus = tmp_path / "beir"
        corpus.mkdir()
        (corpus / "corpus.jsonl").write_text("")
    else:
        corpus = tmp_path / "corpus.jsonl"
        corpus.write_text("" if layout == "jsonl" else "\n\n")

    def no_model(path):
        raise AssertionError("the model was loaded for an empty corpus")

    monkeypatch.setattr(index_module, "load_model", no_model)
    out = tmp_path / "index"
    status, _, err = run_main(cli.main, _build_args(tiny_model_dir, corpus, out, "--resumable"), capsys)
    assert (status, err) == (2, f"error: corpus {corpus} has no documents: nothing to index\n")
    assert not out.exists() and not work_dir_for(out).exists()


# --- 14. --max-new-shards ---------------------------------------------------------------------------------


def test_max_new_shards_is_a_planned_stop_with_exit_0(tiny_model_dir, tmp_path, capsys):
    corpus, out = _corpus(tmp_path / "corpus.jsonl", 20), tmp_path / "index"
    args = _build_args(tiny_model_dir, corpus, out, "--resumable", "--batch-size", "4", "--shard-size", "4")
    status, stdout, err = run_main(cli.main, [*args, "--max-new-shards", "2"], capsys)
    work = work_dir_for(out)
    assert (status, err) == (0, "")
    assert (
        f"stopped as asked (--max-new-shards 2): 3 of 5 shards remain, 2 are kept in {work}; run the same "
        in stdout
    )
    assert len(list(work.glob("shard-*.safetensors"))) == 2 and not out.exists()
    status, stdout, _ = run_main(cli.main, args, capsys)
    assert status == 0 and "encoded 3 of 5 shards of 4 documents (2 done before)" in stdout
    assert len(VectorIndex.load(out)) == 20 and not work.exists()


def test_encode_corpus_still_raises_with_the_counts(tiny_model_dir, tmp_path):
    with pytest.raises(EncodingIncompleteError, match="3 of 4 shards are left") as stop:
        encode_corpus(
            load_model(tiny_model_dir),
            ["a", "b", "c", "d"],
            batch_size=1,
            shard_size=1,
            work_dir=tmp_path / "w",
            max_new_shards=1,
        )
    assert (stop.value.remaining, stop.value.total, stop.value.work_dir) == (3, 4, tmp_path / "w")


# --- 7. Ctrl-C ----------------------------------------------------------------------------------------------


def _interrupt_at_shard(monkeypatch, n: int) -> None:
    """Ctrl-C while shard ``n`` (0-based) is being encoded."""
    calls = []
    real = encode_module.check_finite_embeddings

    def check(emb, texts=None, what="texts"):
        calls.append(1)
        if len(calls) > n:
            raise KeyboardInterrupt
        return real(emb, texts, what)

    monkeypatch.setattr(encode_module, "check_finite_embeddings", check)


def test_ctrl_c_during_a_resumable_build_says_what_was_kept(tiny_model_dir, tmp_path, monkeypatch, capsys):
    corpus, out = _corpus(tmp_path / "corpus.jsonl", 20), tmp_path / "index"
    args = _build_args(tiny_model_dir, corpus, out, "--resumable", "--batch-size", "4", "--shard-size", "4")
    _interrupt_at_shard(monkeypatch, 3)
    status, _, err = run_main(cli.main, args, capsys)
    work = work_dir_for(out)
    assert status == 130
    assert err == (
        f"interrupted: index build of {out} stopped; 3 finished shard(s) are kept in {work}: run the same command "
        "again (with --resumable) to continue from them\n"
    )
    assert sorted(p.name for p in work.iterdir()) == [
        "manifest.json",
        *(f"shard-00000{i}.safetensors" for i in range(3)),
    ]
    assert not out.exists()
    monkeypatch.undo()
    status, stdout, _ = run_main(cli.main, args, capsys)
    assert status == 0 and "(3 done before)" in stdout and len(VectorIndex.load(out)) == 20


def test_ctrl_c_without_resumable_says_nothing_was_kept(tiny_model_dir, tmp_path, monkeypatch, capsys):
    corpus, out = _corpus(tmp_path / "corpus.jsonl", 8), tmp_path / "index"
    _interrupt_at_shard(monkeypatch, 0)
    status, _, err = run_main(cli.main, _build_args(tiny_model_dir, corpus, out), capsys)
    assert status == 130 and err.startswith(f"interrupted: index build of {out} stopped, nothing kept")
    assert "rerun with --resumable" in err and len(err.splitlines()) == 1
    assert not out.exists() and not work_dir_for(out).exists()


def test_a_real_sigint_ends_the_process_with_one_line_and_130(tiny_model_dir, tmp_path):
    corpus, out = _corpus(tmp_path / "corpus.jsonl", 4000), tmp_path / "index"
    work = work_dir_for(out)
    argv = _build_args(tiny_model_dir, corpus, out, "--resumable", "--batch-size", "2", "--shard-size", "2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorentz_rag.cli", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not any(work.glob("shard-*.safetensors")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    kept = len(list(work.glob("shard-*.safetensors")))
    assert err.startswith(
        f"interrupted: index build of {out} stopped; {kept} finished shard(s) are kept in {work}"
    )
    assert kept >= 1 and not list(work.glob("*.tmp-*")) and not out.exists()


# --- a full disk while the index is written ---------------------------------------------------------------


@pytest.mark.skipif(
    not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)),
    reason="needs the /dev/full device (Linux)",
)
def test_a_full_disk_while_faiss_writes_names_the_index_and_keeps_the_old_one(
    tiny_model_dir, beir_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "index"
    args = _build_args(tiny_model_dir, beir_dir, out)
    assert run_main(cli.main, args, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    faiss = index_module._faiss()
    real_writer = faiss.PyCallbackIOWriter
    full = open("/dev/full", "wb", buffering=0)  # noqa: SIM115 (closed below); every write: ENOSPC
    monkeypatch.setattr(faiss, "PyCallbackIOWriter", lambda write: real_writer(full.write))
    status, _, err = run_main(cli.main, [*args, "--overwrite"], capsys)  # a rebuild replaces the index
    assert (status, err) == (
        2,
        f"error: {out}: no space left on device: free space or write to another disk, then rerun\n",
    )
    full.close()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous index is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".index.lorentz_rag.lock",
        "index",
    ]  # no staging left
