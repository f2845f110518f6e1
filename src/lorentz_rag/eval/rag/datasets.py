"""RAGBench-schema datasets: loading (Hugging Face hub or local JSONL/Parquet) and the retrieval corpus.

A row has ``id``, ``question``, ``documents`` (a list of strings: the passages RAGBench gave the generator
for this question) and optionally ``response`` (RAGBench's reference answer). The retrieval corpus of a
split is the de-duplicated union of every row's ``documents``; a row's own documents are its gold set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorentz_rag.data.jsonl import DataFormatError, read_jsonl

#: The RAGBench subsets used in the paper (HypRAG, Table 3).
PAPER_SUBSETS = ("covidqa", "cuad", "emanual", "delucionqa", "expertqa")
#: Every subset of ``rungalileo/ragbench``.
RAGBENCH_SUBSETS = (
    *PAPER_SUBSETS,
    "hotpotqa",
    "msmarco",
    "pubmedqa",
    "tatqa",
    "finqa",
    "hagrid",
    "techqa",
)
DEFAULT_HF_DATASET = "rungalileo/ragbench"
REQUIRED_COLUMNS = ("id", "question", "documents")
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz")


class RagDatasetError(ValueError):
    """A RAG dataset name, file or row is unusable; the message says which and what would be right."""


@dataclass(frozen=True)
class RagRow:
    """One evaluation question: its gold ``documents`` (in the dataset's order) and reference ``response``."""

    id: str
    question: str
    documents: tuple[str, ...]
    response: str | None = None


@dataclass(frozen=True)
class RagCorpus:
    """The retrieval corpus of a split.

    ``doc_ids[i]`` names ``doc_texts[i]``; ids are ``"d<position>"`` in first-occurrence order, so the same
    rows always give the same corpus. ``gold[row_id]`` lists the ids of that row's own documents.
    """

    doc_ids: tuple[str, ...]
    doc_texts: tuple[str, ...]
    gold: Mapping[str, tuple[str, ...]]

    def text(self, doc_id: str) -> str:
        return self.doc_texts[int(doc_id[1:])]


@dataclass(frozen=True)
class DatasetSource:
    """Where rows come from: a hub subset (``kind="hub"``) or a local file or folder (``kind="local"``)."""

    kind: str
    name: str  # subset name, or the file/folder stem; used in the run folder's name
    location: str  # hub id, or the local path


def resolve_dataset(dataset: str, hf_dataset: str = DEFAULT_HF_DATASET) -> DatasetSource:
    """Turn ``--dataset`` into a :class:`DatasetSource`, failing at once on an unknown name.

    An existing file or folder wins over a subset name; otherwise the name must be a RAGBench subset.
    """
    path = Path(dataset).expanduser()
    if path.exists():
        stem = path.name
        for suffix in _LOCAL_SUFFIXES:
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        return DatasetSource(kind="local", name=stem, location=str(path))
    if dataset in RAGBENCH_SUBSETS:
        return DatasetSource(kind="hub", name=dataset, location=hf_dataset)
    raise RagDatasetError(
        f"unknown dataset {dataset!r}: expected a RAGBench subset ({', '.join(RAGBENCH_SUBSETS)}; the paper "
        f"uses {', '.join(PAPER_SUBSETS)}) or an existing JSONL/Parquet file or folder with the columns "
        f"{', '.join(REQUIRED_COLUMNS)} (optional: response)"
    )


def load_rag_rows(source: DatasetSource, split: str = "test") -> list[RagRow]:
    """Read every row of ``split`` from ``source``, validated (see :func:`rows_from_records`)."""
    if source.kind == "hub":
        return rows_from_records(
            _hub_records(source, split), where=f"{source.location}/{source.name}[{split}]"
        )
    path = Path(source.location)
    files = _local_files(path, split) if path.is_dir() else [path]
    rows: list[RagRow] = []
    for file in files:
        rows.extend(rows_from_records(_file_records(file), where=str(file)))
    _check_unique_ids(rows, where=str(path))
    return rows


def _hub_records(source: DatasetSource, split: str) -> Iterable[Mapping[str, Any]]:
    from datasets import load_dataset

    try:
        data = load_dataset(source.location, name=source.name, split=split)
    except Exception as error:  # the hub client raises many types (offline, missing split, bad name)
        raise RagDatasetError(
            f"could not load {source.location!r} subset {source.name!r} split {split!r} from the Hugging Face "
            f"hub ({type(error).__name__}: {error}); without network access, pass a local JSONL/Parquet file "
            f"or folder with the same columns as --dataset"
        ) from error
    return iter(data)


def _local_files(folder: Path, split: str) -> list[Path]:
    """Files of ``split`` in ``folder``: names starting with the split name (the hub's Parquet layout)."""
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_LOCAL_SUFFIXES))
    chosen = [p for p in candidates if p.name.startswith(split)]
    if not chosen:
        found = ", ".join(p.name for p in candidates) or "no JSONL/Parquet files"
        raise RagDatasetError(
            f"{folder}: no file for split {split!r} (expected a name starting with {split!r}, e.g. "
            f"{split}.jsonl or {split}-00000-of-00001.parquet; found {found})"
        )
    return chosen


