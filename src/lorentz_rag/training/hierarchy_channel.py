"""Train the hierarchy channel H (:mod:`lorentz_rag.models.hierarchy_channel`) on a taxonomy's train split,
over the frozen similarity channel S's embeddings: only H learns, so S's rankings cannot move.

H learns to put the graph into one vector search. Every train concept's texts (name, definition, synonyms)
enter as *children*; every train concept enters as a *candidate* through its document text (definition, else
name), both as S's embeddings, computed once (:func:`concept_features`). Per child, the target distribution
over candidates mixes

- **the edges**: the child's ancestors within ``target_hops`` hops, graded ``target_hops + 1 - hops`` (the
  broader sets' grading: 3 = parent), normalised; and
- **the teacher**: graph-kNN's broader votes for the child (:mod:`lorentz_rag.search.graph_knn`) with the
  child's own concept left out of its neighbours, as a held-out concept would see the graph; its
  ``teacher_top`` largest votes, normalised;

as ``(1 - teacher_weight) edges + teacher_weight teacher``. The loss is the cross-entropy of that target
against a softmax of ``scale * broader(H(child), H(candidate))`` over the step's candidates: every target of
the batch's children (in-batch negatives for the others), ``negatives`` concepts per child drawn from S's
``mined_from`` most similar concepts that are not its ancestors (siblings, cousins), and ``random_candidates``
uniform ones. The child's own concept and ancestors outside its target are masked, not counted as negatives.
A centripetal hinge ``relu(r(parent) - r(child) + margin)`` on each child's direct parents keeps general
concepts nearer the centre. ``scale`` is learned (its log, clamped).

Everything is seeded (``seed``): the same inputs give the same channel, bit for bit, on one machine.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch import Tensor

from lorentz_rag.geometry import similarity as similarity_fns
from lorentz_rag.models.hierarchy_channel import HierarchyChannel
from lorentz_rag.search.graph_knn import ConceptGraph, GraphKnnSettings

__all__ = [
    "ChannelTargets",
    "ChannelTrainingSettings",
    "build_channel_targets",
    "concept_features",
    "train_hierarchy_channel",
]


@dataclass
class ChannelTrainingSettings:
    """How H is trained (module docstring)."""

    steps: int = 1200
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 100
    target_hops: int = 3
    teacher_weight: float = 0.5
    teacher_top: int = 16
    mined_from: int = 50
    negatives: int = 8
    random_candidates: int = 512
    margin: float = 0.1
    centripetal_weight: float = 1.0
    initial_scale: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "target_hops", "teacher_top", "mined_from"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"hierarchy channel training: {name} must be an integer >= 1, got {value!r}")
        for name in ("warmup", "negatives", "random_candidates", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"hierarchy channel training: {name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "initial_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"hierarchy channel training: {name} must be a number > 0, got {value!r}")
        for name in ("weight_decay", "margin", "centripetal_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"hierarchy channel training: {name} must be a number >= 0, got {value!r}")
        if not 0.0 <= float(self.teacher_weight) <= 1.0:
            raise ValueError(
                f"hierarchy channel training: teacher_weight must lie in [0, 1], got {self.teacher_weight!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def concept_features(graph: ConceptGraph) -> tuple[Tensor, Tensor, Tensor]:
    """From a :class:`ConceptGraph`'s embedded texts: ``(child_features [T, D], child_concept [T],
    candidate_features [C, D])``. Children are every concept text; a concept's candidate feature is the
    embedding of its document text (definition, else name; the text a concept document is embedded as)."""
    row_of: dict[tuple[int, str], int] = {}
    for i, (text, owner) in enumerate(zip(graph.texts, graph.text_concept.tolist())):
        row_of.setdefault((owner, text), i)
    rows = []
    for c in range(len(graph)):
        text = (graph.definitions[c] or graph.names[c]).strip()
        row = row_of.get((c, text))
        if row is None:  # a concept without texts: its first text, or none at all
            raise ValueError(f"concept {graph.concept_ids[c]!r} has no embedded document text")
        rows.append(row)
    return (
        graph.text_embeddings,
        graph.text_concept,
        graph.text_embeddings[torch.tensor(rows, dtype=torch.int64)],
    )


@dataclass
class ChannelTargets:
    """Per child row: target concepts and their probabilities (CSR: ``indptr``, ``concepts``, ``probs``),
    mined negatives (``negatives [T, mined]``, ``-1`` padded), direct parents (CSR ``parent_indptr``,
    ``parents``), and every ancestor within the graph's hop limit (CSR ``ancestor_indptr``, ``ancestors``)."""

    indptr: np.ndarray
    concepts: np.ndarray
    probs: np.ndarray
    negatives: np.ndarray
    child_concept: np.ndarray
    ancestor_indptr: np.ndarray
    ancestors: np.ndarray
    parent_indptr: np.ndarray
    parents: np.ndarray

    def __len__(self) -> int:
        return len(self.child_concept)


