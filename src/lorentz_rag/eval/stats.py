"""Statistics for comparing models over seeds: mean +- sd and paired bootstrap intervals.

A comparison is a claim only when it holds over seeds (data order and initialisation) *and* over the
queries the set happens to contain. :func:`paired_bootstrap` therefore resamples both: each replicate draws
seeds with replacement and queries with replacement and averages the paired per-query differences
``a[s, q] - b[s, q]`` over them. The interval is the percentile interval of those replicate means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["mean_sd", "paired_bootstrap"]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for a single value, NaN for none)."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def paired_bootstrap(
    a: np.ndarray | Sequence[Sequence[float]],
    b: np.ndarray | Sequence[Sequence[float]] | Sequence[float],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Mean paired difference of per-query scores ``a - b`` and its bootstrap interval.

    ``a``: ``[S, Q]`` (seeds x queries, the same queries in the same order for every seed); ``b``: ``[S, Q]``
    paired seed by seed, or ``[Q]`` for a deterministic baseline (the zero-shot model), compared with every
    seed of ``a``. Returns ``{"mean", "low", "high", "n_seeds", "n_queries", "excludes_zero"}``; ``low``/
    ``high`` bound the central ``confidence`` share of ``n_boot`` replicates (seeds and queries resampled).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"a must be [seeds, queries], got shape {a.shape}")
    if b.ndim == 1 and b.shape[0] == a.shape[1]:
        b = np.broadcast_to(b, a.shape)
    if b.shape != a.shape:
        raise ValueError(f"a {a.shape} and b {b.shape} must pair up (b may also be [queries])")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diff = a - b
    n_seeds, n_queries = diff.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    queries = rng.integers(0, n_queries, size=(n_boot, n_queries))
    # Mean over drawn seeds of the mean over drawn queries = mean of the per-query mean across drawn seeds.
    per_query_over_seeds = diff[seeds].mean(axis=1)  # [n_boot, Q]
    replicates = np.take_along_axis(per_query_over_seeds, queries, axis=1).mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return {
        "mean": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "n_seeds": int(n_seeds),
        "n_queries": int(n_queries),
        "excludes_zero": bool(low > 0 or high < 0),
    }
