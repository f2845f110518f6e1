"""Small deterministic models implementing the embedding-model interface, for the eval tests.

A hashing bag of words gives each text a tangent vector; hyperbolic models map it with ``expmap0``,
Euclidean ones return it as is. No tokenizer, no weights, no dependence on batch-mates.
"""

from __future__ import annotations

import hashlib
import re
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor

from lorentz_rag.geometry import lorentz


def _token_vector(token: str, dim: int) -> Tensor:
    digest = hashlib.sha256(token.encode("utf-8")).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return torch.randn(dim, generator=g, dtype=torch.float64)


class HashingModel:
    """Bag-of-words hashing -> tangent vector (length ``scale * sqrt(#tokens)``-ish) -> ``expmap0``."""

    def __init__(
        self,
        dim: int = 16,
        *,
        hyperbolic: bool = True,
        similarity: str = "geodesic",
        c: float = 1.0,
        scale: float = 0.7,
        query_prefix: str = "search_query: ",
        document_prefix: str = "search_document: ",
    ) -> None:
        self.is_hyperbolic = hyperbolic
        self.dim = dim
        self.c = c
        self.scale = scale
        self.settings = SimpleNamespace(
            model_type="fake_hyperbolic" if hyperbolic else "fake_euclidean",
            similarity=similarity if hyperbolic else "cosine",
            query_prefix=query_prefix,
            document_prefix=document_prefix,
        )
        self.calls: list[tuple[str | None, int]] = []

    @property
    def embedding_dim(self) -> int:
        return self.dim + 1 if self.is_hyperbolic else self.dim

    def curvature(self) -> Tensor | None:
        return torch.tensor(self.c) if self.is_hyperbolic else None

    def tangent(self, text: str) -> Tensor:
        tokens = re.findall(r"\w+", text.lower())
        v = torch.zeros(self.dim, dtype=torch.float64)
        for token in tokens:
            v += _token_vector(token, self.dim)
        return self.scale * v / max(1.0, len(tokens)) ** 0.5

    def encode(self, texts, prompt_type=None, batch_size: int = 32, **_) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        kind = None if prompt_type is None else str(getattr(prompt_type, "value", prompt_type))
        prefix = {"query": self.settings.query_prefix, "document": self.settings.document_prefix, None: ""}[
            kind
        ]
        self.calls.append((kind, len(texts)))
        if not texts:
            return torch.empty(0, self.embedding_dim)
        v = torch.stack([self.tangent(prefix + t) for t in texts])
        out = lorentz.expmap0(v, self.c) if self.is_hyperbolic else v
        return out.to(torch.float32)

    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        if not self.is_hyperbolic:
            return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
        if self.settings.similarity == "geodesic":
            return -lorentz.pairwise_geodesic_distance(a, b, self.c)
        return lorentz.pairwise_inner(a, b) + 1.0 / self.c

    def similarity_pairwise(self, a: Tensor, b: Tensor) -> Tensor:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        if not self.is_hyperbolic:
            return F.cosine_similarity(a, b, dim=-1)
        if self.settings.similarity == "geodesic":
            return -lorentz.geodesic_distance(a, b, self.c)
        return lorentz.inner(a, b) + 1.0 / self.c


def random_hyperboloid(n: int, d: int, c: float = 1.0, *, radius: float = 2.0, seed: int = 0) -> Tensor:
    """``n`` float64 points of ``H^d_c`` with random directions and radii spread around ``radius``."""
    g = torch.Generator().manual_seed(seed)
    direction = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    r = radius * (0.5 + torch.rand(n, 1, generator=g, dtype=torch.float64))
    return lorentz.expmap0(direction * r, c)
