"""Hyperbolic (and Euclidean) embeddings in the vector databases users run: LanceDB and Qdrant.

``open_store(SPEC)`` opens a store (``SPEC``: :data:`lorentz_rag.store_specs.STORE_SPECS`, the grammar of every
backend in one table); :func:`create_store` makes one for a model. Stored forms and the radius bound: :mod:`lorentz_rag.stores.layout`; search and
the float64 re-rank: :mod:`lorentz_rag.stores.base`. lancedb and qdrant-client are imported only when a
store of theirs is opened (``pip install 'lorentz-rag[stores]'``).
"""

from __future__ import annotations

from typing import Any

from lorentz_rag.store_specs import BACKENDS, STORE_SPECS, parse_store_spec
from lorentz_rag.stores.base import (
    DEFAULT_COLLECTION,
    StoreHit,
    StoreUnreachableError,
    StoreUnreadableError,
    VectorStore,
)
from lorentz_rag.stores.lancedb import LanceDBStore
from lorentz_rag.stores.layout import StoreLayout, layout_for_model, model_radius_bound
from lorentz_rag.stores.qdrant import QdrantStore
from lorentz_rag.stores.taxonomy import read_store_taxonomy

__all__ = [
    "BACKENDS",
    "DEFAULT_COLLECTION",
    "STORE_CLASSES",
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

#: The class that opens and creates stores of each backend of :data:`lorentz_rag.store_specs.BACKENDS`.
STORE_CLASSES: dict[str, type[VectorStore]] = {"lancedb": LanceDBStore, "qdrant": QdrantStore}


def _backend(spec: str) -> tuple[type[VectorStore], dict[str, str]]:
    backend, where = parse_store_spec(spec)
    return STORE_CLASSES[backend], where


def open_store(spec: str, *, name: str = DEFAULT_COLLECTION, **options: Any) -> VectorStore:
    """The store ``spec`` names (:func:`parse_store_spec`), written by :func:`create_store`."""
    cls, where = _backend(spec)
    store = cls.open(**where, name=name, **options)
    store.taxonomy_reader = lambda: read_store_taxonomy(spec, name)
    return store


def documents_in(spec: str, *, name: str = DEFAULT_COLLECTION) -> int | None:
    """How many documents the table or collection ``name`` at ``spec`` holds (``None``: there is none).
    Connects to the store: a server that does not answer, a folder in use or damaged files are refused here."""
    cls, where = _backend(spec)
    return cls.documents_in(**where, name=name)


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
    cls, where = _backend(spec)
    return cls.create(layout=layout, **where, name=name, overwrite=overwrite, **options)
