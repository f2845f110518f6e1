"""A concept graph (:class:`lorentz_rag.search.graph_knn.ConceptGraph`) on disk: ``taxonomy.json`` (settings, the
concepts with their texts and parents, the model's similarity) and ``taxonomy.safetensors`` (the concept-text
embeddings), each written atomically. A model trained with the taxonomy recipe carries its train split's graph
this way (``MODEL/taxonomy/``); an index folder or a store keeps its attached taxonomy the same way, with the
document links beside it (:mod:`lorentz_rag.eval.taxonomy_attachment`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from lorentz_rag.atomic_files import write_bytes, write_json
from lorentz_rag.search.graph_knn import ConceptGraph, GraphKnnSettings

__all__ = ["GRAPH_JSON", "GRAPH_TENSORS", "ConceptGraphFileError", "read_graph_files", "write_graph_files"]

GRAPH_JSON = "taxonomy.json"
GRAPH_TENSORS = "taxonomy.safetensors"
_GRAPH_FORMAT = 1


class ConceptGraphFileError(ValueError):
    """A concept graph's files cannot be read (missing, damaged or inconsistent); the message names the file."""


def write_graph_files(
    graph: ConceptGraph,
    folder: str | os.PathLike[str],
    *,
    extra_meta: Mapping[str, Any] | None = None,
    extra_tensors: Mapping[str, Tensor] | None = None,
) -> None:
    """Write ``graph`` as ``folder/taxonomy.safetensors`` then ``folder/taxonomy.json``, each atomically and
    fsynced (:mod:`lorentz_rag.atomic_files`); ``extra_meta`` / ``extra_tensors`` are stored beside the graph
    (an index's document links) and handed back by :func:`read_graph_files`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": _GRAPH_FORMAT,
        "source": graph.source,
        "settings": graph.settings.to_dict(),
        "similarity": graph.similarity,
        "curvature": graph.curvature,
        **dict(extra_meta or {}),
        "concepts": [
            {
                "id": graph.concept_ids[i],
                "name": graph.names[i],
                "definition": graph.definitions[i],
                "synonyms": graph.synonyms[i],
                "parents": [graph.concept_ids[p] for p in graph.parents[i]],
            }
            for i in range(len(graph))
        ],
        "texts": graph.texts,
    }
    tensors = {
        "text_embeddings": graph.text_embeddings.contiguous(),
        "text_concept": graph.text_concept.contiguous(),
        **{name: t.contiguous() for name, t in (extra_tensors or {}).items()},
    }
    write_bytes(folder / GRAPH_TENSORS, save(tensors))
    write_json(folder / GRAPH_JSON, meta, indent=None)


def read_graph_files(
    folder: str | os.PathLike[str],
) -> tuple[ConceptGraph, dict[str, Any], dict[str, Tensor]]:
    """``(graph, meta, tensors)`` from :func:`write_graph_files`' files; :class:`ConceptGraphFileError` names a
    missing, damaged or inconsistent file."""
    folder = Path(folder)
    json_file, tensor_file = folder / GRAPH_JSON, folder / GRAPH_TENSORS
    for path in (json_file, tensor_file):
        if not path.is_file():
            raise ConceptGraphFileError(
                f"{path}: missing (a taxonomy is stored as {GRAPH_JSON} + {GRAPH_TENSORS})"
            )
    try:
        meta = json.loads(json_file.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format_version") != _GRAPH_FORMAT:
            version = meta.get("format_version") if isinstance(meta, dict) else None
            raise ConceptGraphFileError(f"{json_file}: unsupported format_version {version!r}")
        settings = GraphKnnSettings.from_dict(meta["settings"], where=str(json_file))
        concepts = meta["concepts"]
        position = {c["id"]: i for i, c in enumerate(concepts)}
        parents = [[position[p] for p in c["parents"]] for c in concepts]
    except ConceptGraphFileError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise ConceptGraphFileError(f"{json_file}: not a readable taxonomy file: {error}") from None
    try:
        tensors = load_file(str(tensor_file))
    except (SafetensorError, OSError, ValueError) as error:
        raise ConceptGraphFileError(f"{tensor_file}: not readable (truncated?): {error}") from None
    try:
        graph = ConceptGraph(
            [c["id"] for c in concepts],
            [c["name"] for c in concepts],
            meta["texts"],
            tensors["text_concept"],
            tensors["text_embeddings"],
            parents,
            similarity=meta["similarity"],
            curvature=meta["curvature"],
            settings=settings,
            definitions=[c.get("definition", "") for c in concepts],
            synonyms=[c.get("synonyms", []) for c in concepts],
            source=meta.get("source"),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise ConceptGraphFileError(f"{folder}: inconsistent taxonomy files: {error}") from None
    return graph, meta, tensors
