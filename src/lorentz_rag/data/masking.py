"""BERT masking for masked-LM training (docs/design.md, section 8.1).

A fraction ``mlm_probability`` (default 0.30, ModernBERT's rate) of the maskable tokens is selected; of
those, 80% become the tokenizer's mask token, 10% a random token and 10% stay as they are. Special tokens
(``[CLS]``, ``[SEP]``, ...) and padding are never selected. Random replacements are drawn uniformly from
the tokenizer's *non-special* vocabulary, so the model is never asked to read a stray ``[CLS]`` or
``[PAD]`` mid-sentence. Labels are the original ids at selected positions and ``-100`` elsewhere.
Every draw comes from the ``torch.Generator`` passed in, so masking is reproducible.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["IGNORE_INDEX", "mask_tokens", "non_special_token_ids", "special_tokens_mask"]

IGNORE_INDEX = -100


def non_special_token_ids(tokenizer: Any) -> Tensor:
    """The ids a random replacement may take: ``[0, len(tokenizer))`` minus the special ids. ``[n]`` long."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = [i for i in range(len(tokenizer)) if i not in special]
    if not ids:
        raise ValueError("the tokenizer has no non-special tokens to draw random replacements from")
    return torch.tensor(ids, dtype=torch.long)


def special_tokens_mask(input_ids: Tensor, tokenizer: Any, attention_mask: Tensor | None = None) -> Tensor:
    """True where a token must never be masked: special ids and padding. ``[B, T]`` -> ``[B, T]`` bool."""
    special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype)
    mask = torch.isin(input_ids, special_ids.to(input_ids.device))
    if attention_mask is not None:
        mask |= attention_mask == 0
    return mask


def mask_tokens(
    input_ids: Tensor,
    never_mask: Tensor,
    *,
    mask_token_id: int,
    random_token_ids: Tensor,
    mlm_probability: float = 0.30,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Apply BERT masking: returns ``(masked_input_ids, labels)``, both ``[B, T]`` long.

    input_ids: ``[B, T]``; never_mask: ``[B, T]`` bool (special tokens and padding, see
    :func:`special_tokens_mask`); random_token_ids: ``[n]`` ids random replacements are drawn from (see
    :func:`non_special_token_ids`). Of the selected positions, ``mask_replace_prob`` become ``mask_token_id``,
    ``random_replace_prob`` a random id, the rest keep their token. ``input_ids`` is not modified.
    """
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1:
        raise ValueError(
            f"mask_replace_prob={mask_replace_prob} and random_replace_prob={random_replace_prob} must be "
            "non-negative with a sum <= 1"
        )
    if never_mask.shape != input_ids.shape:
        raise ValueError(
            f"never_mask {tuple(never_mask.shape)} must match input_ids {tuple(input_ids.shape)}"
        )
    device = input_ids.device

    def uniform() -> Tensor:
        # Draw on the generator's device (CPU generators are the usual case), then move.
        return torch.rand(
            input_ids.shape, generator=generator, device=generator.device if generator else None
        ).to(device)

    selected = (uniform() < mlm_probability) & ~never_mask
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    # One uniform per position decides the fate of the selected ones: [0, p_mask) mask, then random, else keep.
    fate = uniform()
    to_mask = selected & (fate < mask_replace_prob)
    to_random = selected & (fate >= mask_replace_prob) & (fate < mask_replace_prob + random_replace_prob)
    picks = torch.randint(
        len(random_token_ids),
        input_ids.shape,
        generator=generator,
        device=generator.device if generator else None,
    ).to(device)
    random_ids = random_token_ids.to(device)[picks]
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids.to(input_ids.dtype), masked)
    return masked, labels
