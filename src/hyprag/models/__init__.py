"""Embedding models (HyTE-FH, HyTE-H, the Euclidean twin, sentence-transformers baselines), MLM models, and
building/saving/loading them (docs/internals.md, "the embedding-model interface").

The HyTE-FH trunk lives in :mod:`hyprag.models.hyte_fh`; everything here is importable lazily so that
``import hyprag.models`` stays light.
"""

from __future__ import annotations

from hyprag.models.args import ModelArgs
from hyprag.models.base import EmbeddingModel, ModelSettings
from hyprag.models.factory import (
    build_mlm_model,
    build_model,
    load_mlm_model,
    load_model,
    save_mlm_model,
)
from hyprag.models.hf_base import packaged_minilm_path, resolve_model_name
from hyprag.models.io import WeightsMismatchError

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
