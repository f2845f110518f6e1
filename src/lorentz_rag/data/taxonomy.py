"""Taxonomies in: the JSONL format, the readers of other formats, and the seeded concept-level split.

Our format (``.jsonl`` / ``.jsonl.gz``), one concept a line::

    {"id": "EX:2", "name": "mammal", "definition": "a warm-blooded animal ...",
     "synonyms": ["mammalian"], "parents": ["EX:1"]}

``definition``, ``synonyms`` and ``parents`` are optional (a concept without parents is a root); other keys
are errors. A bad line, a duplicate id, an empty name, an unknown parent or a cycle is a
:class:`TaxonomyError` naming ``file:line``. The bundled WordNet file (``wordnet/nouns.jsonl.gz``: ``lemmas``,
``gloss``, ``hypernyms``, ``instance_hypernyms``, ``split``) is recognised by its keys and converted: name =
first lemma (the id when it has none), synonyms = the other lemmas (``_`` read as a space), definition = gloss, parents = hypernyms then
instance hypernyms; :func:`read_training_taxonomy` keeps only its own train split.

Other formats (:mod:`lorentz_rag.data.taxonomy_formats`): OBO (``.obo``, through pronto) and SKOS
(``.ttl``, ``.rdf``, ``.owl``, ``.xml``, ``.nt``, ``.n3``, ``.jsonld``, through rdflib). Standard library only at
import time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorentz_rag.data.concepts import Concept, Taxonomy, TaxonomyError
from lorentz_rag.data.jsonl import gzip_bytes, read_jsonl_numbered, string_field
from lorentz_rag.data.taxonomy_formats import SKOS_SUFFIXES, read_obo, read_skos
from lorentz_rag.errors import closest_key

__all__ = [
    "Concept",
    "Taxonomy",
    "TaxonomyError",
    "TaxonomySplit",
    "read_taxonomy",
    "read_training_taxonomy",
    "split_taxonomy",
    "taxonomy_format",
    "wordnet_held_out_ids",
    "write_taxonomy",
]

_KEYS = ("id", "name", "definition", "synonyms", "parents")
_LEGACY_KEYS = ("gloss", "hypernyms")


def taxonomy_format(path: str | os.PathLike[str]) -> str:
    """``"jsonl"``, ``"obo"`` or ``"skos"`` from the file name; a ``ValueError`` for anything else."""
    name = Path(path).name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    if name.endswith(".obo"):
        return "obo"
    if name.endswith(tuple(SKOS_SUFFIXES)):
        return "skos"
    raise ValueError(
        f"{path}: unknown taxonomy format; expected .jsonl(.gz) (our format or the WordNet nouns file), "
        f".obo, or SKOS ({', '.join(sorted(SKOS_SUFFIXES))})"
    )


def read_taxonomy(path: str | os.PathLike[str]) -> Taxonomy:
    """Read a taxonomy from any supported format (chosen by the file name, see :func:`taxonomy_format`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"taxonomy file not found: {path}")
    kind = taxonomy_format(path)
    if kind == "obo":
        return read_obo(path)
    if kind == "skos":
        return read_skos(path)
    return _read_jsonl(path)


def _read_jsonl(path: Path) -> Taxonomy:
    concepts: list[Concept] = []
    source: dict[str, str] = {}
    legacy: bool | None = None
    for lineno, row in read_jsonl_numbered(path):
        where = f"{path}:{lineno}"
        if legacy is None:
            legacy = all(k in row for k in _LEGACY_KEYS) and "parents" not in row
        concept = _legacy_concept(row, where) if legacy else _concept(row, where)
        if concept.id in source:
            raise TaxonomyError(
                f"{where}: duplicate concept id {concept.id!r} (first at {source[concept.id]})"
            )
        source[concept.id] = where
        concepts.append(concept)
    if not concepts:
        raise TaxonomyError(f"{path}: no concepts")
    return Taxonomy(concepts, source=source)


def _string(row: Mapping[str, Any], key: str, where: str, *, required: bool) -> str:
    return string_field(row, key, where, required=required, error=TaxonomyError).strip()


