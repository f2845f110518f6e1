"""Data-parallel, resumable corpus encoding: `lorentz-rag index build` under torchrun (2 processes, gloo) gives the
one-process index (the same rankings, vectors to float32 rounding); an interrupted build resumes to the same
index bit for bit; a work folder of another model or corpus is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lorentz_rag import cli
from lorentz_rag.data.beir import read_corpus
from lorentz_rag.data.bundled import faq_dev_path
from lorentz_rag.eval import encode as encode_module
from lorentz_rag.eval.encode import (
    EncodingWorkMismatchError,
    ShardPlan,
    encode_corpus,
    work_dir_for,
)
from lorentz_rag.eval.index import VectorIndex, build_index_command
from lorentz_rag.models import build_model, load_model, packaged_minilm_path
from torchrun_launch import run_torchrun

# A real encoder, the quickstart's HyTE-H over MiniLM: a tiny random trunk happens to give the same float32
# embeddings whatever the batch-mates, so it could not tell the exact batching from a naive one.
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart" / "hyte_h.yaml"
HYTE_H = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["model_args"] | {
    "model_name": str(packaged_minilm_path()),
    "max_seq_length": 64,
}
# 130 documents, batches of 8, shards of 16: 9 shards, the last one short; shards go to ranks 0,1,0,1,...
N_DOCS, BATCH, SHARD = 130, 8, 16
QUERIES = ["how do I install a package", "what is a list comprehension", "exception handling"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode")
    torch.manual_seed(0)
    build_model(HYTE_H).save_pretrained(root / "model")
    build_model(HYTE_H | {"max_seq_length": 48}).save_pretrained(root / "other_model")
    ids, texts = read_corpus(faq_dev_path())
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in list(zip(ids, texts))[:N_DOCS]),
        encoding="utf-8",
    )
    single = root / "single"
    build_index_command(str(root / "model"), str(corpus), str(single), batch_size=BATCH)
    return root, corpus, single


def _vectors(index: VectorIndex) -> np.ndarray:
    return index.faiss_index.reconstruct_n(0, index.faiss_index.ntotal)


def _assert_same_index(a_dir: Path, b_dir: Path, model_dir: Path, *, exact: bool = True) -> None:
    """``exact``: bit for bit (both encoded in this process); otherwise the same documents and rankings with
    vectors and scores equal to float32 rounding."""
    a, b = VectorIndex.load(a_dir), VectorIndex.load(b_dir)
    assert a.doc_ids == b.doc_ids and a.model_fingerprint == b.model_fingerprint
    model = load_model(model_dir)
    hits_a, hits_b = a.search(model, QUERIES, 10), b.search(model, QUERIES, 10)
    if exact:
        assert np.array_equal(_vectors(a), _vectors(b))  # bit for bit
        assert a.max_norm == b.max_norm and hits_a == hits_b
        return
    # Encoded by other processes with another thread count: torch splits its loops into other chunks
    # (vectorised and scalar ends of a loop round transcendentals differently) and BLAS may block its
    # matmuls otherwise, so the float32 vectors agree to rounding, not bit for bit.
    np.testing.assert_allclose(_vectors(a), _vectors(b), rtol=1e-5, atol=1e-6)
    assert a.max_norm == pytest.approx(b.max_norm, rel=1e-5)
    assert [[d for d, _ in row] for row in hits_a] == [[d for d, _ in row] for row in hits_b]
    np.testing.assert_allclose(
        [[s for _, s in row] for row in hits_a], [[s for _, s in row] for row in hits_b], rtol=1e-5, atol=1e-6
    )


def test_shard_plan_follows_the_one_call_batches():
    texts = ["aa", "b", "cccc", "dd", "e", "ffff", "g"]
    plan = ShardPlan.for_texts(texts, batch_size=2, shard_size=3)
    assert plan.shard_size == 4  # rounded up to whole batches
    # Longest first, ties in corpus order: the order EmbeddingModel.encode sorts by.
    assert list(plan.order) == sorted(range(7), key=lambda i: -len(texts[i]))
    assert [plan.positions(j) for j in range(plan.n_shards)] == [[2, 5, 0, 3], [1, 4, 6]]
    assert list(plan.shards_of(1, 2)) == [1] and list(plan.shards_of(0, 2)) == [0]


def test_sharded_encoding_equals_one_encode_call_bit_for_bit(setup, tmp_path):
    root, *_ = setup
    model = load_model(root / "model")
    _, texts = read_corpus(root / "corpus.jsonl")
    whole = model.encode(texts, prompt_type="document", batch_size=BATCH)
    sharded = encode_corpus(model, texts, batch_size=BATCH, shard_size=SHARD, work_dir=tmp_path / "work")
    assert torch.equal(sharded, whole)
    # Shards cut elsewhere than at batch boundaries of the sorted order would change the float32 rounding:
    # the equality above is not a matter of tolerance.
    naive = torch.cat([model.encode(texts[i : i + SHARD], "document", batch_size=BATCH) for i in (0, 16)])
    assert not torch.equal(naive, whole[:32])


def _beir_args(model_dir: Path, output: Path) -> list[str]:
    return ["eval", "beir", "--model", str(model_dir), "--data", str(faq_dev_path()), "--output", str(output)]


@pytest.mark.slow
def test_torchrun_two_processes_build_the_one_process_index_and_metrics(setup, tmp_path, capsys):
    root, corpus, single = setup
    out = tmp_path / "parallel"
    index_args = [
        "index",
        "build",
        "--model",
        str(root / "model"),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
    ]
    index_args += ["--batch-size", str(BATCH), "--shard-size", str(SHARD)]
    beir_args = _beir_args(root / "model", tmp_path / "beir_parallel.json")
    worker = Path(__file__).with_name("_encode_worker.py")
    output = run_torchrun([str(worker), json.dumps(index_args), json.dumps(beir_args)])
    assert "encoded 9 of 9 shards of 16 documents (0 done before) with 2 process(es)" in output
    assert output.count(f"indexed {N_DOCS} documents") == 1  # rank 0 alone writes the index
    assert not work_dir_for(out).exists()  # the shards are removed once the index is saved
    _assert_same_index(single, out, root / "model", exact=False)

    # BEIR evaluation: the same metrics as one process (the embeddings are the same bits).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1)
    try:
        assert cli.main(_beir_args(root / "model", tmp_path / "beir_single.json")) == 0
    finally:
        torch.set_num_threads(threads)
    parallel = json.loads((tmp_path / "beir_parallel.json").read_text())
    one = json.loads((tmp_path / "beir_single.json").read_text())
    assert output.count("wrote " + str(tmp_path / "beir_parallel.json")) == 1
    for result in (parallel, one):
        del result["meta"]["timings_s"]
    assert parallel == one


def test_interrupted_build_resumes_to_the_same_index(setup, tmp_path, monkeypatch, capsys):
    root, corpus, single = setup
    out = tmp_path / "ix"
    args = ["index", "build", "--model", str(root / "model"), "--corpus", str(corpus), "--out", str(out)]
    args += ["--batch-size", str(BATCH), "--shard-size", str(SHARD), "--resumable"]
    assert cli.main([*args, "--max-new-shards", "4"]) == 0  # a planned stop: resume later
    assert (
        "stopped as asked (--max-new-shards 4): 5 of 9 shards remain, 4 are kept in"
        in capsys.readouterr().out
    )
    work = work_dir_for(out)
    assert len(list(work.glob("shard-*.safetensors"))) == 4 and not out.exists()

    encoded: list[int] = []
    real_encode = encode_module.check_finite_embeddings

    def counting(emb, texts=None, what="texts"):
        encoded.append(len(emb))
        return real_encode(emb, texts, what)

    monkeypatch.setattr(encode_module, "check_finite_embeddings", counting)
    assert cli.main(args) == 0
    assert "encoded 5 of 9 shards of 16 documents (4 done before)" in capsys.readouterr().out
    assert sum(encoded) == N_DOCS - 4 * SHARD  # only the missing shards were encoded again
    assert not work.exists()
    _assert_same_index(single, out, root / "model")


def test_work_folder_of_another_model_or_corpus_is_refused(setup, tmp_path):
    root, corpus, _ = setup
    out = tmp_path / "ix"
    common = {"batch_size": BATCH, "shard_size": SHARD, "resumable": True}
    assert build_index_command(str(root / "model"), str(corpus), str(out), max_new_shards=1, **common) is None
    with pytest.raises(EncodingWorkMismatchError, match=r"another model \(other weights or settings\)"):
        build_index_command(str(root / "other_model"), str(corpus), str(out), **common)
    other_corpus = tmp_path / "corpus.jsonl"
    other_corpus.write_text(corpus.read_text(encoding="utf-8").replace("Python", "Pithon"), encoding="utf-8")
    with pytest.raises(EncodingWorkMismatchError, match=r"another corpus \(other ids or texts\)"):
        build_index_command(str(root / "model"), str(other_corpus), str(out), **common)
    with pytest.raises(EncodingWorkMismatchError, match=r"another batch size"):
        build_index_command(str(root / "model"), str(corpus), str(out), **(common | {"batch_size": 4}))
    assert len(list(work_dir_for(out).glob("shard-*"))) == 1  # nothing was overwritten


def test_shards_without_a_manifest_are_refused(setup, tmp_path):
    root, corpus, _ = setup
    out = tmp_path / "ix"
    work = work_dir_for(out)
    work.mkdir()
    (work / "shard-000000.safetensors").write_bytes(b"left over")
    with pytest.raises(EncodingWorkMismatchError, match=r"holds shards but no manifest\.json"):
        build_index_command(str(root / "model"), str(corpus), str(out), resumable=True)
