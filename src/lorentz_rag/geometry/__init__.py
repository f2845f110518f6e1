"""Pure tensor geometry of the Lorentz model: :mod:`.lorentz` (points, distances, maps) and
:mod:`.pooling` (midpoints of token sequences)."""

from lorentz_rag.geometry import lorentz, pooling

__all__ = ["lorentz", "pooling"]
