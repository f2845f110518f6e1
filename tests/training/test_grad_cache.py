"""GradCache gives the gradients of the plain full-batch loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorentz_rag.geometry.lorentz import expmap0
from lorentz_rag.training.grad_cache import chunk_batch, grad_cache_backward
from lorentz_rag.training.losses import InfoNCELoss


class TinyEncoder(nn.Module):
    """Token ids -> masked mean of (dropped-out) embeddings -> linear -> expmap0 onto H^d_c."""

    def __init__(self, vocab: int = 50, dim: int = 6, dropout: float = 0.0) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(8, dim)
        self.log_c = nn.Parameter(torch.tensor(0.2))

    def curvature(self) -> torch.Tensor:
        return self.log_c.exp()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.emb(input_ids))
        w = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * w).sum(1) / w.sum(1)
        return expmap0(self.proj(pooled), self.curvature())


def _batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (n, 5), generator=g)
    mask = torch.ones(n, 5, dtype=torch.long)
    mask[::2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _setup(dtype, dropout=0.0):
    torch.manual_seed(0)
    model = TinyEncoder(dropout=dropout).to(dtype)
    loss_fn = InfoNCELoss("geodesic", trainable_logit_scale=True, symmetric=True).to(dtype)
    queries, docs = _batch(6, 1), _batch(10, 2)  # 6 positives then 4 hard negatives
    positive_index = torch.tensor([5, 0, 3, 1, 4, 2])
    return model, loss_fn, queries, docs, positive_index


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [1, 4, 16])
def test_grad_cache_equals_plain_loss_gradients(dtype, chunk_size):
    model, loss_fn, queries, docs, positive_index = _setup(dtype)

    def full_loss(q, d):
        return loss_fn(q, d, positive_index, c=model.curvature())

    plain = full_loss(model(**queries), model(**docs))
    plain.backward()
    expected = _grads(model) | {"scale": loss_fn.logit_scale.log_logit_scale.grad.clone()}
    model.zero_grad()
    loss_fn.zero_grad()

    cached = grad_cache_backward(lambda b: model(**b), [queries, docs], full_loss, chunk_size=chunk_size)
    got = _grads(model) | {"scale": loss_fn.logit_scale.log_logit_scale.grad.clone()}
    assert cached.item() == pytest.approx(plain.item(), rel=1e-6)
    assert got.keys() == expected.keys() and "log_c" in got
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=tol, atol=tol, msg=name)


def test_grad_cache_replays_dropout_masks():
    model, loss_fn, queries, docs, positive_index = _setup(torch.float64, dropout=0.3)

    def full_loss(q, d):
        return loss_fn(q, d, positive_index, c=model.curvature())

    # Reference: the same chunk-by-chunk forward (same RNG consumption as GradCache's first pass), with a graph.
    torch.manual_seed(123)
    q = torch.cat([model(**c) for c in chunk_batch(queries, 4)])
    d = torch.cat([model(**c) for c in chunk_batch(docs, 4)])
    full_loss(q, d).backward()
    expected = _grads(model)
    after_reference = torch.rand(1)
    model.zero_grad()
    loss_fn.zero_grad()

    torch.manual_seed(123)
    grad_cache_backward(lambda b: model(**b), [queries, docs], full_loss, chunk_size=4)
    got = _grads(model)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-12, atol=1e-12, msg=name)
    # The caller's random stream continues as after the first pass.
    assert torch.equal(torch.rand(1), after_reference)


def test_grad_cache_backward_hook_and_chunking_errors():
    model, loss_fn, queries, docs, positive_index = _setup(torch.float64)
    seen = []

    def backward(loss):
        seen.append(loss.item())
        (loss * 2).backward()  # a GradScaler-like scale must reach every parameter once

    def full_loss(q, d):
        return loss_fn(q, d, positive_index, c=model.curvature())

    grad_cache_backward(lambda b: model(**b), [queries, docs], full_loss, chunk_size=3, backward=backward)
    scaled = _grads(model)
    model.zero_grad()
    full_loss(model(**queries), model(**docs)).backward()
    for name, g in _grads(model).items():
        torch.testing.assert_close(scaled[name], 2 * g, rtol=1e-12, atol=1e-12)
    assert len(seen) == 1
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunk_batch(queries, 0)
    with pytest.raises(ValueError, match="leading sizes"):
        chunk_batch({"a": torch.zeros(2), "b": torch.zeros(3)}, 1)
