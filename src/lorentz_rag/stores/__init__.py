"""Hyperbolic (and Euclidean) embeddings in the vector databases users run: LanceDB and Qdrant.

``open_store("lancedb:PATH" | "qdrant:PATH" | "qdrant+http://HOST[:PORT]")`` opens a store; :func:`create_store`
makes one for a model. Stored forms and the radius bound: :mod:`lorentz_rag.stores.layout`; search and
the float64 re-rank: :mod:`lorentz_rag.stores.base`. lancedb and qdrant-client are imported only when a
store of theirs is opened (``pip install 'lorentz-rag[stores]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorentz_rag.stores.base import (
    DEFAULT_COLLECTION,
    StoreHit,
    StoreUnreachableError,
    StoreUnreadableError,
    VectorStore,
)
from lorentz_rag.stores.lancedb import ANN_KINDS as LANCEDB_ANN_KINDS
from lorentz_rag.stores.lancedb import LanceDBStore
from lorentz_rag.stores.layout import StoreLayout, layout_for_model, model_radius_bound
from lorentz_rag.stores.qdrant import QdrantStore

__all__ = [
    "DEFAULT_COLLECTION",
    "LANCEDB_ANN_KINDS",
    "STORE_SPECS",
    "LanceDBStore",
    "QdrantStore",
    "StoreHit",
    "StoreLayout",
    "StoreUnreachableError",
    "StoreUnreadableError",
    "VectorStore",
    "create_store",
    "documents_in",
    "layout_for_model",
    "model_radius_bound",
    "open_store",
    "parse_store_spec",
]

STORE_SPECS = "lancedb:PATH, qdrant:PATH or qdrant+http://HOST[:PORT]"


def parse_store_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"lancedb:PATH"`` -> ``("lancedb", {"path": PATH})``; ``"qdrant:PATH"`` -> ``("qdrant", {"path":
    PATH})``; ``"qdrant+http(s)://HOST[:PORT]"`` -> ``("qdrant", {"url": ...})``."""
    scheme, sep, rest = str(spec).partition(":")
    if sep and rest:
        if scheme == "lancedb":
            return "lancedb", {"path": rest}
        if scheme == "qdrant":
            return "qdrant", {"path": rest}
        if scheme in ("qdrant+http", "qdrant+https") and rest.startswith("//"):
            return "qdrant", {"url": f"{scheme.partition('+')[2]}:{rest}"}
    raise ValueError(f"unknown store {spec!r}: give {STORE_SPECS}")


def open_store(spec: str, *, name: str = DEFAULT_COLLECTION, **options: Any) -> VectorStore:
    """The store ``spec`` names (:func:`parse_store_spec`), written by :func:`create_store`."""
    backend, where = parse_store_spec(spec)
    if backend == "lancedb":
        return LanceDBStore.open(where["path"], name=name, **options)
    return QdrantStore.open(**where, name=name, **options)


def documents_in(spec: str, *, name: str = DEFAULT_COLLECTION) -> int | None:
    """How many documents the table or collection ``name`` at ``spec`` holds (``None``: there is none).
    Connects to the store: a server that does not answer, a folder in use or damaged files are refused here."""
    backend, where = parse_store_spec(spec)
    if backend == "lancedb":
        return LanceDBStore.documents_in(where["path"], name=name)
    return QdrantStore.documents_in(**where, name=name)


def create_store(
    spec: str,
    layout: StoreLayout,
    *,
    name: str = DEFAULT_COLLECTION,
    overwrite: bool = False,
    **options: Any,
) -> VectorStore:
    """A new empty store at ``spec`` for ``layout`` (:func:`layout_for_model` for a model); an existing
    table or collection ``name`` is an error unless ``overwrite``."""
    backend, where = parse_store_spec(spec)
    if backend == "lancedb":
        Path(where["path"]).mkdir(parents=True, exist_ok=True)
        return LanceDBStore.create(where["path"], layout, name=name, overwrite=overwrite, **options)
    return QdrantStore.create(layout, **where, name=name, overwrite=overwrite, **options)