def _csr(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(x) for x in lists])
    flat = np.fromiter((v for x in lists for v in x), dtype=np.int64, count=int(indptr[-1]))
    return indptr, flat


def build_channel_targets(
    graph: ConceptGraph,
    settings: ChannelTrainingSettings | None = None,
    teacher: GraphKnnSettings | None = None,
    *,
    children: Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ChannelTargets:
    """The targets of every child text of ``graph`` (module docstring). S's similarities are the graph's own
    (its texts' embeddings, its similarity), in float32: they only choose neighbours and negatives.
    ``children``: a subset of text rows to build targets for (default: all). ``progress(done, total)``."""
    settings = settings or ChannelTrainingSettings()
    teacher = teacher or graph.settings
    n_concepts = len(graph)
    rows = (
        torch.arange(len(graph.texts)) if children is None else torch.as_tensor(children, dtype=torch.int64)
    )
    child_concept = graph.text_concept[rows]
    broader = graph.hop_table("broader")  # itself and ancestors within the graph's hop limit
    propagation = graph.propagation("broader", teacher.hop_discount, teacher.max_hops)
    emb = graph.text_embeddings
    owner = graph.text_concept
    kind, c = graph.similarity, graph.curvature

    if kind == "cosine":
        # similarity.pairwise's cosine, with the candidates normalised once instead of once per chunk.
        unit = torch.nn.functional.normalize(emb.float(), dim=-1)

        def similarities(part: Tensor) -> Tensor:
            return torch.nn.functional.normalize(emb[part].float(), dim=-1) @ unit.T

    else:

        def similarities(part: Tensor) -> Tensor:
            return similarity_fns.pairwise(emb[part].float(), emb.float(), kind, c).float()

    k = min(teacher.k, n_concepts - 1)
    top_n = min(max(settings.mined_from, k), n_concepts - 1)
    target_lists: list[list[int]] = []
    prob_lists: list[list[float]] = []
    negatives = np.full((len(rows), settings.mined_from), -1, dtype=np.int64)
    step = max(1, 32_000_000 // max(1, len(emb)))
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        text_sims = similarities(part)
        sims = torch.full((len(part), n_concepts), -math.inf)
        sims = sims.scatter_reduce(1, owner.unsqueeze(0).expand_as(text_sims), text_sims, reduce="amax")
        own = child_concept[start : start + step]
        sims[torch.arange(len(part)), own] = -math.inf  # leave the child's concept out, as if held out
        top = torch.topk(sims, top_n, dim=1)  # sorted, largest first
        vals, idx = top.values[:, :k].double(), top.indices[:, :k]
        weights = torch.exp((vals - vals[:, :1]) / teacher.temperature)
        weights = torch.where(torch.isfinite(vals), weights, torch.zeros_like(weights))
        w = sparse.csr_matrix(
            (weights.reshape(-1).numpy(), (np.repeat(np.arange(len(part)), k), idx.reshape(-1).numpy())),
            shape=(len(part), n_concepts),
        )
        chunk_votes = (w @ propagation).tocsr()
        for r in range(len(part)):
            concept = int(own[r])
            table = broader[concept]
            lo, hi = chunk_votes.indptr[r], chunk_votes.indptr[r + 1]
            votes = dict(zip(chunk_votes.indices[lo:hi].tolist(), chunk_votes.data[lo:hi].tolist()))
            votes.pop(concept, None)
            ranked = sorted(votes.items(), key=lambda item: (-item[1], item[0]))[: settings.teacher_top]
            teacher_total = sum(v for _, v in ranked)
            edges = {
                a: settings.target_hops + 1 - h for a, h in table.items() if 0 < h <= settings.target_hops
            }
            edge_total = sum(edges.values())
            target: dict[int, float] = {}
            tw = settings.teacher_weight if edge_total and teacher_total else (1.0 if teacher_total else 0.0)
            for a, v in edges.items():
                target[a] = target.get(a, 0.0) + (1.0 - tw) * v / edge_total
            for a, v in ranked:
                target[a] = target.get(a, 0.0) + tw * v / teacher_total
            items = sorted(target.items())
            target_lists.append([a for a, _ in items])
            prob_lists.append([p for _, p in items])
            mined = [n for n in top.indices[r].tolist() if n not in table][: settings.mined_from]
            negatives[start + r, : len(mined)] = mined
        if progress is not None:
            progress(min(start + step, len(rows)), len(rows))
    indptr, concepts = _csr(target_lists)
    probs = np.fromiter((p for x in prob_lists for p in x), dtype=np.float64, count=int(indptr[-1]))
    ancestor_indptr, ancestors = _csr(
        [sorted(a for a in broader[int(c)] if a != int(c)) for c in child_concept]
    )
    parent_indptr, parents = _csr([graph.parents[int(c)] for c in child_concept])
    return ChannelTargets(
        indptr=indptr,
        concepts=concepts,
        probs=probs,
        negatives=negatives,
        child_concept=child_concept.numpy().astype(np.int64),
        ancestor_indptr=ancestor_indptr,
        ancestors=ancestors,
        parent_indptr=parent_indptr,
        parents=parents,
    )


def _gather(indptr: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR entries of ``rows``: (batch position of each entry, entry positions into ``values``)."""
    lengths = indptr[rows + 1] - indptr[rows]
    owner = np.repeat(np.arange(len(rows)), lengths)
    starts = np.repeat(indptr[rows] - np.cumsum(np.concatenate([[0], lengths[:-1]])), lengths)
    return owner, starts + np.arange(int(lengths.sum()))


def _batch(
    targets: ChannelTargets,
    rows: np.ndarray,
    n_concepts: int,
    settings: ChannelTrainingSettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, Tensor, Tensor, tuple[Tensor, Tensor]]:
    """One step's candidates, target matrix ``[B, M]``, mask of excluded cells ``[B, M]`` and the (row,
    parent column) pairs of the hinge."""
    t_row, t_at = _gather(targets.indptr, targets.concepts, rows)
    p_row, p_at = _gather(targets.parent_indptr, targets.parents, rows)
    a_row, a_at = _gather(targets.ancestor_indptr, targets.ancestors, rows)
    pieces = [targets.concepts[t_at], targets.parents[p_at], targets.child_concept[rows]]
    if settings.negatives:
        mined = targets.negatives[rows]
        valid = (mined >= 0).sum(axis=1)
        # A random sample of each row's mined negatives: ``negatives`` draws from its first ``valid`` entries.
        pick = np.floor(rng.random((len(rows), settings.negatives)) * np.maximum(valid, 1)[:, None]).astype(
            np.int64
        )
        drawn = np.take_along_axis(mined, pick, axis=1)
        pieces.append(drawn[drawn >= 0])
    if settings.random_candidates:
        pieces.append(rng.integers(0, n_concepts, size=settings.random_candidates))
    candidates, inverse = np.unique(np.concatenate(pieces), return_inverse=True)
    n_t, n_p = len(t_at), len(p_at)
    t_col = inverse[:n_t]
    p_col = inverse[n_t : n_t + n_p]
    own_col = inverse[n_t + n_p : n_t + n_p + len(rows)]
    target = np.zeros((len(rows), len(candidates)), dtype=np.float32)
    target[t_row, t_col] = targets.probs[t_at]
    mask = np.zeros((len(rows), len(candidates)), dtype=bool)
    # Ancestors outside the target are not negatives: masked, as is the child's own concept.
    a_col = np.searchsorted(candidates, targets.ancestors[a_at])
    present = (a_col < len(candidates)) & (
        candidates[np.minimum(a_col, len(candidates) - 1)] == targets.ancestors[a_at]
    )
    mask[a_row[present], a_col[present]] = True
    mask &= target == 0  # an ancestor in the target is a positive, not masked
    mask[np.arange(len(rows)), own_col] = True
    return (
        candidates,
        torch.from_numpy(target),
        torch.from_numpy(mask),
        (torch.from_numpy(p_row), torch.from_numpy(p_col)),
    )


def train_hierarchy_channel(
    channel: HierarchyChannel,
    child_features: Tensor,
    candidate_features: Tensor,
    targets: ChannelTargets,
    settings: ChannelTrainingSettings | None = None,
    *,
    child_rows: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Re-initialise ``channel`` from ``settings.seed`` and train it in place (module docstring).
    ``candidate_features[c]`` is concept ``c``'s feature; ``child_features[child_rows[i]]`` is the feature of
    the child that ``targets`` row ``i`` describes (``child_rows`` default: ``0 .. len(targets) - 1``).
    Returns a summary (steps, seconds, the last cross-entropy, the learned scale)."""
    settings = settings or ChannelTrainingSettings()
    n_rows = len(targets)
    feature_rows = np.arange(n_rows) if child_rows is None else np.asarray(child_rows, dtype=np.int64)
    if len(feature_rows) != n_rows:
        raise ValueError(f"{len(feature_rows)} child rows for {n_rows} targets")
    rows_with_target = np.flatnonzero(np.diff(targets.indptr) > 0)
    if not len(rows_with_target):
        raise ValueError("no child has a broader target: the taxonomy has no is-a edges to learn from")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    channel.reset_parameters()  # seeded above: the same seed gives the same channel
    log_scale = torch.nn.Parameter(torch.tensor(math.log(settings.initial_scale)))
    params = [p for p in channel.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": params, "weight_decay": settings.weight_decay},
            {"params": [log_scale], "weight_decay": 0.0},
        ],
        lr=settings.lr,
    )

    def lr_at(step: int) -> float:
        if step < settings.warmup:
            return (step + 1) / settings.warmup
        progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    child_features = torch.as_tensor(child_features).float()
    candidate_features = torch.as_tensor(candidate_features).float()
    n_concepts = len(candidate_features)
    channel.train()
    start = time.perf_counter()
    order = rng.permutation(rows_with_target)
    cursor = 0
    losses: list[float] = []
    for step in range(settings.steps):
        if cursor + settings.batch_size > len(order):
            order, cursor = rng.permutation(rows_with_target), 0
        rows = order[cursor : cursor + settings.batch_size]
        cursor += settings.batch_size
        candidates, target, mask, hinge = _batch(targets, rows, n_concepts, settings, rng)
        q = channel(child_features[torch.from_numpy(feature_rows[rows])])
        x = channel(candidate_features[torch.from_numpy(candidates)])
        scores = channel.relation_scores(q, x, "broader")
        logits = (log_scale.clamp(-3.0, 5.0).exp() * scores).masked_fill(mask, -1e4)
        ce = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
        loss = ce
        i, j = hinge
        if len(i) and settings.centripetal_weight:
            rq, rx = channel.radius(q), channel.radius(x)
            loss = loss + settings.centripetal_weight * torch.relu(rx[j] - rq[i] + settings.margin).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(ce.detach()))
        if log is not None and (step + 1) % max(1, settings.steps // 10) == 0:
            log(f"step {step + 1}/{settings.steps}: cross-entropy {np.mean(losses[-50:]):.4f}")
    channel.eval()
    return {
        "steps": settings.steps,
        "seconds": time.perf_counter() - start,
        "final_cross_entropy": float(np.mean(losses[-50:])),
        "scale": float(log_scale.detach().clamp(-3.0, 5.0).exp()),
    }
