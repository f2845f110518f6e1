"""Readers of OBO and SKOS files, each converting to a :class:`~lorentz_rag.data.concepts.Taxonomy`.

**OBO, through pronto** (``pip install 'lorentz-rag[taxonomy]'``). pronto rather than fastobo: fastobo
(which pronto itself uses to parse) gives the syntax tree of the frames, so every consumer would re-implement
the semantics; pronto resolves them into terms with ``is_a`` superclasses, an ``obsolete`` flag, scoped
synonyms and definitions, is maintained, and reads OBO Graphs JSON and OWL/XML too. What we take:

- every term that is not obsolete; its ``is_a`` parents (``superclasses(distance=1)``), other relationships
  (``part_of``, ...) are not is-a and are left out; an is-a edge to an obsolete term is dropped;
- ``name`` and ``def``; synonyms of ``EXACT`` scope become synonyms. ``BROAD`` and ``NARROW`` synonyms name a
  more general or more specific concept and ``RELATED`` ones only an associated one, so treating any of them
  as "another name of this concept" would train and judge wrong equivalences: they are left out.

Terms are located by their ``id:`` line in the file, so errors name ``file:line``.

**SKOS, through rdflib** (Turtle ``.ttl``, RDF/XML ``.rdf``/``.owl``/``.xml``, N-Triples ``.nt``, N3 ``.n3``,
JSON-LD ``.jsonld``): every ``skos:Concept`` not marked ``owl:deprecated true``; id = its ``skos:notation`` when
it has exactly one, else its IRI; name = ``skos:prefLabel`` (English, else untagged, else the first by
language), synonyms = ``skos:altLabel`` in that language or untagged (``hiddenLabel``, meant for misspellings,
is left out), definition = ``skos:definition`` likewise; parents = ``skos:broader`` plus every concept that
names it in ``skos:narrower``. A ``broader``/``narrower`` link to something that is not a concept is an
unknown-parent error. SKOS files carry no line numbers; errors name the file and the concept.

Parents and synonyms are sorted, so a file converts the same way every time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lorentz_rag.data.concepts import Concept, Taxonomy, TaxonomyError

__all__ = ["SKOS_SUFFIXES", "read_obo", "read_skos"]

#: File suffix -> rdflib format name.
SKOS_SUFFIXES = {
    ".ttl": "turtle",
    ".rdf": "xml",
    ".owl": "xml",
    ".xml": "xml",
    ".nt": "nt",
    ".n3": "n3",
    ".jsonld": "json-ld",
}
_EXTRA = "pip install 'lorentz-rag[taxonomy]'"
_OBO_ID = re.compile(r"^id:\s*(\S+)")


def _obo_lines(path: Path) -> dict[str, str]:
    """``{term id: "file:line"}`` of the ``id:`` lines inside ``[Term]`` stanzas."""
    where: dict[str, str] = {}
    stanza = ""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.startswith("["):
                stanza = line.strip()
            elif stanza == "[Term]" and (match := _OBO_ID.match(line)):
                where.setdefault(match.group(1), f"{path}:{lineno}")
    return where


def read_obo(path: str | Path) -> Taxonomy:
    """Read an OBO file (see the module docstring for what is kept)."""
    try:
        import pronto
    except ImportError as error:
        raise ImportError(f"reading OBO taxonomies needs pronto: {_EXTRA}") from error
    path = Path(path)
    try:
        ontology = pronto.Ontology(str(path))
    except Exception as error:  # pronto / fastobo raise their own syntax errors
        raise TaxonomyError(f"{path}: not a readable OBO file ({error})") from error
    lines = _obo_lines(path)
    terms = [t for t in ontology.terms() if not t.obsolete]
    kept = {t.id for t in terms}
    concepts = []
    for term in terms:
        parents = sorted(p.id for p in term.superclasses(distance=1, with_self=False) if p.id in kept)
        synonyms = sorted({s.description.strip() for s in term.synonyms if s.scope == "EXACT"} - {""})
        name = (term.name or "").strip()
        definition = str(term.definition).strip() if term.definition else ""
        concepts.append(
            Concept(term.id, name, definition, tuple(s for s in synonyms if s != name), tuple(parents))
        )
    if not concepts:
        raise TaxonomyError(f"{path}: no (non-obsolete) terms")
    return Taxonomy(concepts, source={c.id: lines.get(c.id, f"{path} (term {c.id})") for c in concepts})


def _pick_language(values: list[Any]) -> str | None:
    """The language tag preferred among literals: ``en`` (or ``en-*``), else untagged, else the first tag."""
    tags = sorted({v.language or "" for v in values})
    for tag in tags:
        if tag == "en" or tag.startswith("en-"):
            return tag
    return "" if "" in tags else (tags[0] if tags else None)


def _labels(graph: Any, subject: Any, predicate: Any, language: str | None) -> list[str]:
    values = list(graph.objects(subject, predicate))
    return sorted(
        {str(v).strip() for v in values if (getattr(v, "language", None) or "") in {language, ""}} - {""}
    )


def read_skos(path: str | Path) -> Taxonomy:
    """Read a SKOS file (see the module docstring for what is kept)."""
    try:
        import rdflib
        from rdflib.namespace import OWL, RDF, SKOS
    except ImportError as error:
        raise ImportError(f"reading SKOS taxonomies needs rdflib: {_EXTRA}") from error
    path = Path(path)
    fmt = next((f for s, f in SKOS_SUFFIXES.items() if path.name.lower().endswith(s)), None)
    if fmt is None:
        raise ValueError(f"{path}: not a SKOS file suffix ({', '.join(SKOS_SUFFIXES)})")
    graph = rdflib.Graph()
    try:
        graph.parse(str(path), format=fmt)
    except Exception as error:  # rdflib raises parser-specific errors
        raise TaxonomyError(f"{path}: not readable as {fmt} ({error})") from error
    nodes = sorted(
        (
            s
            for s in set(graph.subjects(RDF.type, SKOS.Concept))
            if not any(v.toPython() is True for v in graph.objects(s, OWL.deprecated))
        ),
        key=str,
    )
    ids: dict[Any, str] = {}
    for node in nodes:
        notations = list(graph.objects(node, SKOS.notation))
        ids[node] = str(notations[0]).strip() if len(notations) == 1 else str(node)
    where = {ids[n]: f"{path} (concept {n})" for n in nodes}
    parents: dict[Any, set[str]] = {n: set() for n in nodes}
    for node in nodes:
        for parent in graph.objects(node, SKOS.broader):
            parents[node].add(ids.get(parent, str(parent)))
        for child in graph.objects(node, SKOS.narrower):
            if child not in parents:
                raise TaxonomyError(
                    f"{where[ids[node]]}: skos:narrower names {child}, which is not a skos:Concept"
                )
            parents[child].add(ids[node])
    concepts = []
    for node in nodes:
        language = _pick_language(list(graph.objects(node, SKOS.prefLabel)))
        names = _labels(graph, node, SKOS.prefLabel, language)
        name = names[0] if names else ""
        definitions = _labels(graph, node, SKOS.definition, language)
        synonyms = tuple(s for s in _labels(graph, node, SKOS.altLabel, language) if s != name)
        concepts.append(
            Concept(
                ids[node], name, definitions[0] if definitions else "", synonyms, tuple(sorted(parents[node]))
            )
        )
    if not concepts:
        raise TaxonomyError(f"{path}: no skos:Concept")
    return Taxonomy(concepts, source=where)
