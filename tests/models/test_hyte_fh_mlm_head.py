"""HyTE-FH's masked-LM head options (issue 22, item 1): the fused loss equals the plain path, forms no logits
unless they are read, is what the trainer's step uses; the tied head shares the embedding table and trains."""

from __future__ import annotations

import pytest
import torch

from lorentz_rag.models.hyte_fh import HyteFHConfig, HyteFHForMaskedLM
from lorentz_rag.training.objective import TrainStep

PAD = 0


def _config(**overrides) -> HyteFHConfig:
    values = dict(
        vocab_size=97,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=64,
        pad_token_id=PAD,
        curvature=0.8,
    )
    values.update(overrides)
    return HyteFHConfig(**values)


def _batch(seed: int = 0, vocab: int = 97):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # padding
    ids[1, 9:] = PAD
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.4, ids, torch.full_like(ids, -100))
    labels[1, 9:] = -100
    labels[0, 0] = ids[0, 0]  # at least one scored token
    return ids, mask, labels


def _pair(**overrides) -> tuple[HyteFHForMaskedLM, HyteFHForMaskedLM]:
    torch.manual_seed(0)
    fused = HyteFHForMaskedLM(_config(fused_mlm_loss=True, **overrides)).train()
    plain = HyteFHForMaskedLM(_config(fused_mlm_loss=False, **overrides)).train()
    plain.load_state_dict(fused.state_dict())
    return fused, plain


@pytest.mark.parametrize("tie", [False, True])
def test_fused_loss_equals_plain_loss_and_gradients(tie):
    fused, plain = _pair(tie_mlm_head=tie)
    ids, mask, labels = _batch()
    losses = []
    for model in (fused, plain):
        out = model(ids, mask, labels=labels)
        out.loss.backward()
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=2e-6, atol=0)
    plain_grads = dict(plain.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, plain_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_forward_forms_logits_only_when_read(monkeypatch):
    fused, plain = _pair()
    ids, mask, labels = _batch(1)
    calls = []
    original = fused.head.forward
    monkeypatch.setattr(fused.head, "forward", lambda *a: calls.append(1) or original(*a))
    out = fused(ids, mask, labels=labels)
    out.loss.backward()
    assert calls == []
    with torch.no_grad():
        expected = plain(ids, mask, labels=labels).logits
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=0)  # the same head, read on demand
    assert calls == [1] and out.logits.requires_grad  # computed once, in the forward's grad mode
    with torch.no_grad():
        assert not fused(ids, mask, labels=labels).logits.requires_grad


def test_train_step_uses_the_models_own_loss(monkeypatch):
    model = HyteFHForMaskedLM(_config())
    ids, mask, labels = _batch(2)
    monkeypatch.setattr(model.head, "forward", lambda *a: pytest.fail("the step formed the logits"))
    loss, _ = TrainStep(model, "mlm")({"input_ids": ids, "attention_mask": mask, "labels": labels})
    torch.testing.assert_close(loss, model(ids, mask, labels=labels).loss, rtol=0, atol=0)


def test_batch_without_scored_tokens_gives_zero_loss():
    model = HyteFHForMaskedLM(_config())
    ids, mask, _ = _batch(3)
    out = model(ids, mask, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0 and out.logits.shape == (0, 97)
    out.loss.backward()


def test_tied_head_shares_the_embedding_table_and_learns():
    torch.manual_seed(0)
    untied = HyteFHForMaskedLM(_config())
    tied = HyteFHForMaskedLM(_config(tie_mlm_head=True))
    assert tied.head.z is tied.model.embeddings.weight
    n_params = sum(p.numel() for p in tied.parameters())
    assert n_params == sum(p.numel() for p in untied.parameters()) - 97 * 16
    ids, mask, labels = _batch(4)
    opt = torch.optim.Adam(tied.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = tied(ids, mask, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
    assert tied.head.z is tied.model.embeddings.weight
