"""HiT's subsumption protocol: F1 of "is ``candidate`` an ancestor of ``child``?" with a threshold chosen on a
validation slice.

The pairs come from ``lorentz-rag taxonomy build`` (``eval/subsumption/{validation,test}.jsonl.gz``, rows
``{"child", "candidate", "label", "setting", ...}``; ``setting`` is ``random`` or ``hard`` negatives, each a
protocol of its own). A model scores each pair (higher = more likely a subsumption); the threshold that
maximises F1 on validation is applied unchanged to test (He et al. 2024, "Language Models as Hierarchy
Encoders", section 4). numpy only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lorentz_rag.data.jsonl import DataFormatError, read_jsonl_numbered

__all__ = ["best_threshold", "f1_at", "read_subsumption_pairs", "subsumption_f1"]

_FIELDS = ("child", "candidate", "label", "setting")


def read_subsumption_pairs(path: str | os.PathLike[str], setting: str | None = None) -> list[dict[str, Any]]:
    """The rows of a subsumption file (of one ``setting`` when given); errors name file and line."""
    rows = []
    for lineno, row in read_jsonl_numbered(path):
        missing = [f for f in _FIELDS if f not in row]
        if missing or row["label"] not in (0, 1):
            raise DataFormatError(f"{path}:{lineno}: a pair needs {', '.join(_FIELDS)} with label 0 or 1")
        if setting is None or row["setting"] == setting:
            rows.append(row)
    if not rows:
        raise DataFormatError(f"{path}: no pairs" + (f" of setting {setting!r}" if setting else ""))
    return rows


def _arrays(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape or s.size == 0:
        raise ValueError(f"{name}: {s.size} scores and {y.size} labels (need the same number, > 0)")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name}: labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: scores must be finite")
    return s, y.astype(bool)


def f1_at(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float
) -> dict[str, float]:
    """Precision, recall, F1 and accuracy of predicting ``score >= threshold`` as a subsumption."""
    s, y = _arrays(scores, labels, "f1_at")
    predicted = s >= threshold
    tp = float(np.sum(predicted & y))
    precision = tp / max(1.0, float(predicted.sum()))
    recall = tp / max(1.0, float(y.sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": float(np.mean(predicted == y))}


def best_threshold(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[float, float]:
    """``(threshold, F1)`` maximising F1 of ``score >= threshold`` over every distinct score (ties: the
    highest threshold). Exact, in ``O(n log n)``."""
    s, y = _arrays(scores, labels, "best_threshold")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    predicted = np.arange(1, s.size + 1)
    last_of_value = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # cut only between distinct scores
    tp, predicted, cuts = tp[last_of_value], predicted[last_of_value], s_sorted[last_of_value]
    positives = max(1, int(y.sum()))
    f1 = 2 * tp / (predicted + positives)
    best = int(np.argmax(f1))  # first maximum = highest threshold
    return float(cuts[best]), float(f1[best])


def subsumption_f1(
    scores_val: Sequence[float] | np.ndarray,
    labels_val: Sequence[int] | np.ndarray,
    scores_test: Sequence[float] | np.ndarray,
    labels_test: Sequence[int] | np.ndarray,
) -> dict[str, float]:
    """The threshold maximising F1 on validation, and test precision / recall / F1 / accuracy at it."""
    threshold, validation_f1 = best_threshold(scores_val, labels_val)
    return {
        "threshold": threshold,
        "validation_f1": validation_f1,
        **f1_at(scores_test, labels_test, threshold),
    }
