"""Lorentz neural-network layers built only on :mod:`hyprag.geometry` (DESIGN.md section 3).

Every layer maps points ``[..., d+1]`` (time first) of ``H^d_c`` to points and takes the curvature ``c``
(a 0-d tensor from the model's single :class:`Curvature`) as a forward argument.
"""

from hyprag.nn.activation import LorentzActivation, LorentzGatedFFN
from hyprag.nn.attention import LorentzMultiheadAttention, RotaryEmbedding
from hyprag.nn.curvature import Curvature
from hyprag.nn.embedding import LorentzEmbedding
from hyprag.nn.linear import LorentzLinear
from hyprag.nn.mlr import LorentzMLR
from hyprag.nn.norm import LorentzLayerNorm, LorentzRMSNorm, build_lorentz_norm
from hyprag.nn.residual import LorentzResidual

__all__ = [
    "Curvature",
    "LorentzActivation",
    "LorentzEmbedding",
    "LorentzGatedFFN",
    "LorentzLayerNorm",
    "LorentzLinear",
    "LorentzMLR",
    "LorentzMultiheadAttention",
    "LorentzRMSNorm",
    "LorentzResidual",
    "RotaryEmbedding",
    "build_lorentz_norm",
]
