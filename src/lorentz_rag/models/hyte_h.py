"""HyTE-H, the hybrid encoder (docs/design.md, section 5; the paper's Fig. 2C), with three heads.

``head="token"`` (the paper's)::

    texts -> pretrained AutoModel encoder -> token states [B, T, d_base]
          -> Linear(d_base, d) -> * scale (learnable, > 0) -> clip |v| <= max_norm -> expmap0
          -> optional HyTE-FH blocks (masked) -> hyperbolic pooling -> [B, d+1]

``head="pooled"`` (pool first, then lift; starts as the base model, :mod:`lorentz_rag.models.heads`)::

    token states -> the base's own pooling (mean or cls) -> direction u + radius r -> expmap0(r u)

``head="token_radius"`` (the paper's pooling kept, with a start close to the base)::

    token states -> per token: direction u_i + radius r_i (all r_i = r0 at init) -> expmap0(r_i u_i)
          -> optional HyTE-FH blocks -> hyperbolic pooling (OEM by default)

With the token head, most pretrained token norms exceed the clip (MiniLM: median 3-7 against a clip of
2), so the clip, not the model, sets the radius; the other two heads learn the radius explicitly and use
``max_norm`` only as a safety bound.

The projection runs under autocast like the base encoder; from the scale onwards everything is float32
with autocast off (docs/design.md, section 2.5: geometry never runs in bf16).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lorentz_rag.geometry import lorentz, pooling
from lorentz_rag.models.base import EmbeddingModel, ModelSettings, euclidean_pool
from lorentz_rag.models.heads import DirectionRadiusHead, pretrained_base_options, unfreeze_top_layers
from lorentz_rag.models.hf_base import base_config_dict, base_token_states
from lorentz_rag.models.hyte_fh import HyteFHBlock, HyteFHConfig
from lorentz_rag.nn._precision import autocast_off
from lorentz_rag.nn.curvature import Curvature, ScalarParameters, scalar_parameter

__all__ = ["HYTE_H_HEADS", "HyteH", "clip_norm"]

HYTE_H_HEADS = ("token", "pooled", "token_radius")


def clip_norm(v: Tensor, max_norm: float) -> Tensor:
    """Scale each vector of ``v: [..., d]`` down to norm ``max_norm`` if longer (a no-op otherwise)."""
    norm = v.norm(dim=-1, keepdim=True)
    # clamp_min keeps the division finite at v = 0, where the factor is 1 anyway.
    return v * (max_norm / norm.clamp_min(1e-12)).clamp(max=1.0)


class HyteH(ScalarParameters, EmbeddingModel):
    """A pretrained Euclidean encoder projected onto the hyperboloid ``H^d_c``; embeddings ``[n, d+1]``.

    ``blocks_config`` (a ``HyteFHConfig`` with ``hidden_size = d``) and ``num_hyperbolic_blocks`` add
    HyTE-FH blocks after the exponential map; the base encoder can be frozen or trained with a smaller
    learning rate (:meth:`param_groups`).
    """

    is_hyperbolic = True
    scalar_names = ("log_scale",)  # the token head's projection scale, shape [1] (0-d in older saves)

    def __init__(
        self,
        base: nn.Module,
        tokenizer: Any,
        settings: ModelSettings,
        *,
        projection_dim: int,
        projection_scale: float = 1.0,
        max_norm: float = 5.0,
        curvature: float = 1.0,
        trainable_curvature: bool = True,
        num_hyperbolic_blocks: int = 0,
        blocks_config: HyteFHConfig | None = None,
        freeze_base: bool = False,
        base_lr_multiplier: float = 1.0,
        head: str = "token",
        radius_init: float = 2.0,
        radius_gain: float = 5.0,
        trainable_base_layers: int = 0,
    ) -> None:
        super().__init__(settings, tokenizer)
        if not projection_scale > 0 or not max_norm > 0:
            raise ValueError(f"projection_scale and max_norm must be > 0, got {projection_scale}, {max_norm}")
        if head not in HYTE_H_HEADS:
            raise ValueError(f"HyTE-H head must be one of {list(HYTE_H_HEADS)}, got {head!r}")
        if head == "pooled" and num_hyperbolic_blocks:
            raise ValueError("the pooled head lifts one point per text: num_hyperbolic_blocks must be 0")
        self.base = base
        self.head_kind = head
        d_base = int(base.config.hidden_size)
        self.max_norm = float(max_norm)
        if head == "token":
            self.projection = nn.Linear(d_base, projection_dim)
            # The scale is stored as its log so it stays positive (a sign flip would mirror the embedding).
            self.log_scale = scalar_parameter(math.log(projection_scale))  # [1], see nn/curvature.py
        else:
            self.head = DirectionRadiusHead(
                d_base,
                projection_dim,
                radius_init=radius_init,
                radius_gain=radius_gain,
                max_radius=self.max_norm,
                length_feature=head == "pooled",
            )
        self.curvature_module = Curvature(curvature, trainable=trainable_curvature)
        self.blocks_config = blocks_config
        blocks: list[nn.Module] = []
        if num_hyperbolic_blocks > 0:
            if blocks_config is None:
                raise ValueError("num_hyperbolic_blocks > 0 needs a blocks_config (a HyteFHConfig)")
            blocks = [HyteFHBlock(blocks_config) for _ in range(num_hyperbolic_blocks)]
        self.blocks = nn.ModuleList(blocks)
        self.freeze_base = bool(freeze_base) or trainable_base_layers > 0
        self.trainable_base_layers = int(trainable_base_layers)
        self._base_lr_multiplier = float(base_lr_multiplier)
        if self.freeze_base:
            unfreeze_top_layers(self.base, self.trainable_base_layers)

    @property
    def direction_layer(self) -> nn.Linear:
        """The ``Linear(d_base, d)`` that maps base states to directions (``projection_init`` applies to it)."""
        return self.projection if self.head_kind == "token" else self.head.direction

    # --- interface ------------------------------------------------------------------------------------

    def curvature(self) -> Tensor:
        return self.curvature_module()

    @property
    def base_lr_multiplier(self) -> float:
        return self._base_lr_multiplier

    def base_parameters(self) -> list[nn.Parameter]:
        return list(self.base.parameters())

    def train(self, mode: bool = True) -> HyteH:
        super().train(mode)
        if self.freeze_base:
            # A frozen (or mostly frozen) base stays in eval mode: its dropout would otherwise add noise the
            # frozen layers can never adapt to.
            self.base.eval()
        return self

    def token_points(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Token points ``[B, T, d+1]`` (float32) after the exponential map and the hyperbolic blocks
        (``token`` and ``token_radius`` heads)."""
        if self.head_kind == "pooled":
            raise ValueError("the pooled head has no token points (it pools before it lifts)")
        hidden = base_token_states(self.base, input_ids, attention_mask, text_by_text=self.training)
        if self.head_kind == "token":
            v = self.projection(hidden)
            with autocast_off(v):
                c = self.curvature()
                v = clip_norm(v.float() * self.log_scale.exp(), self.max_norm)
                x = lorentz.expmap0(v, c)
        else:
            with autocast_off(hidden):
                c = self.curvature()
                u, r = self.head(hidden.float())
                x = lorentz.expmap0(r.unsqueeze(-1) * u, c)
        mask = attention_mask.bool()
        for block in self.blocks:
            x = block(x, mask, c)
        return x

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled points ``[B, d+1]`` (float32) for ``input_ids``/``attention_mask`` ``[B, T]``."""
        s = self.settings
        if self.head_kind == "pooled":
            hidden = base_token_states(self.base, input_ids, attention_mask, text_by_text=self.training)
            with autocast_off(hidden):
                pooled = euclidean_pool(s.pooling, hidden.float(), attention_mask)
                u, r = self.head(pooled, attention_mask.sum(-1))
                return lorentz.expmap0(r.unsqueeze(-1) * u, self.curvature())
        x = self.token_points(input_ids, attention_mask)
        with autocast_off(x):
            return pooling.pool(s.pooling, x, attention_mask, self.curvature(), p=s.pooling_p)

    def lorentz_rag_config(self) -> dict[str, Any]:
        head_config: dict[str, Any] = {"hyte_h_head": self.head_kind}
        if self.head_kind == "token":
            head_config["projection_scale"] = float(self.log_scale.detach().exp())
        else:
            head_config.update(self.head.saved_config())
        return {
            "base_config": base_config_dict(self.base),
            "projection_dim": self.direction_layer.out_features,
            "max_norm": self.max_norm,
            **head_config,
            "trainable_base_layers": self.trainable_base_layers,
            "trainable_curvature": self.curvature_module.trainable,
            "num_hyperbolic_blocks": len(self.blocks),
            "blocks_config": None if self.blocks_config is None else self.blocks_config.to_dict(),
            "freeze_base": self.freeze_base,
            "base_lr_multiplier": self._base_lr_multiplier,
        }

    @classmethod
    def _from_section(
        cls, section: Mapping[str, Any], tokenizer: Any, settings: ModelSettings, base: Any
    ) -> HyteH:
        """HyTE-H from a saved section or from ``model_args`` (the same keys; the factory derives
        ``projection_dim`` and ``blocks_config``) on the base encoder ``base``."""
        blocks = section.get("blocks_config")
        return cls(
            base,
            tokenizer,
            settings,
            projection_dim=int(section["projection_dim"]),
            projection_scale=float(section.get("projection_scale", 1.0)),
            max_norm=float(section["max_norm"]),
            curvature=float(section.get("curvature") or 1.0),
            trainable_curvature=bool(section.get("trainable_curvature", True)),
            num_hyperbolic_blocks=int(section.get("num_hyperbolic_blocks", 0)),
            blocks_config=HyteFHConfig.from_dict(blocks) if blocks else None,
            head=str(section.get("hyte_h_head", "token")),
            **pretrained_base_options(section),
        )
