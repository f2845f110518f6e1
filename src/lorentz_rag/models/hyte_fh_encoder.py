"""HyTE-FH as an embedding model: the fully hyperbolic trunk (:class:`~lorentz_rag.models.hyte_fh.HyteFHTrunk`)
followed by a hyperbolic pooler (docs/design.md, sections 3 and 4). Embeddings are points ``[n, d+1]``.

The trunk is stored as ``.model``, the same name as in ``HyteFHForMaskedLM``, so MLM weights load into it
name for name (``init_from``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from lorentz_rag.models.base import EmbeddingModel, ModelSettings
from lorentz_rag.models.hyte_fh import HyteFHConfig, HyteFHTrunk

__all__ = ["HyteFH"]


class HyteFH(EmbeddingModel):
    """HyTE-FH trunk + pooling (``cls``, ``lorentz_centroid``/``mean``, ``einstein_midpoint``,
    ``outward_einstein_midpoint`` with ``pooling_p``, ``mean_tangent``)."""

    is_hyperbolic = True

    def __init__(self, config: HyteFHConfig, tokenizer: Any, settings: ModelSettings) -> None:
        super().__init__(settings, tokenizer)
        self.model = HyteFHTrunk(config)

    @property
    def config(self) -> HyteFHConfig:
        return self.model.config

    def curvature(self) -> Tensor:
        return self.model.curvature()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled points ``[B, d+1]`` (float32) for ``input_ids``/``attention_mask`` ``[B, T]``: the trunk
        and the pooling run as one function (one compiled graph with ``compile``)."""
        return self.model.pooled(input_ids, attention_mask, self.settings.pooling, self.settings.pooling_p)

    def lorentz_rag_config(self) -> dict[str, Any]:
        return {"trunk_config": self.model.config.to_dict()}

    @classmethod
    def _from_section(
        cls, section: Mapping[str, Any], tokenizer: Any, settings: ModelSettings, base: Any
    ) -> HyteFH:
        return cls(HyteFHConfig.from_dict(section["trunk_config"]), tokenizer, settings)
