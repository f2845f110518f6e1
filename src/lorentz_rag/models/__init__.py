"""Embedding models (HyTE-FH, HyTE-H, the Euclidean twin, sentence-transformers baselines), MLM models, and
building/saving/loading them (docs/internals.md, "the embedding-model interface").

The HyTE-FH trunk lives in :mod:`lorentz_rag.models.hyte_fh`; everything here is importable lazily so that
``import lorentz_rag.models`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from lorentz_rag.models.args import ModelArgs
    from lorentz_rag.models.base import EmbeddingModel, ModelSettings
    from lorentz_rag.models.factory import (
        build_mlm_model,
        build_model,
        load_mlm_model,
        load_model,
        save_mlm_model,
    )
    from lorentz_rag.models.hf_base import packaged_minilm_path, resolve_model_name
    from lorentz_rag.models.io import WeightsMismatchError

# Name -> submodule; imported on first access, so `lorentz_rag.models.args` (the config schema, read by
# `lorentz-rag train --help`) does not import torch through this package.
_LAZY = {
    "ModelArgs": "args",
    "EmbeddingModel": "base",
    "ModelSettings": "base",
    "build_mlm_model": "factory",
    "build_model": "factory",
    "load_mlm_model": "factory",
    "load_model": "factory",
    "save_mlm_model": "factory",
    "packaged_minilm_path": "hf_base",
    "resolve_model_name": "hf_base",
    "WeightsMismatchError": "io",
}

__all__ = [
    "EmbeddingModel",
    "ModelArgs",
    "ModelSettings",
    "WeightsMismatchError",
    "build_mlm_model",
    "build_model",
    "load_mlm_model",
    "load_model",
    "packaged_minilm_path",
    "resolve_model_name",
    "save_mlm_model",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"lorentz_rag.models.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lorentz_rag.models' has no attribute {name!r}")
