"""Lorentz multi-head self-attention, rotary positions on the space coordinates (docs/design.md, section 4.4).

Per head ``h`` the queries, keys and values are points of ``H^m_c`` (``m`` = head space dim). Scores are the
negative squared Lorentzian distance, ``-|q_i - k_j|_L^2 / sqrt(m) = (2/c + 2 <q_i, k_j>_L) / sqrt(m)``; the
constant cancels in the softmax, and ``<q, k>_L = (-q0, qs) . k``, so the Euclidean kernel
``scaled_dot_product_attention((-q0, qs), k, v0 * v, scale=2/sqrt(m))`` returns ``sum_j a_ij v_j0 v_j``
exactly (flash / memory-efficient kernels on GPU). Its projection onto the hyperboloid is the Lorentz-factor
weighted midpoint of the values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry.lorentz import CurvatureLike
from lorentz_rag.nn._precision import autocast_off, point_dtype
from lorentz_rag.nn.linear import LorentzLinear

__all__ = ["LorentzMultiheadAttention", "RotaryEmbedding", "apply_rotary", "key_padding_mask"]


class RotaryEmbedding(nn.Module):
    """Rotary angles ``pos * theta^(-2i/m)`` for ``i < m/2``; no state (nothing in the state dict).

    Rotating the space coordinates about the time axis is an isometry of the hyperboloid, so
    ``<R_p q, R_s k>_L`` depends on ``p - s`` only.
    """

    def __init__(self, dim: int, theta: float = 160_000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary embedding needs an even head space dimension, got {dim}")
        self.dim = dim
        self.theta = float(theta)

    def forward(self, position_ids: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """position_ids ``[B, T]`` -> ``(cos, sin)``, each ``[B, T, dim]`` in ``dtype``."""
        exponent = torch.arange(0, self.dim, 2, device=position_ids.device, dtype=dtype) / self.dim
        inv_freq = self.theta ** (-exponent)
        angles = position_ids.to(dtype).unsqueeze(-1) * inv_freq  # [B, T, dim/2]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, theta={self.theta:g}"


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate coordinate pairs ``(i, i + m/2)``: x ``[B, T, H, m]``, cos/sin ``[B, T, m]`` -> ``[B, T, H, m]``."""
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.unsqueeze(-2) + rotated_half * sin.unsqueeze(-2)


def key_padding_mask(attention_mask: Tensor | None, batch: int, length: int, device) -> Tensor:
    """Boolean key mask ``[B, T]`` (True = attend). A row without any real token attends to every position
    (its outputs are meaningless but finite; an all-masked softmax would be NaN and poison gradients)."""
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if attention_mask.shape != (batch, length):
        raise ValueError(
            f"attention_mask must be [B, T] = {(batch, length)}, got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask > 0 if attention_mask.dtype != torch.bool else attention_mask
    return mask | ~mask.any(dim=-1, keepdim=True)


class LorentzMultiheadAttention(nn.Module):
    """Multi-head self-attention on ``H^d_c``: x ``[B, T, d+1]``, key mask ``[B, T]`` -> ``[B, T, d+1]``.

    ``wqkv`` is the three per-head HLTs (queries, keys, values) in one matrix; ``wo`` mixes the lifted
    concatenation of the heads' space parts.
    """

    def __init__(self, hidden_size: int, num_heads: int, rope_theta: float = 160_000.0, bias: bool = False):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        if self.head_dim % 2:
            raise ValueError(
                f"head space dim hidden_size/num_heads = {self.head_dim} must be even for rotary positions"
            )
        self.wqkv = LorentzLinear(hidden_size, 3 * hidden_size, bias=bias)
        self.wo = LorentzLinear(hidden_size, hidden_size, bias=bias)
        self.rotary = RotaryEmbedding(self.head_dim, rope_theta)

    def head_points(
        self, x: Tensor, c: CurvatureLike, position_ids: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-head query, key and value points, each ``[B, H, T, m+1]`` (rotary applied to q and k)."""
        b, t, _ = x.shape
        s = self.wqkv.space(x).view(b, t, 3, self.num_heads, self.head_dim)
        if position_ids is None:
            position_ids = torch.arange(t, device=x.device).expand(b, t)
        with autocast_off(s):
            dtype = point_dtype(s)
            s = s.to(dtype)
            cos, sin = self.rotary(position_ids, dtype=dtype)
            # unbind, not three selects: a select's backward zero-fills all of [B, T, 3, H, m] three times.
            qs, ks, vs = s.unbind(2)
            qs = apply_rotary(qs, cos, sin)
            ks = apply_rotary(ks, cos, sin)
            return tuple(lorentz.lift(p.transpose(1, 2), c) for p in (qs, ks, vs))

    def forward(
        self, x: Tensor, attention_mask: Tensor | None, c: CurvatureLike, position_ids: Tensor | None = None
    ) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.head_points(x, c, position_ids)
        keys = key_padding_mask(attention_mask, b, t, x.device)[:, None, None, :]  # [B, 1, 1, T]
        q_tilde = lorentz.ip_query(q)  # (-q0, qs) . k = <q, k>_L
        weighted_v = v[..., :1] * v  # lambda_j v_j with lambda_j = v_j0
        width = self.head_dim + 1
        padded = q.is_cuda and width % 8 != 0
        if padded:
            # Fused kernels want head widths that are multiples of 8; zero columns change no dot product.
            pad = (0, 8 - width % 8)
            q_tilde, k, weighted_v = (F.pad(p, pad) for p in (q_tilde, k, weighted_v))
        ambient = F.scaled_dot_product_attention(
            q_tilde, k, weighted_v, attn_mask=keys, scale=2.0 / math.sqrt(self.head_dim)
        )  # [B, H, T, m+1] = sum_j a_ij v_j0 v_j
        if padded:  # (a no-op slice would still cost a zero-filled buffer in the backward)
            ambient = ambient[..., :width]
        with autocast_off(ambient):
            heads = lorentz.project_space(ambient.to(point_dtype(x)), c)  # [B, H, T, m]
            merged = lorentz.lift(heads.transpose(1, 2).reshape(b, t, self.hidden_size), c)
        return self.wo(merged, c)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, head_dim={self.head_dim}"
