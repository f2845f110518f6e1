"""HyTE-FH trunk and MLM model: points on the hyperboloid, padding and batch invariance, bf16 autocast,
learning, configuration from ModernBERT, state-dict names and the paper-size parameter count."""

from __future__ import annotations

import math

import pytest
import torch

from lorentz_rag.geometry import lorentz
from lorentz_rag.models.hyte_fh import HyteFHConfig, HyteFHForMaskedLM, HyteFHTrunk
from lorentz_rag.training.objective import TrainStep

PAD = 0


def tiny_config(**overrides) -> HyteFHConfig:
    values = dict(
        vocab_size=40,
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


def constraint_error(x: torch.Tensor, c: torch.Tensor) -> float:
    xd, cc = x.detach().double(), float(c.detach())
    return float(((cc * lorentz.inner(xd, xd) + 1).abs() / (cc * xd[..., 0] ** 2)).max())


def padded_batch(seqs: list[list[int]], length: int | None = None, left: bool = False):
    length = length or max(map(len, seqs))
    ids = torch.full((len(seqs), length), PAD)
    mask = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(length - len(s), length) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    return ids, mask


@pytest.fixture(scope="module")
def model() -> HyteFHTrunk:
    torch.manual_seed(0)
    return HyteFHTrunk(tiny_config()).eval()


@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm"])
def test_trunk_outputs_points_and_radius_stats(norm_type):
    torch.manual_seed(0)
    m = HyteFHTrunk(tiny_config(norm_type=norm_type, num_hidden_layers=3))
    ids, mask = padded_batch([[5, 6, 7, 8, 9], [3, 4]])
    x = m(ids, mask)
    c = m.curvature().detach()
    assert x.shape == (2, 5, 17) and x.dtype == torch.float32
    assert constraint_error(x, c) < 1e-6 and (x[..., 0] > 0).all()
    stats = m.last_radius_stats
    assert list(stats)[:2] == ["embeddings/x0_mean", "embeddings/x0_max"]
    assert len(stats) == 2 * (3 + 2)
    real = mask.bool()
    assert stats["final_norm/x0_mean"] == pytest.approx(x[..., 0][real].mean().item(), rel=1e-6)
    assert stats["final_norm/x0_max"] == pytest.approx(x[..., 0][real].max().item(), rel=1e-6)
    for i in range(3):
        assert 1 / math.sqrt(c) <= stats[f"layer_{i}/x0_mean"] <= stats[f"layer_{i}/x0_max"] < 100


def test_padding_and_batch_mates_do_not_change_token_outputs(model):
    seq, longer = [5, 9, 11, 3, 7], [4, 8, 15, 16, 23, 30, 31, 2, 1]
    alone = model(*padded_batch([seq]))[0]
    ids, mask = padded_batch([seq, longer], length=12)
    ids[0, len(seq) :] = torch.tensor([17, 18, 19, 20, 21, 22, 23])  # garbage under the mask must not matter
    batched = model(ids, mask)[0, : len(seq)]
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
    left_ids, left_mask = padded_batch([seq, longer], left=True)
    left = model(left_ids, left_mask)[0, -len(seq) :]  # positions count real tokens: left padding works too
    torch.testing.assert_close(left, alone, rtol=0, atol=1e-5)
    # The mask is really used: without it, the garbage changes the outputs.
    unmasked = model(ids, torch.ones_like(mask))[0, : len(seq)]
    assert (unmasked - alone).abs().max() > 1e-3


def test_all_padding_row_is_finite(model):
    ids, mask = padded_batch([[5, 6, 7], []], length=4)
    x = model(ids, mask)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x[0, :3], model(*padded_batch([[5, 6, 7]]))[0], rtol=0, atol=1e-5)


def test_gradients_reach_every_parameter_including_curvature():
    torch.manual_seed(1)
    m = HyteFHForMaskedLM(tiny_config(attention_bias=True, mlp_bias=True, norm_bias=True))
    ids, mask = padded_batch([[5, 6, 7, 8, 9, 10], [3, 4, 11]])
    labels = torch.full_like(ids, -100)
    labels[0, [1, 4]] = torch.tensor([12, 13])
    labels[1, 2] = 14
    out = m(ids, mask, labels)
    assert out.logits.shape == (3, 40) and out.loss.dtype == torch.float32
    torch.testing.assert_close(
        out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([12, 13, 14]))
    )
    out.loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_frozen_curvature_gets_no_gradient():
    m = HyteFHTrunk(tiny_config(trainable_curvature=False))
    assert not m.curvature.log_c.requires_grad
    assert m.curvature().item() == pytest.approx(0.8, rel=1e-6)


