"""Collators: rows -> tensors for the contrastive and the masked-LM objectives.

Query/document prefixes and the maximum length belong to the model (its saved settings), so the contrastive
collator tokenizes through ``model.tokenize(texts, prompt_type="query"|"document")`` by default; training and
every evaluation then see identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lorentz_rag.data.masking import mask_tokens, non_special_token_ids, special_tokens_mask

__all__ = ["ContrastiveCollator", "MLMCollator"]

TokenizeFn = Callable[[Sequence[str], str | None], Mapping[str, Tensor]]


class ContrastiveCollator:
    """Rows ``{"query", "document", "negatives"}`` -> a batch dict:

    - ``query``: tokenized queries (``input_ids`` / ``attention_mask`` ``[n, Tq]``);
    - ``documents``: the document pool, the ``n`` positives first, then every row's hard negatives in row
      order (``[m, Td]``);
    - ``positive_index``: ``[n]`` long, query ``i``'s positive in the pool (``i`` by this layout; the loss
      relies only on the index, never on the layout);
    - ``negatives_per_row``: ``[n]`` long, how many negatives each row put into the pool.

    tokenize: ``tokenize(texts, prompt_type)`` returning ``input_ids``/``attention_mask``, normally
    ``model.tokenize`` (see :meth:`from_model`); :meth:`from_tokenizer` builds one from a tokenizer, prefixes
    and a maximum length. num_negatives: at most this many hard negatives per row join the pool (the first
    ones of the row's list; 0 = in-batch negatives only). Rows with fewer contribute fewer.
    """

    def __init__(self, tokenize: TokenizeFn, *, num_negatives: int = 0) -> None:
        if num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
        self.tokenize = tokenize
        self.num_negatives = num_negatives

    @classmethod
    def from_model(cls, model: Any, *, num_negatives: int = 0) -> ContrastiveCollator:
        """Use ``model.tokenize`` (the model's prefixes, tokenizer and ``max_seq_length``)."""
        return cls(model.tokenize, num_negatives=num_negatives)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        *,
        max_length: int,
        query_prefix: str = "",
        document_prefix: str = "",
        num_negatives: int = 0,
    ) -> ContrastiveCollator:
        """Tokenize with ``tokenizer``: ``prefix + text``, truncated to ``max_length``, padded to the longest."""
        prefixes = {"query": query_prefix, "document": document_prefix}

        def tokenize(texts: Sequence[str], prompt_type: str | None) -> dict[str, Tensor]:
            prefix = prefixes.get(prompt_type or "", "")
            enc = tokenizer(
                [prefix + t for t in texts],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

        return cls(tokenize, num_negatives=num_negatives)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        queries = [row["query"] for row in rows]
        positives = [row["document"] for row in rows]
        negatives: list[str] = []
        counts = []
        for row in rows:
            taken = list(row.get("negatives") or [])[: self.num_negatives]
            negatives.extend(taken)
            counts.append(len(taken))
        return {
            "query": dict(self.tokenize(queries, "query")),
            "documents": dict(self.tokenize(positives + negatives, "document")),
            "positive_index": torch.arange(len(rows), dtype=torch.long),
            "negatives_per_row": torch.tensor(counts, dtype=torch.long),
        }


class MLMCollator:
    """Rows ``{"text"}`` -> ``{"input_ids", "attention_mask", "labels"}`` with BERT masking.

    Mask and random ids come from ``tokenizer`` (random ids from its non-special vocabulary); special tokens
    and padding are never masked. Draws come from ``self.generator`` (seeded with ``seed``), so a run is
    reproducible; ``state_dict()`` / ``load_state_dict()`` save and restore the generator for exact resume.
    With DataLoader workers every worker holds a copy of the generator: pass
    ``worker_init_fn=collator.worker_init_fn`` so each worker draws from its own stream.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_length: int,
        mlm_probability: float = 0.30,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        seed: int = 0,
    ) -> None:
        if tokenizer.mask_token_id is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no mask token; MLM needs one")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.seed = seed
        self.random_token_ids = non_special_token_ids(tokenizer)
        self.generator = torch.Generator().manual_seed(seed)

    def worker_init_fn(self, worker_id: int) -> None:
        """Give DataLoader worker ``worker_id`` its own generator stream (seed + 1 + worker_id)."""
        self.generator = torch.Generator().manual_seed(self.seed + 1 + worker_id)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        enc = self.tokenizer(
            [row["text"] for row in rows],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
        masked, labels = mask_tokens(
            input_ids,
            special_tokens_mask(input_ids, self.tokenizer, attention_mask),
            mask_token_id=self.tokenizer.mask_token_id,
            random_token_ids=self.random_token_ids,
            mlm_probability=self.mlm_probability,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            generator=self.generator,
        )
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}
