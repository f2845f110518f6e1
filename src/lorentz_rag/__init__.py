"""lorentz_rag: hyperbolic (Lorentz-model) text-embedding retrievers for retrieval-augmented generation.

Heavy modules (models, training, evaluation) are imported on first use, so ``import lorentz_rag`` and the
geometry core stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lorentz_rag._version import __version__

__all__ = ["__version__", "build_model", "load_model"]

if TYPE_CHECKING:  # pragma: no cover
    from lorentz_rag.models import build_model, load_model


def __getattr__(name: str) -> Any:
    if name in ("build_model", "load_model"):
        from lorentz_rag import models

        return getattr(models, name)
    raise AttributeError(f"module 'lorentz_rag' has no attribute {name!r}")
