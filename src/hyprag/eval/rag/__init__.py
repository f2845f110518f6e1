"""RAG evaluation on RAGBench-schema data: retrieval, generation and ragas metrics (``eval_ragas.py``).

Heavy dependencies (torch, transformers, ragas) are imported only when a run needs them.
"""

from __future__ import annotations

from hyprag.eval.rag.datasets import (
    PAPER_SUBSETS,
    RAGBENCH_SUBSETS,
    RagCorpus,
    RagDatasetError,
    RagRow,
    build_corpus,
    load_rag_rows,
    resolve_dataset,
)
from hyprag.eval.rag.pipeline import RagEvalConfig, RagEvalError, RagRunResult, build_prompt, run_rag_eval

__all__ = [
    "PAPER_SUBSETS",
    "RAGBENCH_SUBSETS",
    "RagCorpus",
    "RagDatasetError",
    "RagEvalConfig",
    "RagEvalError",
    "RagRow",
    "RagRunResult",
    "build_corpus",
    "build_prompt",
    "load_rag_rows",
    "resolve_dataset",
    "run_rag_eval",
]