def _strings(row: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = row.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TaxonomyError(f"{where}: {key!r} must be a list of strings, got {value!r}")
    return tuple(dict.fromkeys(v.strip() for v in value if v.strip()))


def _concept(row: Mapping[str, Any], where: str) -> Concept:
    for key in row:
        if key not in _KEYS:
            hint = closest_key(key, _KEYS)
            raise TaxonomyError(
                f"{where}: unknown key {key!r}"
                + (f" (did you mean {hint!r}?)" if hint else "")
                + f"; a concept has {', '.join(_KEYS)}"
            )
    concept_id = _string(row, "id", where, required=True)
    name = _string(row, "name", where, required=True)
    if not concept_id:
        raise TaxonomyError(f"{where}: empty 'id'")
    if not name:
        raise TaxonomyError(f"{where}: concept {concept_id!r} has an empty 'name'")
    synonyms = tuple(s for s in _strings(row, "synonyms", where) if s != name)
    return Concept(
        concept_id,
        name,
        _string(row, "definition", where, required=False),
        synonyms,
        _strings(row, "parents", where),
    )


def _legacy_concept(row: Mapping[str, Any], where: str) -> Concept:
    """A row of the bundled ``wordnet/nouns.jsonl.gz`` as a concept."""
    concept_id = _string(row, "id", where, required=True)
    lemmas = [s.replace("_", " ") for s in _strings(row, "lemmas", where)] or [
        concept_id
    ]  # no lemmas: the id
    parents = (*_strings(row, "hypernyms", where), *_strings(row, "instance_hypernyms", where))
    synonyms = tuple(s for s in dict.fromkeys(lemmas[1:]) if s != lemmas[0])
    return Concept(concept_id, lemmas[0], _string(row, "gloss", where, required=False), synonyms, parents)


def read_training_taxonomy(path: str | os.PathLike[str]) -> Taxonomy:
    """The taxonomy a hierarchy objective trains on: for a WordNet ``nouns.jsonl(.gz)`` file its own train
    split (``"split": "train"`` rows, parents outside the split dropped, as the objective always did); any
    other taxonomy file whole (split it first with :func:`split_taxonomy`, e.g. ``lorentz-rag taxonomy
    build``, which writes ``train.jsonl.gz``)."""
    path = Path(path)
    if taxonomy_format(path) != "jsonl" or not _is_legacy(path):
        return read_taxonomy(path)
    concepts: list[Concept] = []
    source: dict[str, str] = {}
    for lineno, row in read_jsonl_numbered(path):
        if row.get("split") == "train":
            where = f"{path}:{lineno}"
            concept = _legacy_concept(row, where)
            if concept.id in source:
                raise TaxonomyError(
                    f"{where}: duplicate concept id {concept.id!r} (first at {source[concept.id]})"
                )
            source[concept.id] = where
            concepts.append(concept)
    kept = [dataclasses.replace(c, parents=tuple(p for p in c.parents if p in source)) for c in concepts]
    if not kept:
        raise TaxonomyError(f'{path}: no rows with "split": "train"')
    return Taxonomy(kept, source=source)


def wordnet_held_out_ids(path: str | os.PathLike[str]) -> list[str] | None:
    """The ids a WordNet ``nouns.jsonl(.gz)`` file marks as held out (``split`` other than ``train``), in
    file order; ``None`` for any other taxonomy file."""
    path = Path(path)
    if taxonomy_format(path) != "jsonl" or not _is_legacy(path):
        return None
    return [
        str(row["id"]) for _lineno, row in read_jsonl_numbered(path) if row.get("split", "train") != "train"
    ]


def _is_legacy(path: Path) -> bool:
    """Whether the first row of a JSONL file is a WordNet nouns row (``gloss``, ``hypernyms``, no ``parents``)."""
    for _lineno, row in read_jsonl_numbered(path):
        return all(k in row for k in _LEGACY_KEYS) and "parents" not in row
    return False


def write_taxonomy(taxonomy: Taxonomy, path: str | os.PathLike[str]) -> Path:
    """Write ``taxonomy`` in our JSONL format (gzipped, reproducibly, when the name ends in ``.gz``);
    empty optional fields are left out. Returns the path."""
    path = Path(path)
    if taxonomy_format(path) != "jsonl":
        raise ValueError(f"{path}: taxonomies are written as .jsonl or .jsonl.gz")
    lines = []
    for c in taxonomy:
        row: dict[str, Any] = {"id": c.id, "name": c.name}
        if c.definition:
            row["definition"] = c.definition
        if c.synonyms:
            row["synonyms"] = list(c.synonyms)
        row["parents"] = list(c.parents)
        lines.append(json.dumps(row, ensure_ascii=False))
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        data = gzip_bytes(data)
    path.write_bytes(data)
    return path


# --- the split ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaxonomySplit:
    """A concept-level split. ``train``: the taxonomy without the held-out concepts (children of a held-out
    concept re-attached to its parents; synonyms equal to a held-out concept's name or synonym removed).
    ``held_out``: every concept kept out of ``train`` (taxonomy order); ``validation``: the subset of
    ``held_out`` on which settings are chosen (the ``tune`` halves, the subsumption threshold); the rest,
    :attr:`report`, is where results are reported."""

    train: Taxonomy
    held_out: tuple[str, ...]
    validation: tuple[str, ...]

    @property
    def report(self) -> tuple[str, ...]:
        """Held-out concepts outside ``validation`` (taxonomy order)."""
        chosen = set(self.validation)
        return tuple(i for i in self.held_out if i not in chosen)

    @functools.cached_property
    def _parts(self) -> dict[str, str]:
        chosen = set(self.validation)
        return {i: "tune" if i in chosen else "report" for i in self.held_out}

    def part(self, concept_id: str) -> str:
        """``"tune"`` for a validation concept, ``"report"`` for another held-out one."""
        try:
            return self._parts[concept_id]
        except KeyError:
            raise KeyError(f"{concept_id!r} is not a held-out concept") from None


def split_taxonomy(
    taxonomy: Taxonomy,
    held_out_fraction: float = 0.1,
    validation_fraction: float = 0.5,
    seed: int = 0,
    *,
    candidates: Iterable[str] | None = None,
    name: str | None = None,
) -> TaxonomySplit:
    """Hold out ``round(held_out_fraction * len(taxonomy))`` concepts (fewer if the rule below runs out).

    Candidates are the non-root concepts in a seeded random order; a candidate is taken unless it is an
    ancestor or descendant of one already taken. So no held-out concept is an ancestor of another: every
    ancestor of a held-out concept stays in ``train`` (the broader sets' answers) and so does every
    descendant (the narrower sets' answers); held-out concepts may be inner nodes, whose children are
    re-attached to the held-out concept's parents in ``train``. ``validation``: the first
    ``round(validation_fraction * n)`` held-out concepts of the seeded order. ``candidates``: only these may
    be held out (e.g. the bundled WordNet's own held-out synsets, :func:`wordnet_held_out_ids`, which no
    bundled training file contains); the fraction stays one of the whole taxonomy. At least one concept is
    held out, however small the taxonomy: a taxonomy with no candidate that has a parent is a ``ValueError``
    that names it (``name``, e.g. its file). The split is one seeded pass over the candidates, so it ends
    for every taxonomy.
    """
    what = name or repr(taxonomy)
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    if not 0.0 <= validation_fraction <= 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1], got {validation_fraction}")
    allowed = set(taxonomy.concepts) if candidates is None else set(candidates)
    order = [i for i in taxonomy.concepts if taxonomy[i].parents and i in allowed]
    random.Random(f"taxonomy-split-{seed}").shuffle(order)
    target = max(1, round(held_out_fraction * len(taxonomy)))
    taken: list[str] = []
    blocked: set[str] = set()
    for concept_id in order:
        if len(taken) >= target:
            break
        if concept_id in blocked:
            continue
        taken.append(concept_id)
        blocked.add(concept_id)
        blocked.update(taxonomy.ancestors(concept_id))
        blocked.update(taxonomy.descendants(concept_id))
    if not taken:
        if candidates is not None and any(taxonomy[i].parents for i in taxonomy.concepts):
            raise ValueError(
                f"{what}: none of the concepts that may be held out has a parent, so there is no concept "
                "with a parent to hold out; mark some non-root concepts as held out"
            )
        raise ValueError(
            f"{what}: no concept with a parent to hold out ({len(taxonomy)} concepts, all roots); "
            "give the taxonomy is-a edges (parents)"
        )
    validation = set(taken[: round(validation_fraction * len(taken))])
    held = set(taken)
    train = _without_held_out_texts(
        taxonomy.restrict(i for i in taxonomy.concepts if i not in held), held, taxonomy
    )
    ordered = tuple(i for i in taxonomy.concepts if i in held)
    return TaxonomySplit(train, ordered, tuple(i for i in ordered if i in validation))


def _without_held_out_texts(train: Taxonomy, held: Iterable[str], full: Taxonomy) -> Taxonomy:
    """``train`` with every synonym equal (case-folded) to a held-out concept's name or synonym removed."""
    banned = {t.casefold() for i in held for t in (full[i].name, *full[i].synonyms)}
    changed = []
    for c in train:
        synonyms = tuple(s for s in c.synonyms if s.casefold() not in banned)
        changed.append(c if synonyms == c.synonyms else dataclasses.replace(c, synonyms=synonyms))
    return Taxonomy(changed, source={i: train.where(i) for i in train.concepts})
