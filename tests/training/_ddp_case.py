"""The fixed two-rank contrastive batch shared by test_distributed.py and _ddp_worker.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lorentz_rag.geometry.lorentz import expmap0
from lorentz_rag.training.losses import InfoNCELoss


class TinyEncoder(nn.Module):
    """Token ids -> masked mean of embeddings -> linear -> expmap0 onto H^d_c, with a trainable c."""

    def __init__(self, vocab: int = 40, dim: int = 5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 6)
        self.proj = nn.Linear(6, dim)
        self.log_c = nn.Parameter(torch.tensor(0.1))

    def curvature(self) -> torch.Tensor:
        return self.log_c.exp()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids)
        w = attention_mask.unsqueeze(-1).to(h.dtype)
        return expmap0(self.proj((h * w).sum(1) / w.sum(1)), self.curvature())


def _tokens(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 4, dtype=torch.long)
    mask[1::2, 2:] = 0
    return {"input_ids": torch.randint(0, 40, (n, 4), generator=g), "attention_mask": mask}


@dataclass
class Case:
    # Per rank: queries, document pool (unequal pool sizes across ranks), explicit positive positions.
    queries: list[dict[str, torch.Tensor]]
    docs: list[dict[str, torch.Tensor]]
    positive_index: list[torch.Tensor]

    def fresh_model_and_loss(self) -> tuple[TinyEncoder, InfoNCELoss]:
        torch.manual_seed(0)
        model = TinyEncoder().double()
        loss_fn = InfoNCELoss(
            "geodesic", logit_scale=20.0, trainable_logit_scale=True, symmetric=True
        ).double()
        return model, loss_fn

    def rank_inputs(self, rank: int):
        return self.queries[rank], self.docs[rank], self.positive_index[rank]

    def combined_inputs(self):
        """One process's view: both ranks' queries and pools concatenated, positions offset by pool size."""
        cat = lambda parts: {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # noqa: E731
        offset = self.docs[0]["input_ids"].shape[0]
        return (
            cat(self.queries),
            cat(self.docs),
            torch.cat([self.positive_index[0], self.positive_index[1] + offset]),
        )


def build_case() -> Case:
    return Case(
        queries=[_tokens(3, 1), _tokens(3, 2)],
        docs=[_tokens(5, 3), _tokens(7, 4)],
        positive_index=[torch.tensor([4, 0, 2]), torch.tensor([1, 6, 3])],
    )
