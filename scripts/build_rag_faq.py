#!/usr/bin/env python3
"""Build ``data/eval/faq-dev-ragbench.jsonl``: the bundled FAQ dev set in RAGBench's row schema.

Each FAQ question (``data/eval/faq-dev``, BEIR format) becomes one row::

    {"id": query id, "question": question text,
     "documents": [gold answer + 3 distractor answers, in a seeded order],
     "response": gold answer}

The distractors are the question's BM25 top answers other than its gold one (k1 = 1.2, b = 0.75 over
lower-cased word tokens; ties by corpus order), so they are plausible, topically close passages, as the
retrieved passages in RAGBench are. The four documents are shuffled with a ``random.Random`` seeded by
``"<seed>:<query id>"`` so that the gold answer is not always first. The output is deterministic:
running the script twice writes byte-identical files.

Usage::

    python scripts/build_rag_faq.py                       # write data/eval/faq-dev-ragbench.jsonl
    python scripts/build_rag_faq.py --check               # exit 1 if the committed file is stale
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO / "data" / "eval" / "faq-dev"
DEFAULT_OUT = REPO / "data" / "eval" / "faq-dev-ragbench.jsonl"
N_DISTRACTORS = 3
SEED = 0
_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def bm25_ranking(
    query: str, documents: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75
) -> list[int]:
    """Document positions by decreasing BM25 score of ``query`` (ties: lower position first).

    ``documents`` are token lists; idf is ``ln(1 + (N - df + 0.5) / (df + 0.5))`` (never negative).
    """
    n = len(documents)
    avg_len = sum(len(d) for d in documents) / n
    df = Counter(term for doc in documents for term in set(doc))
    counts = [Counter(doc) for doc in documents]
    terms = set(tokenize(query))
    scores = []
    for doc, tf in zip(documents, counts):
        norm = k1 * (1 - b + b * len(doc) / avg_len)
        score = 0.0
        for term in terms:
            if tf[term]:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf[term] * (k1 + 1) / (tf[term] + norm)
        scores.append(score)
    return sorted(range(n), key=lambda i: (-scores[i], i))


def build_rows(
    corpus: Mapping[str, Mapping[str, str]],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    n_distractors: int = N_DISTRACTORS,
    seed: int = SEED,
) -> list[dict[str, object]]:
    """One RAGBench row per judged query, in ``queries`` order (see the module docstring)."""
    doc_ids = list(corpus)
    tokens = [tokenize(corpus[d]["text"]) for d in doc_ids]
    rows: list[dict[str, object]] = []
    for query_id, question in queries.items():
        gold_ids = [d for d, score in qrels[query_id].items() if score > 0]
        if len(gold_ids) != 1:
            raise ValueError(f"query {query_id!r} has {len(gold_ids)} relevant answers; expected exactly one")
        gold = gold_ids[0]
        ranked = [doc_ids[i] for i in bm25_ranking(question, tokens)]
        distractors = [d for d in ranked if d != gold][:n_distractors]
        chosen = [gold, *distractors]
        random.Random(f"{seed}:{query_id}").shuffle(chosen)
        rows.append(
            {
                "id": query_id,
                "question": question,
                "documents": [corpus[d]["text"] for d in chosen],
                "response": corpus[gold]["text"],
            }
        )
    return rows


def render(rows: Sequence[Mapping[str, object]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def build(source: Path = DEFAULT_SOURCE) -> bytes:
    """The file's bytes, from the BEIR folder ``source``."""
    sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing
    from lorentz_rag.data.beir import load_beir

    data = load_beir(source, split="test")
    return render(build_rows(data.corpus, data.queries, data.qrels))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="BEIR folder (default: faq-dev)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output JSONL")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    payload = build(args.source)
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == payload
        print(f"{args.out}: {'up to date' if same else 'STALE (rerun without --check)'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(payload)
    n_rows = payload.count(b"\n")
    print(f"wrote {args.out} ({n_rows} rows, {len(payload):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
