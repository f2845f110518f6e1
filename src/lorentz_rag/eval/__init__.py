"""Evaluation: BEIR retrieval metrics, the exact vector index, the MTEB adapter, the hierarchy probe.

Submodules are imported on use (``from lorentz_rag.eval.retrieval import evaluate_beir``); they pull in
pytrec_eval, FAISS, mteb or matplotlib only when needed.
"""

from __future__ import annotations