def _file_records(path: Path) -> Iterable[Mapping[str, Any]]:
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.name.endswith((".jsonl", ".jsonl.gz", ".json")):
        try:
            return list(read_jsonl(path))
        except DataFormatError as error:
            raise RagDatasetError(str(error)) from error
    raise RagDatasetError(f"{path}: unsupported file type (expected .jsonl, .jsonl.gz or .parquet)")


def rows_from_records(records: Iterable[Mapping[str, Any]], where: str) -> list[RagRow]:
    """Validate RAGBench records into :class:`RagRow` s; errors name ``where``, the row number and the column.

    ``id`` may be a string or an integer; ``documents`` must be a non-empty list of strings; ``response``
    may be missing or null (then answer-overlap metrics are reported missing for that row).
    """
    rows: list[RagRow] = []
    for number, record in enumerate(records, start=1):
        at = f"{where}: row {number}"
        missing = [c for c in REQUIRED_COLUMNS if c not in record]
        if missing:
            raise RagDatasetError(
                f"{at}: missing column(s) {', '.join(missing)} (found: {', '.join(sorted(record)) or 'none'}; "
                f"a RAGBench row needs {', '.join(REQUIRED_COLUMNS)}, optionally response)"
            )
        row_id, question, documents = record["id"], record["question"], record["documents"]
        if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
            raise RagDatasetError(f"{at}: 'id' must be a string or integer, got {type(row_id).__name__}")
        if not isinstance(question, str) or not question.strip():
            raise RagDatasetError(f"{at} (id {row_id!r}): 'question' must be a non-empty string")
        if isinstance(documents, str) or not isinstance(documents, Sequence) or len(documents) == 0:
            raise RagDatasetError(f"{at} (id {row_id!r}): 'documents' must be a non-empty list of strings")
        for position, doc in enumerate(documents):
            if not isinstance(doc, str) or not doc.strip():
                raise RagDatasetError(
                    f"{at} (id {row_id!r}): documents[{position}] must be a non-empty string, got {doc!r:.40}"
                )
        response = record.get("response")
        if response is not None and not isinstance(response, str):
            raise RagDatasetError(f"{at} (id {row_id!r}): 'response' must be a string or null")
        rows.append(RagRow(str(row_id), question, tuple(documents), response or None))
    if not rows:
        raise RagDatasetError(f"{where}: no rows")
    _check_unique_ids(rows, where)
    return rows


def _check_unique_ids(rows: Sequence[RagRow], where: str) -> None:
    # Resuming a run keys finished rows by id, so ids must be unique.
    seen: set[str] = set()
    for row in rows:
        if row.id in seen:
            raise RagDatasetError(f"{where}: duplicate row id {row.id!r} (ids must be unique)")
        seen.add(row.id)


def build_corpus(rows: Sequence[RagRow]) -> RagCorpus:
    """The de-duplicated union of every row's documents, in first-occurrence order (not set order).

    Duplicates are exact string matches; a document repeated inside one row counts once in its gold set.
    """
    position: dict[str, int] = {}
    gold: dict[str, tuple[str, ...]] = {}
    for row in rows:
        ids: list[str] = []
        for text in row.documents:
            if text not in position:
                position[text] = len(position)
            doc_id = f"d{position[text]}"
            if doc_id not in ids:
                ids.append(doc_id)
        gold[row.id] = tuple(ids)
    texts = tuple(position)  # dicts keep insertion order: first occurrence
    return RagCorpus(doc_ids=tuple(f"d{i}" for i in range(len(texts))), doc_texts=texts, gold=gold)