def test_mlm_logits_only_at_labelled_positions_without_labels_at_real_tokens():
    torch.manual_seed(2)
    m = HyteFHForMaskedLM(tiny_config()).eval()
    ids, mask = padded_batch([[5, 6, 7, 8], [9, 10]])
    labels = torch.full_like(ids, -100)
    labels[0, 2] = 7
    labels[1, 0] = 9
    with torch.no_grad():
        points = m.model(ids, mask)
        expected = m.head(points[[0, 1], [2, 0]], m.model.curvature())
        out = m(ids, mask, labels)
        torch.testing.assert_close(out.logits, expected)
        unlabelled = m(ids, mask)
    assert unlabelled.loss is None and unlabelled.logits.shape == (6, 40)
    empty = m(ids, mask, torch.full_like(ids, -100))
    assert empty.logits.shape == (0, 40) and empty.loss.item() == 0.0


def test_bf16_autocast_forward_backward_finite_and_close_to_float32():
    torch.manual_seed(3)
    m = HyteFHForMaskedLM(tiny_config(hidden_size=32, num_attention_heads=4))
    ids, mask = padded_batch([[5, 6, 7, 8, 9, 10, 11], [3, 4, 11]])
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    with torch.no_grad():
        ref_points = m.model(ids, mask)
        ref_loss = m(ids, mask, labels).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        points = m.model(ids, mask)
        out = m(ids, mask, labels)
    assert points.dtype == torch.float32 and out.loss.dtype == torch.float32
    assert torch.isfinite(points).all() and constraint_error(points, m.model.curvature()) < 1e-6
    assert (points - ref_points).abs().max() < 0.05 * ref_points.abs().max()
    assert out.loss.item() == pytest.approx(ref_loss.item(), rel=0.02)
    out.loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_tiny_mlm_overfits_a_tiny_batch():
    torch.manual_seed(0)
    m = HyteFHForMaskedLM(tiny_config(vocab_size=32, hidden_size=32, num_attention_heads=4))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    selected = torch.rand(4, 12, generator=g) < 0.3
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    inputs = torch.where(selected, torch.full_like(ids, 1), ids)  # token 1 plays [MASK]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(30):
        loss = m(inputs, mask, labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(32), rel=0.1)  # starts near chance
    assert losses[-1] < 0.35 * losses[0], losses


def test_max_position_embeddings_is_enforced(model):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, 65, dtype=torch.long))


# --- configuration ------------------------------------------------------------------------------------


def test_config_round_trip_and_unknown_key_names_closest():
    cfg = tiny_config(norm_type="rmsnorm", trainable_curvature=False)
    d = cfg.to_dict()
    assert d["model_type"] == "hyte_fh"
    assert HyteFHConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="hidden_size"):
        HyteFHConfig.from_dict({**d, "hiden_size": 8})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"num_attention_heads": 3}, "hidden_size"),
        ({"hidden_size": 18, "num_attention_heads": 6}, "num_attention_heads"),
        ({"norm_type": "batchnorm"}, "norm_type"),
        ({"hidden_activation": "swish"}, "hidden_activation"),
        ({"curvature": 20.0}, "curvature"),
        ({"pad_token_id": 40}, "pad_token_id"),
    ],
)
def test_config_validation_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=key):
        tiny_config(**overrides)


def _check_modernbert_base_sizes(cfg: HyteFHConfig, layers: int) -> None:
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_attention_heads) == (50368, 768, 12)
    assert (cfg.intermediate_size, cfg.num_hidden_layers) == (1152, layers)
    assert cfg.rope_theta == 160_000.0 and cfg.pad_token_id == 50283 and cfg.hidden_activation == "gelu"
    assert cfg.max_position_embeddings == 8192 and cfg.norm_eps == 1e-5


def test_from_modernbert_config_object_folder_and_dict(tmp_path):
    from transformers import ModernBertConfig

    src = ModernBertConfig()  # ModernBERT-base sizes (22 layers)
    _check_modernbert_base_sizes(HyteFHConfig.from_modernbert(src), 22)
    paper = HyteFHConfig.from_modernbert(src, num_hidden_layers=12, curvature=2.0)
    _check_modernbert_base_sizes(paper, 12)
    assert paper.curvature == 2.0
    src.save_pretrained(tmp_path / "mb")
    _check_modernbert_base_sizes(HyteFHConfig.from_modernbert(tmp_path / "mb", num_hidden_layers=12), 12)
    # transformers 4.x config.json files spell the global theta "global_rope_theta".
    v4 = {"vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
          "intermediate_size": 96, "global_rope_theta": 80000.0, "pad_token_id": 1}  # fmt: skip
    cfg = HyteFHConfig.from_modernbert(v4)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.rope_theta, cfg.pad_token_id) == (64, 3, 80000.0, 1)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        HyteFHConfig.from_modernbert(v4, num_hiden_layers=2)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        HyteFHConfig.from_modernbert(tmp_path / "missing")


