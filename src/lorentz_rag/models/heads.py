"""Direction + radius heads: how a pretrained encoder's states become points that start from its geometry.

A head splits an embedding into a **direction** and a **radius** and learns them separately:

    u = normalize(W h + b)                     W identity-initialised: u starts as the base's own direction
    r = r0 * exp(g * (w . phi(h) + w0))        w, w0 = 0 at init: every radius starts at r0
    hyperbolic point: expmap0(r u, c)          (d(o, x) = r exactly)   Euclidean vector: y = r u

With every radius equal at step 0, both the geodesic distance on the hyperboloid and the Euclidean distance
rank exactly as the cosine similarity of the base's directions do, so a model built on this head *is* the
base model at step 0 and training can move the radius to carry depth (general texts near the centre).

``phi`` are cheap features of the state the radius can read: the unit direction ``h/|h|``, ``log |h|``
and, for a pooled state, the log of the text's token count. ``g`` (``radius_gain``) makes the radius
respond to a small change of ``w`` as fast as the direction does to ``W``. ``max_radius`` is a safety bound
(the radius is clamped to it), not the radius control.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorentz_rag.models.hf_base import transformer_layers

__all__ = ["DirectionRadiusHead", "pretrained_base_options", "unfreeze_top_layers"]


class DirectionRadiusHead(nn.Module):
    """``h: [..., d_base]`` (+ optional token counts ``[...]``) -> ``(u: [..., d] unit, r: [...] > 0)``.

    ``length_feature``: the radius also reads ``log(token count)`` (pooled heads pass the counts).
    ``max_radius`` below ``radius_init`` is raised to it (a bound must not move the starting point).
    """

    def __init__(
        self,
        d_base: int,
        d: int,
        *,
        radius_init: float = 2.0,
        radius_gain: float = 5.0,
        max_radius: float = 10.0,
        length_feature: bool = False,
    ) -> None:
        super().__init__()
        if not radius_init > 0 or not max_radius > 0:
            raise ValueError(f"need radius_init > 0 and max_radius > 0, got {radius_init}, {max_radius}")
        self.direction = nn.Linear(d_base, d)
        self.length_feature = bool(length_feature)
        self.radius = nn.Linear(d_base + 1 + int(self.length_feature), 1)
        nn.init.zeros_(self.radius.weight)
        nn.init.zeros_(self.radius.bias)
        self.log_radius_init = math.log(radius_init)
        self.radius_gain = float(radius_gain)
        self.max_radius = max(float(max_radius), float(radius_init))

    def features(self, h: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``phi(h)``: ``[..., d_base + 1 (+1)]`` = unit direction, ``log |h|`` (and ``log`` token count)."""
        norm = h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        parts = [h / norm, norm.log()]
        if self.length_feature:
            if lengths is None:
                raise ValueError("this head reads the token count: pass lengths")
            parts.append(lengths.to(h.dtype).clamp_min(1).log().unsqueeze(-1))
        return torch.cat(parts, dim=-1)

    def forward(self, h: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = h.float()
        u = F.normalize(self.direction(h), dim=-1)
        log_r = self.log_radius_init + self.radius_gain * self.radius(self.features(h, lengths)).squeeze(-1)
        # The bound is on log r (exp cannot overflow first); beyond it the radius saturates.
        r = log_r.clamp(max=math.log(self.max_radius)).exp()
        return u, r

    def saved_config(self) -> dict[str, float]:
        """The constructor settings a saved model records (``radius_init``, ``radius_gain``)."""
        return {"radius_init": math.exp(self.log_radius_init), "radius_gain": self.radius_gain}

    def extra_repr(self) -> str:
        return (
            f"radius_init={math.exp(self.log_radius_init):g}, radius_gain={self.radius_gain:g}, "
            f"max_radius={self.max_radius:g}, length_feature={self.length_feature}"
        )


def unfreeze_top_layers(base: nn.Module, n: int) -> None:
    """Freeze ``base`` except its top ``n`` transformer layers (``n = 0``: all frozen)."""
    base.requires_grad_(False)
    if n <= 0:
        return
    layers = transformer_layers(base)
    if n > len(layers):
        raise ValueError(f"trainable_base_layers={n} but the base encoder has {len(layers)} layers")
    for layer in list(layers)[len(layers) - n :]:
        layer.requires_grad_(True)


def pretrained_base_options(section: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor options shared by the models on a pretrained base (HyTE-H, the Euclidean twin of
    HyTE-H) as a saved ``lorentz_rag`` section or ``model_args`` holds them: how the base trains and the
    direction + radius head's start."""
    return {
        "freeze_base": bool(section.get("freeze_base", False)),
        "base_lr_multiplier": float(section.get("base_lr_multiplier", 1.0)),
        "trainable_base_layers": int(section.get("trainable_base_layers", 0)),
        "radius_init": float(section.get("radius_init", 2.0)),
        "radius_gain": float(section.get("radius_gain", 5.0)),
    }
