"""RAG evaluation on RAGBench-schema data: retrieval, generation and ragas metrics (``eval_ragas.py``).

Heavy dependencies (torch, transformers, ragas) are imported only when a run needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lorentz_rag.eval.rag.datasets import (
    PAPER_SUBSETS,
    RAGBENCH_SUBSETS,
    RagCorpus,
    RagDatasetError,
    RagRow,
    build_corpus,
    load_rag_rows,
    resolve_dataset,
)

if TYPE_CHECKING:  # pragma: no cover
    from lorentz_rag.eval.rag.pipeline import (
        RagEvalConfig,
        RagEvalError,
        RagRunResult,
        build_prompt,
        run_rag_eval,
    )

# The pipeline (torch, the models, the index) is imported on first use: `lorentz-rag --help` reads the RAG flags
# from lorentz_rag.eval.rag.command through this package without loading torch.
_PIPELINE = ("RagEvalConfig", "RagEvalError", "RagRunResult", "build_prompt", "run_rag_eval")

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


def __getattr__(name: str) -> Any:
    if name in _PIPELINE:
        return getattr(importlib.import_module("lorentz_rag.eval.rag.pipeline"), name)
    raise AttributeError(f"module 'lorentz_rag.eval.rag' has no attribute {name!r}")
