"""The model's single curvature ``-c`` (docs/design.md, section 4.7 (Curvature)), stored as ``log c``.

Learnt scalars (``log c`` here, the contrastive loss's log logit scale) are stored as 1-element tensors of
shape ``[1]``, not 0-d: every backend handles them as they are (DeepSpeed's weight broadcast views each
parameter as bytes, which a 0-d tensor refuses). Their modules still return 0-d values. Folders and
checkpoints written when they were 0-d load unchanged: :class:`ScalarParameters` reshapes them on load.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Curvature", "ScalarParameters", "scalar_parameter"]


def scalar_parameter(value: float, *, requires_grad: bool = True) -> nn.Parameter:
    """A learnt scalar as a float32 parameter of shape ``[1]`` (see the module docstring)."""
    return nn.Parameter(torch.tensor([value], dtype=torch.float32), requires_grad=requires_grad)


class ScalarParameters:
    """Mixin for an ``nn.Module`` whose learnt scalars (the parameters named in ``scalar_names``) have shape
    ``[1]``: it also loads states that hold them 0-d (saves from before the change).

    ``upgrade_state_dict(state, prefix)`` reshapes them in place; :func:`lorentz_rag.models.io.check_and_load_state_dict`
    calls it before its shape check, and ``_load_from_state_dict`` (torch's per-module loading hook, as in
    ``BatchNorm``) before every other load, e.g. DeepSpeed's ``load_checkpoint``.
    """

    scalar_names: tuple[str, ...] = ()

    def upgrade_state_dict(self, state: MutableMapping[str, Tensor], prefix: str) -> None:
        for name in self.scalar_names:
            value = state.get(prefix + name)
            if value is not None and value.dim() == 0:
                state[prefix + name] = value.reshape(1)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        self.upgrade_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]


class Curvature(ScalarParameters, nn.Module):
    """Log-parametrised curvature magnitude ``c`` clamped to ``[min_c, max_c]`` (default ``[0.1, 10]``).

    The parameter is named ``log_c`` so that optimisers can exclude it from weight decay by name (decay
    would pull ``c`` towards 1 for no geometric reason); it has shape ``[1]`` (a 0-d ``log_c`` from an older
    save loads too). ``forward()`` returns ``c`` as a 0-d tensor, graph connected when trainable. Outside the
    clamp range the gradient is zero (the clamp is active).
    """

    scalar_names = ("log_c",)

    def __init__(self, c: float = 1.0, trainable: bool = False, min_c: float = 0.1, max_c: float = 10.0):
        super().__init__()
        if not 0 < min_c <= max_c:
            raise ValueError(f"Curvature bounds must satisfy 0 < min_c <= max_c, got [{min_c}, {max_c}]")
        c = float(c)
        if not (math.isfinite(c) and min_c <= c <= max_c):
            raise ValueError(f"initial curvature c={c} is outside the allowed range [{min_c}, {max_c}]")
        self.min_c = min_c
        self.max_c = max_c
        self.log_c = scalar_parameter(math.log(c), requires_grad=trainable)

    @property
    def trainable(self) -> bool:
        return self.log_c.requires_grad

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self.log_c.requires_grad_(bool(value))

    def forward(self) -> Tensor:
        """``c = exp(clamp(log_c, log min_c, log max_c))``: a 0-d float32 tensor (float64 in a float64 model)."""
        dtype = torch.float64 if self.log_c.dtype == torch.float64 else torch.float32
        log_c = self.log_c.to(dtype).reshape(()).clamp(math.log(self.min_c), math.log(self.max_c))
        return log_c.exp()

    def extra_repr(self) -> str:
        return f"range=[{self.min_c}, {self.max_c}], trainable={self.trainable}"
