"""The quickstart's data: the training mixture and the smaller evaluation sets of ``--fast``.

Everything is read from the bundled data (:mod:`lorentz_rag.data.bundled`) and written as JSONL / BEIR folders
that the trainer and :func:`lorentz_rag.eval.retrieval.evaluate_beir` read like any user's data.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lorentz_rag.data.beir import load_beir, write_beir
from lorentz_rag.data.bundled import data_dir, read_jsonl

__all__ = ["PAIR_FILES", "prepare_eval_subset", "prepare_probe_subset", "prepare_training_pairs"]

#: The training-pair files of the mixture, under the bundled data folder.
PAIR_FILES = {
    "python_docs": "train/pairs_python_docs.jsonl.gz",
    "wordnet_gloss": "train/pairs_wordnet_gloss.jsonl.gz",
}


def prepare_training_pairs(
    out_path: Path, *, seed: int, python_docs_pairs: int | None, wordnet_pairs: int | None
) -> dict[str, int]:
    """Write the contrastive training mixture to ``out_path`` (JSONL ``{"query", "document"}``).

    faq-dev is Python + Debian FAQ (question -> answer): the Python-docs pairs (section title -> body) are
    the closest in domain but few (4,069), the WordNet pairs (lemma -> gloss, 73,832) teach general
    short-query -> definition matching and the hierarchy. The mixture takes ``python_docs_pairs`` rows of
    the first and ``wordnet_pairs`` of the second (seeded sample, ``None`` = all), shuffled together, so
    neither source drowns the other. Returns the number of rows taken per source.
    """
    rng = random.Random(f"quickstart-pairs-{seed}")
    sources = {
        "python_docs": (data_dir() / PAIR_FILES["python_docs"], python_docs_pairs),
        "wordnet_gloss": (data_dir() / PAIR_FILES["wordnet_gloss"], wordnet_pairs),
    }
    rows: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    for name, (path, limit) in sources.items():
        source_rows = [{"query": r["query"], "document": r["document"]} for r in read_jsonl(path)]
        if limit is not None and limit < len(source_rows):
            source_rows = rng.sample(source_rows, limit)
        counts[name] = len(source_rows)
        rows.extend(source_rows)
    rng.shuffle(rows)
    _write_jsonl(out_path, rows)
    return counts


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare_eval_subset(
    source: Path, out_dir: Path, *, n_queries: int, n_docs: int | None, seed: int
) -> Path:
    """A smaller BEIR folder (``--fast``): ``n_queries`` seeded-sampled queries of ``source`` (half from each
    of its tune and report parts when it has them), their judged documents, and seeded-sampled other
    documents up to ``n_docs`` in all (``None``: the whole corpus). Every qrels split of ``source``
    (``test``, ``tune``, ``report``) is kept for the chosen queries."""
    splits = [p.stem for p in sorted((source / "qrels").glob("*.tsv"))]
    data = {split: load_beir(source, split) for split in splits}
    rng = random.Random(f"quickstart-eval-{seed}")
    parts = [sp for sp in ("tune", "report") if sp in data] or ["test"]
    chosen: list[str] = []
    for sp in parts:
        pool = sorted(data[sp].queries)
        chosen += rng.sample(pool, min(n_queries // len(parts), len(pool)))
    chosen = sorted(chosen)
    full = data["test"] if "test" in data else data[splits[0]]
    corpus = full.corpus
    if n_docs is not None:
        keep = {d for sp in splits for q in chosen for d in data[sp].qrels.get(q, {})}
        others = sorted(d for d in corpus if d not in keep)
        keep.update(rng.sample(others, max(0, min(len(others), n_docs - len(keep)))))
        corpus = {d: doc for d, doc in corpus.items() if d in keep}
    queries = {q: full.queries[q] for q in chosen}
    for split in splits:
        judged = {q: data[split].qrels[q] for q in chosen if data[split].qrels.get(q)}
        write_beir(out_dir, corpus=corpus, queries=queries, qrels=judged, split=split)
    return out_dir


def prepare_probe_subset(source: Path, out_path: Path, *, per_level: int) -> Path:
    """The first ``per_level`` items of each level of the hierarchy probe file (``--fast``)."""
    rows = list(read_jsonl(source))
    taken: dict[int, int] = {}
    kept = []
    for row in rows:
        level = int(row["level"])
        if taken.get(level, 0) < per_level:
            taken[level] = taken.get(level, 0) + 1
            kept.append(row)
    _write_jsonl(out_path, kept)
    return out_path
