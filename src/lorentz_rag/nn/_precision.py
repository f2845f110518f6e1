"""Precision policy shared by the Lorentz layers.

Matrix products (linear maps, attention) may run in bf16/fp16 under autocast; every geometric step (lift,
projection, norms, residual midpoints, the MLR head) runs in float32 (float64 when the model is float64)
with autocast disabled locally, and points travel between layers in that dtype.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def point_dtype(t: Tensor) -> torch.dtype:
    """The dtype geometry runs in for ``t``: float64 stays float64, everything else is float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def autocast_off(t: Tensor) -> contextlib.AbstractContextManager:
    """Disable autocast on ``t``'s device for the enclosed geometry (a no-op where it is not enabled)."""
    device_type = t.device.type
    if device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
