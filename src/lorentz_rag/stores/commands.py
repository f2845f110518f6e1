"""``lorentz-rag index build|add|delete --store SPEC`` and ``lorentz-rag search --store SPEC``.

``SPEC`` is any form of :data:`lorentz_rag.store_specs.STORE_SPECS` (:func:`lorentz_rag.store_specs.parse_store_spec`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lorentz_rag.data.beir import read_corpus
from lorentz_rag.eval.encode import encode_corpus
from lorentz_rag.eval.index import IndexNotEmptyError, print_hits
from lorentz_rag.eval.taxonomy_attachment import read_taxonomy_request
from lorentz_rag.models import load_model
from lorentz_rag.search.graph_knn import refuse_radius_weight
from lorentz_rag.store_specs import backend_of, store_kinds
from lorentz_rag.stores import (
    DEFAULT_COLLECTION,
    STORE_CLASSES,
    StoreHit,
    StoreUnreadableError,
    VectorStore,
    create_store,
    documents_in,
    layout_for_model,
    open_store,
    parse_store_spec,
)
from lorentz_rag.stores.taxonomy import (
    attach_store_taxonomy,
    read_store_taxonomy,
    remove_store_taxonomy,
    store_taxonomy_folder,
    write_store_taxonomy,
)

__all__ = [
    "add_store_command",
    "build_store_command",
    "delete_store_command",
    "search_store_command",
    "store_kinds",
]

# Documents embedded and written per store call (bounds the memory of one add).
_ADD_BATCH = 4096


def build_store_command(
    model_path: str,
    corpus: str,
    store: str,
    *,
    kind: str = "flat",
    batch_size: int = 64,
    max_radius: float | None = None,
    name: str = DEFAULT_COLLECTION,
    overwrite: bool = False,
    taxonomy: str | None = None,
    graph_settings: str | None = None,
) -> VectorStore:
    """``lorentz-rag index build --store SPEC``: embed a corpus and write it to a new table or collection
    ``name``; one that holds documents is replaced only with ``overwrite`` (else :class:`IndexNotEmptyError`,
    before the model loads). ``kind`` other than ``flat`` builds LanceDB's ANN index, or lets a Qdrant server
    build its HNSW graph (``flat``: ``hnsw_m=0``, no graph). ``taxonomy`` (with ``graph_settings``, a JSON
    file) attaches a taxonomy for graph-kNN search, kept beside a local store
    (:mod:`lorentz_rag.stores.taxonomy`); a rebuild without one drops the old attachment."""
    if kind not in store_kinds(store):
        raise ValueError(
            f"--kind {kind!r} does not apply to store {store}; choose one of {list(store_kinds(store))}"
        )
    attach = read_taxonomy_request(taxonomy, graph_settings)  # a bad file stops the build here
    if attach is not None:
        store_taxonomy_folder(store, name)  # a Qdrant server cannot carry one: refused before any work
    ids, texts = _read_documents(corpus)  # before the model loads: an empty corpus costs nothing
    _check_replaceable(store, name, overwrite)  # and the store is reachable, not in use, not held
    model = load_model(model_path)
    start = time.perf_counter()
    # Every document is embedded first: without --max-radius the store's bound comes from their radii.
    emb = encode_corpus(model, texts, batch_size=batch_size)
    layout = layout_for_model(
        model, max_radius=max_radius, documents=emb, model_path=str(Path(model_path).resolve())
    )
    options = STORE_CLASSES[parse_store_spec(store)[0]].build_options(kind)
    _check_replaceable(store, name, overwrite)  # again: documents may have been added while encoding
    target = create_store(store, layout, name=name, overwrite=True, **options)
    for part in range(0, len(ids), _ADD_BATCH):
        chunk = slice(part, part + _ADD_BATCH)
        target.add_embeddings(ids[chunk], emb[chunk], texts[chunk])
    target.build_index(kind)
    remove_store_taxonomy(store, name)  # the documents were replaced: an old attachment no longer holds
    if attach is not None:
        attached = attach_store_taxonomy(
            target, store, model, attach.taxonomy, attach.settings, source=attach.source
        )
        print(attached.attached.summary())
    elif getattr(model, "concept_graph", None) is not None:
        # The model carries the taxonomy it was taught (the taxonomy recipe): attach it, already embedded.
        try:
            store_taxonomy_folder(store, name)
        except ValueError as why:
            print(f"the model's taxonomy is not attached ({why}); broader / narrower use its other channels")
        else:
            attached = attach_store_taxonomy(target, store, model, model.concept_graph)
            print(f"the model's own {attached.attached.summary()}")
    seconds = time.perf_counter() - start
    print(
        f"stored {len(target)} documents ({kind}, {layout.similarity}, radius bound {_rounded(layout.max_radius)}) from "
        f"{corpus} -> {store} ({name}) in {seconds:.1f} s"
    )
    return target


def add_store_command(
    store: str,
    corpus: str,
    *,
    model_path: str | None = None,
    batch_size: int = 64,
    allow_model_mismatch: bool = False,
    name: str = DEFAULT_COLLECTION,
) -> VectorStore:
    """``lorentz-rag index add --store SPEC --corpus C``: embed and add (or replace, by id) documents with
    the store's model (or ``model_path``, refused unless it is the same model); nothing is rebuilt."""
    target = open_store(store, name=name)
    # A damaged attachment stops the add before it changes anything.
    attached = read_store_taxonomy(store, name)
    model = _model_for(target, model_path)
    target.check_model(model, allow_model_mismatch=allow_model_mismatch)
    ids, texts = _read_documents(corpus)
    _add_in_batches(target, model, ids, texts, batch_size)
    if attached is not None:
        # The added documents are linked from their stored vectors, as a build links every document.
        stored_ids, vectors, stored_texts, _ = target.all_documents()
        row = {doc_id: i for i, doc_id in enumerate(stored_ids)}
        added = list(dict.fromkeys(str(i) for i in ids))
        rows = [row[doc_id] for doc_id in added]
        write_store_taxonomy(
            store,
            name,
            attached.with_documents(added, [stored_texts[r] for r in rows], torch.from_numpy(vectors[rows])),
        )
    print(f"added {len(ids)} documents from {corpus} -> {store} ({name}); it holds {len(target)}")
    return target


