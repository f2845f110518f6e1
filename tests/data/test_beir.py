"""BEIR folder reader/writer: round trip, the bundled FAQ set, and error messages on broken folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lorentz_rag.data.beir import BeirData, BeirFormatError, load_beir, write_beir
from lorentz_rag.data.bundled import faq_dev_path

CORPUS = {
    "d1": {"title": "Lorentz", "text": "The hyperboloid model."},
    "d2": {"title": "", "text": "Poincaré ball — non-ASCII survives."},
    "d3": {"title": "Unjudged", "text": "A document no query points at."},
}
QUERIES = {"q1": "what is the hyperboloid?", "q2": "ball model"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 2, "d1": 0}}


def write_folder(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "beir", CORPUS, QUERIES, QRELS)


def test_round_trip_preserves_everything_in_order(tmp_path: Path) -> None:
    data = load_beir(write_folder(tmp_path))
    assert isinstance(data, BeirData)
    assert data.corpus == CORPUS
    assert list(data.corpus) == ["d1", "d2", "d3"]
    assert data.queries == QUERIES
    assert data.qrels == QRELS
    header = (tmp_path / "beir" / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "query-id\tcorpus-id\tscore"


def test_only_judged_queries_are_kept_and_title_defaults_to_empty(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    with (folder / "queries.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "q3", "text": "no judgments"}) + "\n")
    with (folder / "corpus.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "d4", "text": "no title field"}) + "\n")
    data = load_beir(folder)
    assert "q3" not in data.queries
    assert data.corpus["d4"] == {"title": "", "text": "no title field"}


def test_other_split_is_read_from_its_own_file(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "beir", CORPUS, QUERIES, {"q2": {"d3": 1}}, split="dev")
    data = load_beir(folder, split="dev")
    assert data.qrels == {"q2": {"d3": 1}}
    assert data.queries == {"q2": "ball model"}
    with pytest.raises(BeirFormatError, match=r"test\.tsv: file not found"):
        load_beir(folder)


def test_write_rejects_qrels_with_unknown_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="document 'nope'"):
        write_beir(tmp_path / "x", CORPUS, QUERIES, {"q1": {"nope": 1}})
    with pytest.raises(ValueError, match="query 'q9'"):
        write_beir(tmp_path / "x", CORPUS, QUERIES, {"q9": {"d1": 1}})


def test_bundled_faq_dev_set_has_one_answer_per_question() -> None:
    data = load_beir(faq_dev_path())
    assert len(data.queries) == len(data.corpus) == 302
    assert all(len(judged) == 1 and set(judged.values()) == {1} for judged in data.qrels.values())
    assert {doc for judged in data.qrels.values() for doc in judged} == set(data.corpus)
    assert sum(q.startswith("pyfaq-") for q in data.queries) == 179
    assert sum(q.startswith("debfaq-") for q in data.queries) == 123


def replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("relative", "lineno", "text", "message"),
    [
        ("corpus.jsonl", 2, '{"_id": "d2", "text": ', r"corpus\.jsonl:2: invalid JSON"),
        ("corpus.jsonl", 3, '{"title": "t", "text": "x"}', r"corpus\.jsonl:3: field '_id' is missing"),
        ("corpus.jsonl", 1, '{"_id": "d1", "text": 5}', r"corpus\.jsonl:1: field 'text' is a int"),
        ("corpus.jsonl", 2, '{"_id": "d1", "text": "again"}', r"corpus\.jsonl:2: duplicate document id 'd1'"),
        ("corpus.jsonl", 1, '["_id", "d1"]', r"corpus\.jsonl:1: expected a JSON object"),
        ("queries.jsonl", 2, '{"_id": "q2"}', r"queries\.jsonl:2: field 'text' is missing"),
        ("qrels/test.tsv", 1, "qid\tdocid\tscore", r"test\.tsv:1: expected header"),
        ("qrels/test.tsv", 2, "q1\td1", r"test\.tsv:2: expected 3 tab-separated columns, found 2"),
        ("qrels/test.tsv", 2, "q1\td1\thigh", r"test\.tsv:2: score 'high' is not an integer"),
        ("qrels/test.tsv", 3, "q2\tmissing-doc\t1", r"test\.tsv:3: corpus id 'missing-doc' is not in corpus"),
        ("qrels/test.tsv", 2, "q7\td1\t1", r"test\.tsv:2: query id 'q7' is not in queries"),
    ],
)
def test_malformed_folder_names_file_and_line(
    tmp_path: Path, relative: str, lineno: int, text: str, message: str
) -> None:
    folder = write_folder(tmp_path)
    replace_line(folder / relative, lineno, text)
    with pytest.raises(BeirFormatError, match=message):
        load_beir(folder)


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    folder = write_folder(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(BeirFormatError, match=re.escape(f"{Path(missing).name}: file not found")):
        load_beir(folder)


def test_invalid_utf8_is_reported_with_line(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    with (folder / "queries.jsonl").open("ab") as handle:
        handle.write(b'{"_id": "q3", "text": "\xff"}\n')
    with pytest.raises(BeirFormatError, match=r"queries\.jsonl:3: not valid UTF-8"):
        load_beir(folder)


def test_beir_format_error_is_a_value_error() -> None:
    assert issubclass(BeirFormatError, ValueError)
