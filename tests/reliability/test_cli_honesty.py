"""``quickstart --out FILE`` says that ``--out`` must be a folder (before: the bare
``File exists``); qrels with no relevant judgment put their warning in the metrics JSON too, and a set of
all ``-1`` judgments is described as such."""

from __future__ import annotations

import json

import pytest

from lorentz_rag import cli
from lorentz_rag.data.beir import load_beir, no_relevant_judgment, write_beir
from lorentz_rag.eval.retrieval import compute_metrics

from .conftest import DOCS, run_main

# --- 10. quickstart --out FILE ----------------------------------------------------------------------------


def test_quickstart_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    file = tmp_path / "results.txt"
    file.write_text("keep me")
    status, out, err = run_main(cli.main, ["quickstart", "--out", str(file), "--fast"], capsys)
    assert status == 2 and out == ""
    assert err == (
        f"error: --out {file} is a file: --out must be a folder (it receives results.json, report.md, plots and "
        "models); choose a new or existing folder\n"
    )
    assert file.read_text() == "keep me"
    status, _, err = run_main(cli.main, ["quickstart", "--out", str(file / "run"), "--fast"], capsys)
    assert status == 2 and err.startswith(f"error: --out {file / 'run'} lies under {file}, which is a file: ")


# --- 15. qrels without a relevant judgment ------------------------------------------------------------------


def _beir(folder, scores: list[int]):
    corpus = {f"d{i}": {"title": "", "text": text} for i, text in enumerate(DOCS)}
    queries = {f"q{i}": f"query {i}" for i in range(len(scores))}
    qrels = {f"q{i}": {f"d{i}": score} for i, score in enumerate(scores)}
    write_beir(folder, corpus, queries, qrels)
    return folder


@pytest.mark.parametrize(
    ("scores", "described"),
    [
        ([0, 0, 0], "every judgment is 0: no query has a relevant document, so every metric is 0"),
        (
            [-1, -1],
            "every judgment is -1 (a negative grade: every judged document is non-relevant): no query has a "
            "relevant document, so every metric is 0",
        ),
        ([0, -1, -2], "no judgment is above 0 (1 are 0, 2 negative): no query has a relevant document"),
    ],
)
def test_no_relevant_judgment_is_in_the_metrics_json(scores, described, tiny_model_dir, tmp_path, capsys):
    folder = _beir(tmp_path / "beir", scores)
    output = tmp_path / "metrics.json"
    argv = ["eval", "beir", "--model", str(tiny_model_dir), "--data", str(folder), "--output", str(output)]
    with pytest.warns(UserWarning, match="no query has a relevant document"):
        status, _, _ = run_main(cli.main, argv, capsys)
    assert status == 0
    metrics = json.loads(output.read_text())
    assert metrics["ndcg@10"] == 0.0 and metrics["recall@100"] == 0.0
    [warning] = metrics["meta"]["warnings"]
    assert warning.startswith(f"{folder / 'qrels' / 'test.tsv'}: {described}")


def test_ordinary_qrels_write_no_warning(tiny_model_dir, tmp_path, capsys):
    folder = _beir(tmp_path / "beir", [1, 0, -1])
    output = tmp_path / "metrics.json"
    argv = ["eval", "beir", "--model", str(tiny_model_dir), "--data", str(folder), "--output", str(output)]
    assert run_main(cli.main, argv, capsys)[0] == 0
    assert json.loads(output.read_text())["meta"]["warnings"] == []
    assert load_beir(folder).warnings == []
    assert no_relevant_judgment({}) is None


def test_a_grade_below_minus_one_does_not_crash_and_counts_as_non_relevant():
    # pytrec_eval 0.5 dies with SIGSEGV on {"q0": {"d0": 1}, "q1": {"d1": -2}}; negative grades count as 0.
    ranked = {"q0": ["d1", "d0", "d2"], "q1": ["d0", "d1", "d2"]}
    negative = compute_metrics({"q0": {"d0": 1, "d1": -2, "d2": 2}, "q1": {"d1": 1, "d0": -5}}, ranked)
    zero = compute_metrics({"q0": {"d0": 1, "d1": 0, "d2": 2}, "q1": {"d1": 1, "d0": 0}}, ranked)
    assert negative == zero and 0 < negative["ndcg@10"] < 1