def test_default_config_is_the_paper_size():
    _check_modernbert_base_sizes(HyteFHConfig(), 12)


# --- state dict and size ------------------------------------------------------------------------------


def test_state_dict_names_are_stable():
    m = HyteFHForMaskedLM(tiny_config(num_hidden_layers=1))
    assert set(m.state_dict()) == {
        "model.curvature.log_c",
        "model.embeddings.weight",
        "model.embedding_norm.weight",
        "model.layers.0.attn_norm.weight",
        "model.layers.0.attn.wqkv.weight",
        "model.layers.0.attn.wo.weight",
        "model.layers.0.attn_residual.log_weights",
        "model.layers.0.mlp_norm.weight",
        "model.layers.0.mlp.wi.weight",
        "model.layers.0.mlp.wo.weight",
        "model.layers.0.mlp_residual.log_weights",
        "model.final_norm.weight",
        "head.z",
        "head.a",
    }


def test_paper_size_parameter_count_on_meta_device():
    cfg = HyteFHConfig()
    with torch.device("meta"):
        mlm = HyteFHForMaskedLM(cfg)
    trunk = sum(p.numel() for p in mlm.model.parameters())
    total = sum(p.numel() for p in mlm.parameters())
    v, d, i, n = cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_layer = d + 3 * d * (d + 1) + d * (d + 1) + 2 + d + 2 * i * (d + 1) + d * (i + 1) + 2
    assert trunk == v * d + d + n * per_layer + d + 1 == 98_938_417
    assert total == trunk + v * d + v == 137_671_409


# --- the masked-LM head's options: the fused loss equals the plain path, forms no logits
# unless they are read and is what the trainer's step uses; the tied head shares the embedding table ---


def _mlm_config(**overrides) -> HyteFHConfig:
    return tiny_config(**{"vocab_size": 97, **overrides})


def _mlm_batch(seed: int = 0, vocab: int = 97):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # padding
    ids[1, 9:] = PAD
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.4, ids, torch.full_like(ids, -100))
    labels[1, 9:] = -100
    labels[0, 0] = ids[0, 0]  # at least one scored token
    return ids, mask, labels


def _fused_and_plain(**overrides) -> tuple[HyteFHForMaskedLM, HyteFHForMaskedLM]:
    torch.manual_seed(0)
    fused = HyteFHForMaskedLM(_mlm_config(fused_mlm_loss=True, **overrides)).train()
    plain = HyteFHForMaskedLM(_mlm_config(fused_mlm_loss=False, **overrides)).train()
    plain.load_state_dict(fused.state_dict())
    return fused, plain


@pytest.mark.parametrize("tie", [False, True])
def test_fused_loss_equals_plain_loss_and_gradients(tie):
    fused, plain = _fused_and_plain(tie_mlm_head=tie)
    ids, mask, labels = _mlm_batch()
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
    fused, plain = _fused_and_plain()
    ids, mask, labels = _mlm_batch(1)
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
    model = HyteFHForMaskedLM(_mlm_config())
    ids, mask, labels = _mlm_batch(2)
    monkeypatch.setattr(model.head, "forward", lambda *a: pytest.fail("the step formed the logits"))
    loss, _ = TrainStep(model, "mlm")({"input_ids": ids, "attention_mask": mask, "labels": labels})
    torch.testing.assert_close(loss, model(ids, mask, labels=labels).loss, rtol=0, atol=0)


def test_batch_without_scored_tokens_gives_zero_loss():
    model = HyteFHForMaskedLM(_mlm_config())
    ids, mask, _ = _mlm_batch(3)
    out = model(ids, mask, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0 and out.logits.shape == (0, 97)
    out.loss.backward()


def test_tied_head_shares_the_embedding_table_and_learns():
    torch.manual_seed(0)
    untied = HyteFHForMaskedLM(_mlm_config())
    tied = HyteFHForMaskedLM(_mlm_config(tie_mlm_head=True))
    assert tied.head.z is tied.model.embeddings.weight
    n_params = sum(p.numel() for p in tied.parameters())
    assert n_params == sum(p.numel() for p in untied.parameters()) - 97 * 16
    ids, mask, labels = _mlm_batch(4)
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
