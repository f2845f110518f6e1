"""Lorentz neural-network layers built only on :mod:`lorentz_rag.geometry` (docs/design.md, section 4).

Every layer maps points ``[..., d+1]`` (time first) of ``H^d_c`` to points and takes the curvature ``c``
(a 0-d tensor from the model's single :class:`Curvature`) as a forward argument.
"""

from lorentz_rag.nn.activation import LorentzActivation, LorentzGatedFFN
from lorentz_rag.nn.attention import LorentzMultiheadAttention, RotaryEmbedding
from lorentz_rag.nn.curvature import Curvature
from lorentz_rag.nn.embedding import LorentzEmbedding
from lorentz_rag.nn.linear import LorentzLinear
from lorentz_rag.nn.mlr import LorentzMLR
from lorentz_rag.nn.norm import LorentzLayerNorm, LorentzRMSNorm, build_lorentz_norm
from lorentz_rag.nn.residual import LorentzResidual

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
