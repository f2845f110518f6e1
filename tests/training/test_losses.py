"""InfoNCE, similarities, MLM loss and the logit scale against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from lorentz_rag.geometry.lorentz import expmap0
from lorentz_rag.training.losses import InfoNCELoss, LogitScale, info_nce_loss, mlm_loss, similarity_matrix


def _points(n: int, d: int, c: float, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return expmap0(torch.randn(n, d, generator=g, dtype=dtype), c)


def _hand_similarity(q: torch.Tensor, x: torch.Tensor, distance: str, c: float) -> float:
    """One similarity from the textbook formulas, in Python floats."""
    q, x = q.tolist(), x.tolist()
    if distance == "cosine":
        dot = sum(a * b for a, b in zip(q, x))
        return dot / math.sqrt(sum(a * a for a in q) * sum(b * b for b in x))
    lor = -q[0] * x[0] + sum(a * b for a, b in zip(q[1:], x[1:]))
    if distance == "lorentz_inner":
        return lor + 1 / c
    return -math.acosh(max(-c * lor, 1.0)) / math.sqrt(c)


def _hand_ce(scores: list[float], target: int) -> float:
    top = max(scores)
    return -(scores[target] - top - math.log(sum(math.exp(s - top) for s in scores)))


@pytest.mark.parametrize("distance", ["geodesic", "lorentz_inner", "cosine"])
def test_similarity_matrix_matches_the_formulas(distance):
    c = 0.7
    q, x = _points(3, 4, c, 0), _points(5, 4, c, 1)
    sim = similarity_matrix(q, x, distance, c)
    assert sim.shape == (3, 5) and sim.dtype == torch.float64
    for i in range(3):
        for j in range(5):
            assert sim[i, j].item() == pytest.approx(
                _hand_similarity(q[i], x[j], distance, c), rel=1e-9, abs=1e-9
            )


@pytest.mark.parametrize("distance", ["geodesic", "lorentz_inner", "cosine"])
def test_info_nce_equals_hand_computation(distance):
    c, scale = 1.3, 7.0
    q, docs = _points(2, 3, c, 2), _points(4, 3, c, 3)
    positive_index = torch.tensor([3, 1])
    loss = info_nce_loss(q, docs, positive_index, distance=distance, c=c, logit_scale=scale)
    expected = 0.0
    for i, p in enumerate(positive_index.tolist()):
        scores = [scale * _hand_similarity(q[i], docs[j], distance, c) for j in range(4)]
        expected += _hand_ce(scores, p) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("distance", ["geodesic", "lorentz_inner", "cosine"])
def test_symmetric_loss_equals_hand_formula(distance):
    c, scale = 0.5, 11.0
    q, docs = _points(3, 3, c, 4), _points(5, 3, c, 5)
    positive_index = torch.tensor([4, 0, 2])
    loss = info_nce_loss(q, docs, positive_index, distance=distance, c=c, logit_scale=scale, symmetric=True)
    q_term = d_term = 0.0
    for i, p in enumerate(positive_index.tolist()):
        q_term += _hand_ce([scale * _hand_similarity(q[i], docs[j], distance, c) for j in range(5)], p) / 3
        # The positive document of query i is the anchor; the candidates are the queries, target i.
        d_term += _hand_ce([scale * _hand_similarity(docs[p], q[k], distance, c) for k in range(3)], i) / 3
    assert loss.item() == pytest.approx((q_term + d_term) / 2, rel=1e-10)


def test_hard_negative_pool_shuffle_with_index_remap_gives_the_same_loss():
    c = 1.0
    q = _points(3, 5, c, 6)
    # Pool: 3 positives then 2 hard negatives per query.
    docs = _points(9, 5, c, 7)
    positive_index = torch.arange(3)
    base = info_nce_loss(q, docs, positive_index, distance="geodesic", c=c, logit_scale=20.0)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(9)
    shuffled = docs[perm]
    # docs[k] now sits at position inverse[k]; the explicit index follows it.
    assert torch.equal(shuffled[inverse[positive_index]], docs[positive_index])
    moved = info_nce_loss(q, shuffled, inverse[positive_index], distance="geodesic", c=c, logit_scale=20.0)
    assert moved.item() == pytest.approx(base.item(), rel=1e-12)
    # A wrong index (the old one) must change the loss: the test can tell positives apart.
    wrong = info_nce_loss(q, shuffled, positive_index, distance="geodesic", c=c, logit_scale=20.0)
    assert abs(wrong.item() - base.item()) > 1e-3


def test_positive_found_at_its_index_gives_low_loss():
    c = 1.0
    q = _points(4, 6, c, 8)
    negatives = _points(8, 6, c, 9)
    docs = torch.cat([negatives[:3], q, negatives[3:]])  # each query's positive is itself, at 3 + i
    loss = info_nce_loss(q, docs, torch.arange(4) + 3, distance="geodesic", c=c, logit_scale=50.0)
    assert loss.item() < 1e-3


def test_info_nce_gradients_reach_curvature_and_scale_and_are_finite():
    c = torch.tensor(1.0, requires_grad=True)
    loss_fn = InfoNCELoss("geodesic", trainable_logit_scale=True, symmetric=True)
    v = torch.randn(4, 3, requires_grad=True)
    docs_v = torch.randn(6, 3, requires_grad=True)
    q, docs = expmap0(v, c), expmap0(docs_v, c)
    docs = torch.cat([q[:1], docs[1:]])  # d(q0, x0) = 0: the gradient must stay finite there
    loss = loss_fn(q, docs, torch.tensor([0, 1, 2, 3]), c=c)
    loss.backward()
    for t in (c.grad, loss_fn.logit_scale.log_logit_scale.grad, v.grad, docs_v.grad):
        assert t is not None and torch.isfinite(t).all() and t.abs().sum() > 0


def test_loss_runs_in_float32_under_bf16_autocast():
    c = 1.0
    q, docs = _points(3, 4, c, 10, torch.float32), _points(5, 4, c, 11, torch.float32)
    idx = torch.tensor([0, 1, 2])
    plain = info_nce_loss(q, docs, idx, distance="geodesic", c=c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = info_nce_loss(q, docs, idx, distance="geodesic", c=c)
        auto_mlm = mlm_loss(torch.randn(2, 3, 5), torch.tensor([[1, -100, 2], [-100, -100, 4]]))
    assert auto.dtype == torch.float32 and auto_mlm.dtype == torch.float32
    assert auto.item() == plain.item()


def test_info_nce_rejects_bad_inputs():
    q, docs = _points(2, 3, 1.0, 0), _points(3, 3, 1.0, 1)
    with pytest.raises(ValueError, match="unknown distance 'euclid'"):
        info_nce_loss(q, docs, torch.tensor([0, 1]), distance="euclid", c=1.0)
    with pytest.raises(ValueError, match=r"positive_index must lie in \[0, 3\)"):
        info_nce_loss(q, docs, torch.tensor([0, 3]), distance="geodesic", c=1.0)
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        info_nce_loss(q, docs, torch.tensor([0]), distance="geodesic", c=1.0)
    with pytest.raises(ValueError, match="needs the curvature"):
        info_nce_loss(q, docs, torch.tensor([0, 1]), distance="geodesic")


def test_mlm_loss_full_and_masked_only_logits_agree():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 7, generator=g)
    labels = torch.tensor([[-100, 3, -100, 6], [0, -100, -100, -100]])
    full = mlm_loss(logits, labels)
    masked = mlm_loss(logits[labels != -100], labels)
    rows = [(0, 1, 3), (0, 3, 6), (1, 0, 0)]
    hand = sum(_hand_ce(logits[b, t].tolist(), y) for b, t, y in rows) / 3
    assert full.item() == pytest.approx(hand, rel=1e-6)
    assert masked.item() == pytest.approx(hand, rel=1e-6)
    with pytest.raises(ValueError, match="3 masked positions"):
        mlm_loss(torch.randn(2, 7), labels)


def test_mlm_loss_without_masked_positions_is_zero_not_nan():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 3), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_logit_scale_is_log_parametrised_clamped_and_named_for_weight_decay_exclusion():
    scale = LogitScale(50.0, trainable=True)
    assert float(scale().detach()) == pytest.approx(50.0)
    assert [name for name, _ in scale.named_parameters()] == ["log_logit_scale"]
    with torch.no_grad():
        scale.log_logit_scale.fill_(math.log(1e4))
    assert float(scale().detach()) == pytest.approx(100.0)
    frozen = InfoNCELoss("cosine", logit_scale=20.0)
    assert not frozen.logit_scale.log_logit_scale.requires_grad
    assert all("logit_scale" in name for name, _ in frozen.named_parameters())
    with pytest.raises(ValueError):
        LogitScale(500.0)
