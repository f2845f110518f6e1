"""HyTE-H: pretrained base -> Linear -> scale -> norm clip -> expmap0 -> (HyTE-FH blocks) -> pooling."""

from __future__ import annotations

import pytest
import torch

from lorentz_rag.geometry import lorentz, pooling
from lorentz_rag.models import build_model, packaged_minilm_path
from lorentz_rag.models.hyte_h import HyteH, clip_norm

MINILM = str(packaged_minilm_path())
TEXTS = ["Hyperbolic space grows exponentially.", "A tree embeds with low distortion.", "ok"]


def _hyte_h(**extra) -> HyteH:
    torch.manual_seed(0)
    model = build_model(
        {"model_type": "hyte_h", "model_name": "all-MiniLM-L6-v2", "max_seq_length": 64, **extra}
    )
    assert isinstance(model, HyteH)
    return model


def test_packaged_minilm_builds_offline_and_encodes_onto_the_hyperboloid():
    model = _hyte_h(curvature=0.5)
    assert model.base.config.hidden_size == 384
    x = model.encode(TEXTS, prompt_type="document")
    assert x.shape == (3, 385) and x.dtype == torch.float32 and model.embedding_dim == 385
    c = float(model.curvature().detach())
    assert c == pytest.approx(0.5)
    torch.testing.assert_close(
        lorentz.inner(x.double(), x.double()),
        torch.full((3,), -1 / c, dtype=torch.float64),
        atol=1e-4,
        rtol=1e-4,
    )
    assert bool((x[:, 0] > 0).all())


def test_forward_is_expmap_of_the_clipped_scaled_projection():
    model = _hyte_h(embedding_dim=24, projection_scale=3.0, max_norm=2.0, pooling="cls").eval()
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        hidden = model.base(**batch).last_hidden_state
        v = model.projection(hidden) * 3.0
        norms = v.norm(dim=-1)
        assert bool((norms > 2.0).any()) and bool((norms < 2.0).any())  # both branches of the clip run
        expected_tokens = lorentz.expmap0(v * (2.0 / norms).clamp(max=1.0).unsqueeze(-1), model.curvature())
        tokens = model.token_points(**batch)
        torch.testing.assert_close(tokens, expected_tokens, atol=1e-5, rtol=1e-5)
        radii = lorentz.radius(tokens, model.curvature())
        assert float(radii.max()) == pytest.approx(2.0, abs=1e-4)  # |v| <= max_norm = radius <= max_norm
        torch.testing.assert_close(
            model(**batch), pooling.cls(tokens, batch["attention_mask"], model.curvature())
        )


def test_clip_norm():
    v = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    torch.testing.assert_close(clip_norm(v, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


def test_freeze_base_leaves_base_params_without_grad():
    model = _hyte_h(embedding_dim=16, freeze_base=True)
    model.train()
    assert not model.base.training  # a frozen base keeps dropout off
    out = model(**model.tokenize(TEXTS, "query"))
    model.similarity_pairwise(out, out.roll(1, 0)).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.base.parameters())
    assert model.projection.weight.grad is not None and model.log_scale.grad is not None
    assert model.curvature_module.log_c.grad is not None  # trainable curvature by default
    names = [g["name"] for g in model.param_groups(1e-3, 0.01)]
    assert not any(n.startswith("base/") for n in names)


def test_bf16_autocast_forward_and_backward_finite_with_hyperbolic_blocks():
    model = _hyte_h(embedding_dim=32, num_hyperbolic_blocks=2, num_attention_heads=4)
    assert len(model.blocks) == 2
    model.train()
    batch = model.tokenize(TEXTS, "document")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    assert out.dtype == torch.float32 and out.shape == (3, 33)
    assert bool(torch.isfinite(out).all())
    # Pull text 0 towards text 1 and push it from text 2 (distances between distinct points).
    (model.similarity(out[:1], out[2:]) - model.similarity(out[:1], out[1:2])).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads.values())
    assert float(grads["blocks.0.attn.wqkv.weight"].abs().sum()) > 0


def test_blocks_ignore_padding():
    model = _hyte_h(
        embedding_dim=16, num_hyperbolic_blocks=1, num_attention_heads=2, pooling="lorentz_centroid"
    )
    alone = model.encode([TEXTS[2]])
    beside = model.encode([TEXTS[2], " ".join(TEXTS * 5)])
    torch.testing.assert_close(beside[0], alone[0], atol=1e-5, rtol=1e-5)


def test_max_seq_length_beyond_the_base_positions_is_rejected():
    with pytest.raises(
        ValueError, match=r"max_seq_length=1024 exceeds the base encoder's max_position_embeddings=512"
    ):
        build_model({"model_type": "hyte_h", "model_name": MINILM, "max_seq_length": 1024})


def test_identity_projection_init_starts_from_the_base_coordinates():
    """projection_init='identity': the tangent vectors before scaling are the base's own token states."""
    base_path = str(packaged_minilm_path())
    model = build_model(
        {"model_type": "hyte_h", "model_name": base_path, "projection_init": "identity", "max_seq_length": 32}
    )
    assert torch.equal(model.projection.weight, torch.eye(384))
    assert torch.count_nonzero(model.projection.bias) == 0
    twin = build_model(
        {
            "model_type": "euclidean",
            "model_name": base_path,
            "projection_init": "identity",
            "max_seq_length": 32,
        }
    )
    assert torch.equal(twin.projection.weight, torch.eye(384))
    random = build_model({"model_type": "hyte_h", "model_name": base_path, "max_seq_length": 32})
    assert not torch.equal(random.projection.weight, torch.eye(384))
    with pytest.raises(ValueError, match="projection_init"):
        build_model({"model_type": "hyte_h", "model_name": base_path, "projection_init": "orthogonal"})
