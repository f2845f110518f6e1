"""What a saved model needs besides its weights (:class:`ModelSettings`), and the names its pooling and
similarity may take for each geometry.

Standard library only: :mod:`lorentz_rag.models.args` validates ``model_args`` against these names, and
``lorentz-rag train --help`` reads that schema without importing torch. The names are those of
:mod:`lorentz_rag.geometry.pooling` and :mod:`lorentz_rag.geometry.similarity` (a test keeps them equal).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EUCLIDEAN_POOLINGS",
    "EUCLIDEAN_SIMILARITIES",
    "HYPERBOLIC_POOLINGS",
    "HYPERBOLIC_SIMILARITIES",
    "ModelSettings",
]

# geometry.pooling.POOLERS, plus "mean" (an alias of lorentz_centroid).
HYPERBOLIC_POOLINGS = (
    "cls",
    "lorentz_centroid",
    "einstein_midpoint",
    "outward_einstein_midpoint",
    "mean_tangent",
    "mean",
)
EUCLIDEAN_POOLINGS = ("mean", "cls")
HYPERBOLIC_SIMILARITIES = ("geodesic", "lorentz_inner")  # geometry.similarity.HYPERBOLIC_KINDS
EUCLIDEAN_SIMILARITIES = ("cosine", "euclidean")  # geometry.similarity.EUCLIDEAN_KINDS


@dataclass
class ModelSettings:
    """What a saved model needs besides its weights to embed text the way it was trained.

    ``embedding_dim`` is the length of one output vector (``d+1`` for hyperbolic models, ``d`` for
    Euclidean ones). Prefixes are prepended to the raw text before tokenization, in training and in every
    evaluation alike.
    """

    model_type: str
    pooling: str
    similarity: str
    embedding_dim: int
    pooling_p: float = 1.0
    query_prefix: str = ""
    document_prefix: str = ""
    max_seq_length: int = 512

    def prefix(self, prompt_type: Any) -> str:
        """The prefix for ``prompt_type`` (``"query"``, ``"document"``, an mteb ``PromptType`` or ``None``)."""
        if prompt_type is None:
            return ""
        kind = str(getattr(prompt_type, "value", prompt_type))
        if kind == "query":
            return self.query_prefix
        if kind == "document":
            return self.document_prefix
        raise ValueError(f"prompt_type must be 'query', 'document' or None, got {prompt_type!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
