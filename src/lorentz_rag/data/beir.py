"""Read and write retrieval evaluation sets in the BEIR folder format.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``) and ``qrels/<split>.tsv`` (tab-separated ``query-id``, ``corpus-id``, integer ``score``,
with that header line).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lorentz_rag.data.jsonl import DataFormatError, read_jsonl_numbered, string_field

QRELS_HEADER = ("query-id", "corpus-id", "score")


class BeirFormatError(DataFormatError):
    """A BEIR folder is malformed; the message names the file and line."""


@dataclass
class BeirData:
    """A loaded BEIR split.

    ``corpus``: ``{doc_id: {"title": str, "text": str}}`` in file order; ``queries``: ``{query_id: text}``
    for the queries judged in the split, in file order; ``qrels``: ``{query_id: {doc_id: score}}``;
    ``warnings``: what makes the metrics meaningless (:func:`no_relevant_judgment`), for the metrics JSON.
    """

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    warnings: list[str] = field(default_factory=list)


def _string_field(row: Mapping[str, object], key: str, where: str, required: bool = True) -> str:
    return string_field(row, key, where, required=required, error=BeirFormatError)


def _read_rows(path: Path) -> list[tuple[int, dict[str, object]]]:
    """``(line number, row)`` pairs of a JSONL file, errors re-raised as :class:`BeirFormatError`."""
    if not path.is_file():
        raise BeirFormatError(
            f"{path}: file not found (a BEIR folder needs corpus.jsonl, queries.jsonl, qrels/)"
        )
    try:
        return list(read_jsonl_numbered(path))
    except DataFormatError as error:
        raise BeirFormatError(str(error)) from error


def document_text(doc: Mapping[str, str]) -> str:
    """The text a document is embedded as: ``title + " " + text``, stripped (what BEIR and mteb do)."""
    return (doc.get("title", "") + " " + doc["text"]).strip()


def _read_corpus_file(path: Path) -> dict[str, dict[str, str]]:
    """``{doc_id: {"title", "text"}}`` of a ``corpus.jsonl``, in file order (errors name file and line)."""
    corpus: dict[str, dict[str, str]] = {}
    for lineno, row in _read_rows(path):
        where = f"{path}:{lineno}"
        doc_id = _string_field(row, "_id", where)
        if doc_id in corpus:
            raise BeirFormatError(f"{where}: duplicate document id {doc_id!r}")
        corpus[doc_id] = {
            "title": _string_field(row, "title", where, required=False),
            "text": _string_field(row, "text", where),
        }
    return corpus


def read_corpus(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Document ids and texts (:func:`document_text`) of a corpus, in file order.

    ``path`` is a JSONL file of ``{"_id", "title"?, "text"}`` rows or a BEIR folder (its ``corpus.jsonl``).
    Raises ``FileNotFoundError`` for a missing file and :class:`BeirFormatError` naming the file and line.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "corpus.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: corpus not found (a .jsonl file or a BEIR folder)")
    corpus = _read_corpus_file(file)
    return list(corpus), [document_text(doc) for doc in corpus.values()]


def load_beir(folder: str | os.PathLike[str], split: str = "test") -> BeirData:
    """Load ``folder`` (a BEIR dataset) for ``split``.

    Only queries that have judgments in ``qrels/<split>.tsv`` are kept, as BEIR's own loader does.
    Raises :class:`BeirFormatError` naming the file and line for a missing file, invalid JSON, a
    missing or non-string field, a duplicate id, a bad qrels header or row, or a qrels row that names
    an unknown query or document.
    """
    folder = Path(folder)
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"

    corpus = _read_corpus_file(corpus_path)
    all_queries: dict[str, str] = {}
    for lineno, row in _read_rows(queries_path):
        where = f"{queries_path}:{lineno}"
        query_id = _string_field(row, "_id", where)
        if query_id in all_queries:
            raise BeirFormatError(f"{where}: duplicate query id {query_id!r}")
        all_queries[query_id] = _string_field(row, "text", where)

    qrels = _read_qrels(qrels_path, all_queries, corpus)
    queries = {query_id: text for query_id, text in all_queries.items() if query_id in qrels}
    problem = no_relevant_judgment(qrels)
    return BeirData(corpus, queries, qrels, [f"{qrels_path}: {problem}"] if problem else [])


def no_relevant_judgment(qrels: Mapping[str, Mapping[str, int]]) -> str | None:
    """Why every metric is 0 when no judgment in ``qrels`` is above 0 (relevant): all 0, all one negative grade
    (e.g. ``-1``, judged non-relevant), or a mix; ``None`` when some document is relevant (or nothing is judged)."""
    scores = [score for judged in qrels.values() for score in judged.values()]
    if not scores or any(score > 0 for score in scores):
        return None
    grades = sorted(set(scores))
    if grades == [0]:
        what = "every judgment is 0"
    elif len(grades) == 1:
        what = f"every judgment is {grades[0]} (a negative grade: every judged document is non-relevant)"
    else:
        negative = sum(score < 0 for score in scores)
        what = f"no judgment is above 0 ({len(scores) - negative} are 0, {negative} negative)"
    return f"{what}: no query has a relevant document, so every metric is 0"


def _read_qrels(
    path: Path, queries: Mapping[str, str], corpus: Mapping[str, object]
) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise BeirFormatError(f"{path}: file not found (expected qrels/<split>.tsv)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise BeirFormatError(f"{path}: not valid UTF-8 ({error.reason})") from error
    if not lines or tuple(lines[0].split("\t")) != QRELS_HEADER:
        found = repr(lines[0]) if lines else "an empty file"
        raise BeirFormatError(f"{path}:1: expected header {chr(9).join(QRELS_HEADER)!r}, found {found}")
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != 3:
            raise BeirFormatError(f"{path}:{lineno}: expected 3 tab-separated columns, found {len(cells)}")
        query_id, doc_id, score_text = cells
        try:
            score = int(score_text)
        except ValueError as error:
            raise BeirFormatError(f"{path}:{lineno}: score {score_text!r} is not an integer") from error
        if query_id not in queries:
            raise BeirFormatError(f"{path}:{lineno}: query id {query_id!r} is not in queries.jsonl")
        if doc_id not in corpus:
            raise BeirFormatError(f"{path}:{lineno}: corpus id {doc_id!r} is not in corpus.jsonl")
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged and judged[doc_id] != score:
            raise BeirFormatError(
                f"{path}:{lineno}: query {query_id!r}, document {doc_id!r} judged {score} here but "
                f"{judged[doc_id]} on line {first_line[(query_id, doc_id)]}; keep one judgment"
            )
        first_line.setdefault((query_id, doc_id), lineno)
        judged[doc_id] = score
    problem = no_relevant_judgment(qrels)
    if problem:
        warnings.warn(f"{path}: {problem}", UserWarning, stacklevel=3)
    return qrels


def write_beir(
    folder: str | os.PathLike[str],
    corpus: Mapping[str, Mapping[str, str]],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    split: str = "test",
) -> Path:
    """Write a BEIR folder that :func:`load_beir` reads back unchanged; returns ``folder``.

    ``corpus`` values need ``"text"`` and may have ``"title"``. Raises ``ValueError`` if a qrels entry
    names an unknown query or document.
    """
    folder = Path(folder)
    for query_id, judged in qrels.items():
        if query_id not in queries:
            raise ValueError(f"qrels name query {query_id!r}, which is not in queries")
        for doc_id in judged:
            if doc_id not in corpus:
                raise ValueError(
                    f"qrels for query {query_id!r} name document {doc_id!r}, which is not in corpus"
                )
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for doc_id, doc in corpus.items():
            row = {"_id": doc_id, "title": doc.get("title", ""), "text": doc["text"]}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for query_id, text in queries.items():
            handle.write(json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) + "\n")
    with (folder / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as handle:
        handle.write("\t".join(QRELS_HEADER) + "\n")
        for query_id, judged in qrels.items():
            for doc_id, score in judged.items():
                handle.write(f"{query_id}\t{doc_id}\t{int(score)}\n")
    return folder
