"""Lorentz token embeddings: a table of space vectors, lifted onto the hyperboloid."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry.lorentz import CurvatureLike
from lorentz_rag.nn._precision import autocast_off, point_dtype

__all__ = ["LorentzEmbedding"]


class LorentzEmbedding(nn.Module):
    """Table ``weight: [V, d]`` of space vectors; ``forward(ids [...]) -> lift(weight[ids]) [..., d+1]``.

    Every row lifts to a finite point (the padding row included), so padding never produces NaN.
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, init_std: float = 0.02
    ):
        super().__init__()
        if padding_idx is not None and not 0 <= padding_idx < num_embeddings:
            raise ValueError(f"padding_idx={padding_idx} is outside the vocabulary [0, {num_embeddings})")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        self.reset_parameters(init_std)

    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=std)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].zero_()  # the padding token sits at the origin

    def forward(self, input_ids: Tensor, c: CurvatureLike) -> Tensor:
        z = F.embedding(input_ids, self.weight, self.padding_idx)
        with autocast_off(z):
            return lorentz.lift(z, c, dtype=point_dtype(z))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"
