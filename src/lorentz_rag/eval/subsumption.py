"""HiT's subsumption protocol: F1 of "is ``candidate`` an ancestor of ``child``?" with a threshold chosen on a
validation slice.

The pairs come from ``lorentz-rag taxonomy build`` (``eval/subsumption/{validation,test}.jsonl.gz``, rows
``{"child", "candidate", "label", "setting", ...}``; ``setting`` is ``random`` or ``hard`` negatives, each a
protocol of its own). A model scores each pair (higher = more likely a subsumption; :func:`subsumption_scores`
uses the model's ``relation_scores``, by default the ``broader`` score of candidate given child); the
threshold that maximises F1 on validation is applied unchanged to test (He et al. 2024, "Language Models as
Hierarchy Encoders", section 4): :func:`evaluate_subsumption` does all of it for a folder.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorentz_rag.data.jsonl import DataFormatError, read_jsonl_numbered
from lorentz_rag.geometry.relation import DEFAULT_RADIUS_WEIGHT

__all__ = [
    "best_threshold",
    "evaluate_subsumption",
    "f1_at",
    "graph_subsumption_scores",
    "read_subsumption_pairs",
    "subsumption_f1",
    "subsumption_scores",
]

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


@torch.no_grad()
def subsumption_scores(
    model: Any,
    rows: Sequence[dict[str, Any]],
    *,
    relation: str = "broader",
    radius_weight: float = DEFAULT_RADIUS_WEIGHT,
    field: str = "name",
    batch_size: int = 32,
) -> np.ndarray:
    """``[len(rows)]`` scores of the pairs: ``model.relation_scores(child, candidate, relation)``, every
    distinct text (the rows' ``child_<field>`` / ``candidate_<field>``, ``field`` ``name`` or ``text``)
    embedded once as a document."""
    if field not in ("name", "text"):
        raise ValueError(f"field must be 'name' or 'text', got {field!r}")
    children = [str(r[f"child_{field}"]) for r in rows]
    candidates = [str(r[f"candidate_{field}"]) for r in rows]
    unique = list(dict.fromkeys([*children, *candidates]))
    position = {t: i for i, t in enumerate(unique)}
    embeddings = model.encode(unique, "document", batch_size=batch_size)
    by_child: dict[str, list[int]] = {}
    for i, child in enumerate(children):
        by_child.setdefault(child, []).append(i)
    scores = np.empty(len(rows), dtype=np.float64)
    for child, members in by_child.items():
        a = embeddings[position[child]].unsqueeze(0)
        b = embeddings[[position[candidates[i]] for i in members]]
        row = model.relation_scores(a, b, relation, radius_weight)[0]
        scores[members] = row.double().cpu().numpy()
    return scores


def evaluate_subsumption(
    model: Any,
    folder: str | os.PathLike[str],
    *,
    setting: str = "hard",
    relation: str = "broader",
    radius_weight: float = DEFAULT_RADIUS_WEIGHT,
    field: str = "name",
    batch_size: int = 32,
) -> dict[str, Any]:
    """HiT's F1 for ``model`` on ``folder`` (``eval/subsumption`` of ``taxonomy build``): pairs of one
    ``setting`` (``random`` or ``hard``), threshold from ``validation.jsonl.gz``, F1 on ``test.jsonl.gz``."""
    folder = Path(folder)
    kwargs = {"relation": relation, "radius_weight": radius_weight, "field": field, "batch_size": batch_size}
    halves = []
    for name in ("validation", "test"):
        rows = read_subsumption_pairs(folder / f"{name}.jsonl.gz", setting)
        halves += [subsumption_scores(model, rows, **kwargs), np.array([r["label"] for r in rows])]
    return {**subsumption_f1(*halves), "setting": setting, "relation": relation}


def graph_subsumption_scores(model: Any, graph: Any, rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Graph-kNN as a subsumption scorer (:class:`lorentz_rag.search.graph_knn.ConceptGraph` ``graph``, built
    with ``model``): for a pair, the candidate's share of the child's votes (the child's name, embedded as a
    query; its ``k`` nearest concepts vote ``exp((s - s_max) / T)`` for themselves and ``hop_discount ** hops``
    for each ancestor): its ``broader`` vote over the neighbours' total weight, in [0, 1]. A candidate outside
    the graph scores 0."""
    children = list(dict.fromkeys(str(r["child_name"]) for r in rows))
    sims = graph.concept_similarities(model.encode(children, "query"))
    votes = graph.votes_from_similarities(sims, "broader")
    # max_hops 0: each neighbour votes for itself only, so a row's sum is the neighbours' total weight.
    own = dataclasses.replace(graph.settings, max_hops=0)
    total = np.asarray(graph.votes_from_similarities(sims, "broader", own).sum(axis=1)).reshape(-1)
    row_of = {c: i for i, c in enumerate(children)}
    scores = np.zeros(len(rows), dtype=np.float64)
    for i, r in enumerate(rows):
        position = graph.position.get(str(r["candidate"]))
        child = row_of[str(r["child_name"])]
        if position is not None and total[child] > 0:
            scores[i] = votes[child, position] / total[child]
    return scores
