"""RAG evaluation without an LLM: RAGBench loading, the corpus, retrieval and overlap metrics, the run folder."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import pytest

from lorentz_rag.data.bundled import data_dir
from lorentz_rag.eval.rag.datasets import (
    RAGBENCH_SUBSETS,
    RagDatasetError,
    RagRow,
    build_corpus,
    load_rag_rows,
    resolve_dataset,
    rows_from_records,
)
from lorentz_rag.eval.rag.metrics import retrieval_metrics, rouge_l, token_f1
from lorentz_rag.eval.rag.pipeline import RagEvalConfig, RagEvalError, build_prompt, read_rows, run_rag_eval

REPO = Path(__file__).resolve().parents[2]

FIXTURE = [
    {
        "id": "q1",
        "question": "What colour is the sky?",
        "documents": ["The sky is blue.", "Grass is green."],
        "response": "The sky is blue.",
    },
    {
        "id": "q2",
        "question": "What colour is grass?",
        "documents": ["Grass is green.", "Snow is white.", "Grass is green."],
        "response": "Grass is green.",
    },
    {"id": 3, "question": "What colour is snow?", "documents": ["Snow is white.", "Coal is black."]},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class ScriptedRetriever:
    """Returns a fixed ranking per question (doc ids), scores decreasing with rank."""

    description = "scripted"

    def __init__(self, rankings: dict[str, list[str]]) -> None:
        self.rankings = rankings
        self.calls: list[tuple[list[str], int]] = []

    def search(self, query_texts, k):
        self.calls.append((list(query_texts), k))
        return [[(d, 1.0 - 0.1 * r) for r, d in enumerate(self.rankings[q][:k])] for q in query_texts]


def test_corpus_is_the_deduplicated_union_in_first_occurrence_order() -> None:
    rows = rows_from_records(FIXTURE, where="fixture")
    corpus = build_corpus(rows)
    assert corpus.doc_texts == ("The sky is blue.", "Grass is green.", "Snow is white.", "Coal is black.")
    assert corpus.doc_ids == ("d0", "d1", "d2", "d3")
    assert dict(corpus.gold) == {"q1": ("d0", "d1"), "q2": ("d1", "d2"), "3": ("d2", "d3")}
    # The order follows the rows, so reversing them reverses first occurrences (no set ordering).
    reversed_corpus = build_corpus(list(reversed(rows)))
    assert reversed_corpus.doc_texts == (
        "Snow is white.",
        "Coal is black.",
        "Grass is green.",
        "The sky is blue.",
    )
    assert rows[2] == RagRow("3", "What colour is snow?", ("Snow is white.", "Coal is black."), None)


def test_retrieval_metrics_match_a_hand_computed_case() -> None:
    # gold {d0, d1, d2}; ranked d3, d0, d5, d1: hits at ranks 2 and 4.
    got = retrieval_metrics(["d3", "d0", "d5", "d1"], ["d0", "d1", "d2"], k=4)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert got == pytest.approx({"recall@4": 2 / 3, "mrr@4": 0.5, "ndcg@4": dcg / idcg})
    assert got["ndcg@4"] == pytest.approx(0.49818, abs=1e-5)
    cut = retrieval_metrics(["d3", "d0", "d5", "d1"], ["d0", "d1", "d2"], k=1)
    assert cut == {"recall@1": 0.0, "mrr@1": 0.0, "ndcg@1": 0.0}
    assert retrieval_metrics(["d1", "d0"], ["d0", "d1"], k=10)["ndcg@10"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="gold set is empty"):
        retrieval_metrics(["d0"], [], k=1)


def test_retrieval_metrics_agree_with_pytrec_eval() -> None:
    pytest.importorskip("pytrec_eval")
    from lorentz_rag.eval.retrieval import compute_metrics

    rng = random.Random(7)
    docs = [f"d{i}" for i in range(30)]
    qrels, ranked, ours = {}, {}, []
    for q in range(25):
        gold = rng.sample(docs, rng.randint(1, 4))
        ranking = rng.sample(docs, 12)
        qrels[f"q{q}"] = dict.fromkeys(gold, 1)
        ranked[f"q{q}"] = ranking
        ours.append(retrieval_metrics(ranking, gold, k=10))
    theirs = compute_metrics(qrels, ranked)
    for name in ("ndcg@10", "mrr@10", "recall@10"):
        assert sum(m[name] for m in ours) / len(ours) == pytest.approx(theirs[name], abs=1e-4), name


def test_answer_overlap_metrics() -> None:
    assert token_f1("The sky is blue!", "sky is blue") == pytest.approx(1.0)
    # pred {sky, is, green}, gold {sky, is, blue}: 2 common -> P = R = 2/3.
    assert token_f1("sky is green", "the sky is blue") == pytest.approx(2 / 3)
    assert token_f1("nothing", "sky") == 0.0
    # LCS of "sky is green" / "the sky is blue" is "sky is": P = 2/3, R = 2/4.
    assert rouge_l("sky is green", "the sky is blue") == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_unknown_dataset_fails_at_once_listing_valid_names(tmp_path: Path) -> None:
    with pytest.raises(RagDatasetError) as info:
        resolve_dataset("covid-qa")
    for name in RAGBENCH_SUBSETS:
        assert name in str(info.value)
    config = RagEvalConfig(dataset="nosuch", model_path=str(tmp_path / "never-loaded"), output=str(tmp_path))
    with pytest.raises(RagDatasetError, match="unknown dataset 'nosuch'"):
        run_rag_eval(
            config, retriever_factory=lambda corpus: pytest.fail("must fail before loading"), echo=None
        )
    assert list(tmp_path.iterdir()) == []
    assert resolve_dataset("covidqa").location == "rungalileo/ragbench"
    assert resolve_dataset("covidqa", "me/ragbench-copy").location == "me/ragbench-copy"


def test_missing_and_malformed_columns_are_named(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [FIXTURE[0], {"id": "x", "question": "q?"}])
    with pytest.raises(RagDatasetError, match=r"bad\.jsonl: row 2: missing column\(s\) documents"):
        load_rag_rows(resolve_dataset(str(bad)))
    with pytest.raises(RagDatasetError, match=r"row 1 \(id 'x'\): 'documents' must be a non-empty list"):
        rows_from_records([{"id": "x", "question": "q?", "documents": "just a string"}], where="f")
    with pytest.raises(RagDatasetError, match="duplicate row id 'q1'"):
        rows_from_records([FIXTURE[0], FIXTURE[0]], where="f")


def test_local_parquet_folder_picks_the_split(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    folder = tmp_path / "covidqa"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(FIXTURE[:2]), folder / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(FIXTURE[2:]), folder / "train-00000-of-00001.parquet")
    source = resolve_dataset(str(folder))
    assert (source.kind, source.name) == ("local", "covidqa")
    assert [r.id for r in load_rag_rows(source, "test")] == ["q1", "q2"]
    assert [r.id for r in load_rag_rows(source, "train")] == ["3"]
    with pytest.raises(RagDatasetError, match="no file for split 'validation'"):
        load_rag_rows(source, "validation")


def test_prompt_numbers_documents_in_rank_order() -> None:
    prompt = build_prompt("Why?", ["first doc", "second doc"])
    assert prompt == (
        "Based on the following context, answer the question.\n\nContext:\n"
        "Document 1: first doc\n\nDocument 2: second doc\n\nQuestion: Why?\nAnswer:"
    )


def test_retrieval_only_run_writes_rows_summary_and_missing_reasons(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "mini.jsonl", FIXTURE)
    retriever = ScriptedRetriever(
        {
            "What colour is the sky?": ["d0", "d2", "d1"],  # gold d0, d1
            "What colour is grass?": ["d0", "d3", "d2"],  # gold d1, d2
            "What colour is snow?": ["d3", "d2", "d0"],  # gold d2, d3
        }
    )
    config = RagEvalConfig(
        dataset=str(data),
        model_path="unused",
        base_model_type="fake",
        output=str(tmp_path / "out"),
        top_k=2,
        no_generate=True,
    )
    result = run_rag_eval(config, retriever_factory=lambda corpus: retriever, echo=None)
    assert result.run_dir.parent == tmp_path / "out"
    assert result.run_dir.name.startswith("fake_mini_")
    assert retriever.calls == [
        (["What colour is the sky?", "What colour is grass?", "What colour is snow?"], 2)
    ]

    rows = read_rows(result.run_dir / "rows.jsonl")
    assert [r["id"] for r in rows] == ["q1", "q2", "3"]
    assert [x["doc_id"] for x in rows[0]["retrieved"]] == ["d0", "d2"]
    assert rows[0]["metrics"]["recall@2"] == 0.5 and rows[1]["metrics"]["mrr@2"] == 0.0
    assert rows[2]["metrics"]["ndcg@2"] == pytest.approx(1.0)
    assert rows[0]["answer"] is None and rows[0]["errors"] == {}

    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary == result.summary
    assert summary["metrics"]["recall@2"] == {"mean": pytest.approx((0.5 + 0 + 1) / 3), "n": 3}
    assert summary["metrics"]["mrr@2"]["mean"] == pytest.approx((1 + 0 + 1) / 3)
    ndcg_q1 = 1 / (1 + 1 / math.log2(3))
    assert summary["metrics"]["ndcg@2"]["mean"] == pytest.approx((ndcg_q1 + 0 + 1) / 3)
    # ragas' string-similarity precision: q1's contexts [sky (gold), snow] -> AP 1.0; recall 1/2 of gold.
    if "non_llm_context_precision" in summary["metrics"]:
        assert rows[0]["metrics"]["non_llm_context_precision"] == pytest.approx(1.0)
        assert rows[0]["metrics"]["non_llm_context_recall"] == pytest.approx(0.5)
    for name in ("faithfulness", "context_relevance", "answer_relevancy", "rouge_l", "token_f1"):
        assert name not in summary["metrics"]
        assert summary["missing"][name] == "generation disabled (--no_generate)"
    assert "missing" in result.table and "recall@2" in result.table
    config_saved = json.loads((result.run_dir / "run_config.json").read_text())
    assert config_saved["top_k"] == 2 and config_saved["dataset_location"] == str(data)


def test_resume_refuses_changed_settings_and_repairs_a_torn_line(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "mini.jsonl", FIXTURE)
    rankings = {r["question"]: ["d0", "d1", "d2", "d3"] for r in FIXTURE}
    base = dict(
        dataset=str(data),
        model_path="m",
        base_model_type="fake",
        output=str(tmp_path / "o"),
        no_generate=True,
    )
    first = run_rag_eval(
        RagEvalConfig(**base, top_k=2, limit=1), lambda c: ScriptedRetriever(rankings), echo=None
    )
    with pytest.raises(RagEvalError, match="top_k: 2 -> 3"):
        run_rag_eval(
            RagEvalConfig(**base, top_k=3, resume="latest"), lambda c: ScriptedRetriever(rankings), echo=None
        )
    rows_file = first.run_dir / "rows.jsonl"
    with rows_file.open("a") as handle:
        handle.write('{"id": "q2", "quest')  # a run killed mid-write
    retriever = ScriptedRetriever(rankings)
    again = run_rag_eval(
        RagEvalConfig(**base, top_k=2, resume=str(first.run_dir)), lambda c: retriever, echo=None
    )
    assert again.run_dir == first.run_dir
    assert retriever.calls == [(["What colour is grass?", "What colour is snow?"], 2)]
    assert [r["id"] for r in read_rows(rows_file)] == ["q1", "q2", "3"]
    assert again.summary["n_rows"] == 3


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_rag_faq", REPO / "scripts" / "build_rag_faq.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_faq_ragbench_file_is_reproducible_and_well_formed() -> None:
    builder = _load_builder()
    committed = data_dir() / "eval" / "faq-dev-ragbench.jsonl"
    assert builder.build() == committed.read_bytes()
    rows = load_rag_rows(resolve_dataset(str(committed)))
    assert len(rows) == 302
    for row in rows:
        assert len(row.documents) == 4 and len(set(row.documents)) == 4
        assert row.response in row.documents
    # The gold answer is not always in the same slot (seeded shuffle).
    assert len({row.documents.index(row.response) for row in rows}) == 4


def test_bm25_ranking_prefers_documents_sharing_rare_terms() -> None:
    builder = _load_builder()
    docs = [["python", "list"], ["debian", "package", "apt"], ["python", "apt"]]
    assert builder.bm25_ranking("How do I use apt on Debian?", docs) == [1, 2, 0]


def test_hub_subsets_load_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return FIXTURE[:2]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_rag_rows(resolve_dataset("emanual", "rungalileo/ragbench"), split="validation")
    assert calls == [("rungalileo/ragbench", "emanual", "validation")]
    assert [r.id for r in rows] == ["q1", "q2"]


def test_seed_command_line_parses_identically_in_both_entry_points(tmp_path: Path) -> None:
    from lorentz_rag.cli import build_parser as lorentz_rag_parser
    from lorentz_rag.eval.rag.command import build_parser, run_from_args

    seed = ["--model_path", "PATH", "--hyperbolic", "--dataset", "covidqa", "--output", "./results/ragas",
            "--base_model_type", "albert", "--top_k", "10"]  # fmt: skip
    script = vars(build_parser().parse_args(seed))
    cli = lorentz_rag_parser().parse_args(["eval", "rag", *seed])
    assert cli.func is run_from_args
    assert {k: v for k, v in vars(cli).items() if k in script} == script
    assert script["hyperbolic"] is True and script["top_k"] == 10 and script["split"] == "test"
    assert script["resume"] is None and script["llm_model"] is None
    assert build_parser().parse_args([*seed, "--resume"]).resume == "latest"
    fields = set(RagEvalConfig.__dataclass_fields__)
    assert fields <= set(script), fields - set(script)


def test_entry_point_reports_user_errors_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from lorentz_rag.eval.rag.command import main

    assert main(["--dataset", "covid", "--model_path", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'covid'") and "covidqa" in err
    assert main(["--dataset", "covidqa", "--llm_base_url", "http://127.0.0.1:9/v1"]) == 2
    assert "--llm_base_url needs --llm_model" in capsys.readouterr().err
