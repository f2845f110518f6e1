"""The Euclidean twin: ModernBERT from scratch at HyTE-FH's sizes, the pretrained twin of HyTE-H, and the
ModernBERT MLM model with sparse prediction."""

from __future__ import annotations

import pytest
import torch
from transformers import ModernBertModel

from lorentz_rag.models import build_mlm_model, build_model, packaged_minilm_path
from lorentz_rag.models.base import euclidean_pool
from lorentz_rag.models.euclidean import EuclideanEncoder, EuclideanForMaskedLM

MINILM = str(packaged_minilm_path())
TINY = {"model_name": MINILM, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
TEXTS = ["the twin differs only in geometry", "short", "a third, somewhat longer, sentence about trees"]


def test_modernbert_twin_has_the_sizes_of_hyte_fh():
    torch.manual_seed(0)
    twin = build_model({"model_type": "euclidean", **TINY})
    hyte = build_model({"model_type": "hyte_fh", **TINY})
    assert isinstance(twin, EuclideanEncoder) and isinstance(twin.model, ModernBertModel)
    cfg, hcfg = twin.model.config, hyte.config
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        assert getattr(cfg, key) == getattr(hcfg, key), key
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.pad_token_id) == (30522, 48, 0)  # the MiniLM vocab
    assert cfg.layer_types == ["full_attention", "full_attention"]  # HyTE-FH has no sliding window
    assert twin.embedding_dim == 32 and hyte.embedding_dim == 33
    assert twin.settings.similarity == "cosine"


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_twin_pools_the_trunk_states(pooling):
    torch.manual_seed(0)
    twin = build_model({"model_type": "euclidean", "pooling": pooling, **TINY}).eval()
    batch = twin.tokenize(TEXTS)
    with torch.no_grad():
        hidden = twin.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1) if pooling == "mean" else hidden[:, 0]
        torch.testing.assert_close(twin(**batch), expected)


def test_euclidean_pool_ignores_nan_in_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [float("nan"), float("inf")]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(euclidean_pool("mean", hidden, mask), torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match="no unmasked token"):
        euclidean_pool("mean", hidden, torch.zeros(1, 3))


def test_pretrained_twin_of_hyte_h_projects_the_mean():
    torch.manual_seed(0)
    model = build_model(
        {"model_type": "euclidean", "euclidean_base": "pretrained", "model_name": MINILM, "embedding_dim": 24}
    ).eval()
    assert model.kind == "pretrained" and model.embedding_dim == 24
    batch = model.tokenize(TEXTS, "query")
    with torch.no_grad():
        hidden = model.base(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = model.projection((hidden * mask).sum(1) / mask.sum(1))
        torch.testing.assert_close(model(**batch), expected, atol=1e-5, rtol=1e-5)


def test_mlm_twin_scores_only_masked_positions():
    torch.manual_seed(0)
    mlm = build_mlm_model({"model_type": "euclidean", **TINY})
    assert isinstance(mlm, EuclideanForMaskedLM) and mlm.tokenizer is not None
    batch = mlm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 2], labels[2, 5], labels[1, 1] = 7, 11, 13
    out = mlm(batch["input_ids"], batch["attention_mask"], labels=labels)
    assert out.logits.shape == (3, 30522)
    expected = torch.nn.functional.cross_entropy(out.logits, torch.tensor([7, 13, 11]))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert mlm.model.embeddings.tok_embeddings.weight.grad is not None
    assert mlm.decoder.weight is mlm.model.embeddings.tok_embeddings.weight  # tied, as in ModernBERT


def test_hyte_h_has_no_mlm_model():
    with pytest.raises(ValueError, match="HyTE-H starts from a pretrained encoder"):
        build_mlm_model({"model_type": "hyte_h", "model_name": MINILM})
