"""The model's single curvature ``-c`` (DESIGN.md section 3), stored as ``log c``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Curvature"]


class Curvature(nn.Module):
    """Log-parametrised curvature magnitude ``c`` clamped to ``[min_c, max_c]`` (default ``[0.1, 10]``).

    The parameter is named ``log_c`` so that optimisers can exclude it from weight decay by name (decay
    would pull ``c`` towards 1 for no geometric reason). ``forward()`` returns ``c`` as a 0-d tensor, graph
    connected when trainable. Outside the clamp range the gradient is zero (the clamp is active).
    """

    def __init__(self, c: float = 1.0, trainable: bool = False, min_c: float = 0.1, max_c: float = 10.0):
        super().__init__()
        if not 0 < min_c <= max_c:
            raise ValueError(f"Curvature bounds must satisfy 0 < min_c <= max_c, got [{min_c}, {max_c}]")
        c = float(c)
        if not (math.isfinite(c) and min_c <= c <= max_c):
            raise ValueError(f"initial curvature c={c} is outside the allowed range [{min_c}, {max_c}]")
        self.min_c = min_c
        self.max_c = max_c
        self.log_c = nn.Parameter(torch.tensor(math.log(c), dtype=torch.float32), requires_grad=trainable)

    @property
    def trainable(self) -> bool:
        return self.log_c.requires_grad

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self.log_c.requires_grad_(bool(value))

    def forward(self) -> Tensor:
        """``c = exp(clamp(log_c, log min_c, log max_c))``: a 0-d float32 tensor (float64 in a float64 model)."""
        dtype = torch.float64 if self.log_c.dtype == torch.float64 else torch.float32
        log_c = self.log_c.to(dtype).clamp(math.log(self.min_c), math.log(self.max_c))
        return log_c.exp()

    def extra_repr(self) -> str:
        return f"range=[{self.min_c}, {self.max_c}], trainable={self.trainable}"