def delete_store_command(store: str, ids: Sequence[str], *, name: str = DEFAULT_COLLECTION) -> VectorStore:
    """``lorentz-rag index delete --store SPEC --ids ID ...``: delete documents by id."""
    target = open_store(store, name=name)
    attached = read_store_taxonomy(store, name)
    before = len(target)
    target.delete(list(ids))
    if attached is not None:
        write_store_taxonomy(store, name, attached.without(ids))
    print(f"deleted {before - len(target)} of {len(ids)} ids from {store} ({name}); it holds {len(target)}")
    return target


def search_store_command(
    store: str,
    queries: Sequence[str],
    k: int = 10,
    model_path: str | None = None,
    *,
    exact: bool = False,
    allow_model_mismatch: bool = False,
    name: str = DEFAULT_COLLECTION,
    relation: str = "similar",
    radius_weight: float | None = None,
) -> list[list[StoreHit]]:
    """``lorentz-rag search --store SPEC``: the top ``k`` of each query, printed as ``lorentz-rag search --index``.
    ``relation``: ``similar``, ``broader`` or ``narrower``, ranked as the FAISS folder ranks them
    (:meth:`VectorStore.search`; with a taxonomy attached, broader / narrower are graph-kNN over every stored
    document). ``radius_weight`` (default
    :data:`DEFAULT_RADIUS_WEIGHT`) is refused on a store with a taxonomy attached."""
    target = open_store(store, name=name)
    attached = read_store_taxonomy(store, name) if relation != "similar" else None
    if attached is not None and radius_weight is not None:
        raise refuse_radius_weight(f"{store} ({name})")
    # The relation is checked once the model is loaded: a model with a hierarchy channel ranks broader /
    # narrower whatever the store's similarity (VectorStore.search).
    model = _model_for(target, model_path)
    results = target.search(
        model,
        list(queries),
        k,
        exact=exact,
        allow_model_mismatch=allow_model_mismatch,
        relation=relation,
        radius_weight=radius_weight,
    )
    print_hits(queries, [[(hit.id, hit.score) for hit in hits] for hits in results])
    return results


def _check_replaceable(store: str, name: str, overwrite: bool) -> None:
    """Refuse to replace a table or collection that holds documents, unless ``overwrite`` (which also
    replaces one whose files are damaged). Connects to the store, so an unreachable server, a folder in use
    or (without ``overwrite``) a damaged table is named before any work."""
    try:
        held = documents_in(store, name=name)
    except StoreUnreadableError:
        if overwrite:
            return
        raise
    if held and not overwrite:
        what = backend_of(store).container
        raise IndexNotEmptyError(
            f"{store} ({what} {name}) already holds {held} documents; pass --overwrite to replace them, or use "
            "'lorentz-rag index add' to append"
        )


def _rounded(radius: float | None) -> float | None:
    return None if radius is None else round(radius, 4)


def _read_documents(corpus: str) -> tuple[list[str], list[str]]:
    """The corpus's ids and texts; an empty corpus is refused (as ``index build --out`` refuses it)."""
    ids, texts = read_corpus(corpus)
    if not texts:
        raise ValueError(f"corpus {corpus} has no documents: nothing to store")
    return ids, texts


def _model_for(store: VectorStore, model_path: str | None) -> Any:
    path = model_path or store.layout.model_path
    if not path:
        raise ValueError(f"{store.location}: the store records no model path; pass --model PATH")
    return load_model(path)


def _add_in_batches(
    store: VectorStore, model: Any, ids: list[str], texts: list[str], batch_size: int
) -> None:
    for start in range(0, len(ids), _ADD_BATCH):
        part = texts[start : start + _ADD_BATCH]
        emb = encode_corpus(model, part, batch_size=batch_size)
        store.add_embeddings(ids[start : start + _ADD_BATCH], emb, part)
