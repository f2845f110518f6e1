"""lorentz_rag.eval.stats: mean +- sd and the paired bootstrap over seeds and queries."""

from __future__ import annotations

import numpy as np
import pytest

from lorentz_rag.eval.stats import mean_sd, paired_bootstrap


def test_mean_sd_uses_the_sample_standard_deviation() -> None:
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_sd([5.0]) == (5.0, 0.0)


def test_a_consistent_shift_excludes_zero_and_noise_does_not() -> None:
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, size=(5, 200))
    shifted = paired_bootstrap(b + 0.02 + rng.normal(0, 0.01, size=b.shape), b)
    assert shifted["mean"] == pytest.approx(0.02, abs=0.003)
    assert (
        shifted["low"] > 0
        and shifted["excludes_zero"]
        and (shifted["n_seeds"], shifted["n_queries"]) == (5, 200)
    )
    noise = paired_bootstrap(b + rng.normal(0, 0.2, size=b.shape), b)
    assert noise["low"] < 0 < noise["high"] and not noise["excludes_zero"]


def test_seed_variance_widens_the_interval() -> None:
    """A gain that one seed carries alone is not a claim: resampling seeds must show it."""
    b = np.zeros((5, 100))
    a = np.zeros((5, 100))
    a[0] += 0.1  # one lucky seed
    result = paired_bootstrap(a, b, seed=1)
    assert result["mean"] == pytest.approx(0.02)
    assert result["low"] <= 0.0


def test_a_one_dimensional_baseline_pairs_with_every_seed() -> None:
    a = np.array([[0.5, 0.6], [0.7, 0.8]])
    result = paired_bootstrap(a, np.array([0.5, 0.5]))
    assert result["mean"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="pair up"):
        paired_bootstrap(a, np.zeros(3))
    with pytest.raises(ValueError, match="seeds, queries"):
        paired_bootstrap(np.zeros(3), np.zeros(3))
