"""Synthetic points and a tiny deterministic model for the vector-store tests (no weights, no tokenizer)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import torch
from torch import Tensor

from lorentz_rag.geometry import lorentz

FORMS = ("geodesic", "euclidean", "cosine")
RADIUS = 3.0  # every synthetic point lies within this radius (the stores' bound)


def points(n: int, similarity: str, *, dim: int = 8, seed: int = 0, radius: float = RADIUS) -> Tensor:
    """``n`` float32 embeddings of the form a ``similarity`` model produces: hyperboloid points ``[n, dim+1]``
    at radii up to ``radius`` (c = 1), or Euclidean vectors ``[n, dim]`` of norm up to ``radius``."""
    g = torch.Generator().manual_seed(seed)
    v = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)
    v = v * (0.2 + (radius - 0.2) * torch.rand(n, 1, generator=g, dtype=torch.float64))
    if similarity in ("geodesic", "lorentz_inner"):
        return lorentz.expmap0(v, 1.0).float()
    return v.float()


class FakeModel:
    """Texts -> :func:`points` seeded by a hash of the text; the interface the stores use (settings,
    curvature, embedding_dim, fingerprint, encode). ``seed`` changes the weights (and the fingerprint)."""

    def __init__(self, similarity: str = "geodesic", *, dim: int = 8, seed: int = 0, radius: float = RADIUS):
        self.is_hyperbolic = similarity in ("geodesic", "lorentz_inner")
        self.settings = SimpleNamespace(similarity=similarity)
        self.dim, self.seed, self.radius = dim, seed, radius
        self.calls: list[tuple[str | None, int]] = []

    @property
    def embedding_dim(self) -> int:
        return self.dim + self.is_hyperbolic

    def curvature(self) -> Tensor | None:
        return torch.tensor(1.0) if self.is_hyperbolic else None

    def fingerprint(self) -> str:
        return f"fake-{self.settings.similarity}-{self.dim}-{self.seed}"

    def encode(self, texts, prompt_type=None, batch_size: int = 32, **_) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.calls.append((None if prompt_type is None else str(prompt_type), len(texts)))
        rows = []
        for text in texts:
            digest = hashlib.sha256(f"{self.seed}|{text}".encode()).digest()
            seed = int.from_bytes(digest[:6], "little")
            rows.append(points(1, self.settings.similarity, dim=self.dim, seed=seed, radius=self.radius))
        return torch.cat(rows) if rows else torch.empty(0, self.embedding_dim)
