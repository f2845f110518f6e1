"""The in-memory taxonomy: :class:`Concept` records and the validated, immutable :class:`Taxonomy`.

Import it from :mod:`lorentz_rag.data.taxonomy`, which adds the file formats and the split. A taxonomy is a
directed acyclic graph of is-a edges (a concept may have several parents); roots have none. Every query
walks the graph breadth-first, so "hops" is always the fewest is-a edges between two concepts.
Standard library only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lorentz_rag.data.jsonl import DataFormatError

__all__ = ["Concept", "Taxonomy", "TaxonomyError", "hop_distances"]


class TaxonomyError(DataFormatError):
    """A taxonomy is invalid (unknown parent, cycle, duplicate id, empty name); names file and line."""


@dataclass(frozen=True)
class Concept:
    """One concept: ``id``, display ``name``, optional ``definition``, ``synonyms`` and ``parents`` (ids)."""

    id: str
    name: str
    definition: str = ""
    synonyms: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The text that stands for the concept as a document: its definition, else its name."""
        return self.definition or self.name


def _where(source: Mapping[str, str] | None, concept_id: str) -> str:
    """``file:line`` (or file) of a concept when known, else ``concept <id>``."""
    if source and concept_id in source:
        return source[concept_id]
    return f"concept {concept_id!r}"


class Taxonomy:
    """A validated set of concepts, in the order given; immutable after construction.

    ``Taxonomy(concepts, source=None)``: ``source`` maps ids to ``file:line`` (or ``file``) for error
    messages. Raises :class:`TaxonomyError` on a duplicate id, an empty id or name, a parent that is not a
    concept, a concept listed as its own parent, or a cycle (the message names the cycle).
    """

    __slots__ = ("_ancestors", "_children", "_depth", "_source", "concepts")

    def __init__(self, concepts: Iterable[Concept], *, source: Mapping[str, str] | None = None) -> None:
        table: dict[str, Concept] = {}
        for concept in concepts:
            where = _where(source, concept.id)
            if not isinstance(concept.id, str) or not concept.id.strip():
                raise TaxonomyError(f"{where}: empty concept id")
            if concept.id in table:
                raise TaxonomyError(f"{where}: duplicate concept id {concept.id!r}")
            if not isinstance(concept.name, str) or not concept.name.strip():
                raise TaxonomyError(f"{where}: concept {concept.id!r} has an empty name")
            table[concept.id] = concept
        children: dict[str, list[str]] = {i: [] for i in table}
        for concept in table.values():
            for parent in concept.parents:
                if parent == concept.id:
                    raise TaxonomyError(
                        f"{_where(source, concept.id)}: concept {concept.id!r} is its own parent"
                    )
                if parent not in table:
                    raise TaxonomyError(
                        f"{_where(source, concept.id)}: concept {concept.id!r} has unknown parent {parent!r}"
                    )
                children[parent].append(concept.id)
        self.concepts: dict[str, Concept] = table
        self._children = {i: tuple(c) for i, c in children.items()}
        self._source = dict(source or {})
        self._ancestors: dict[str, dict[str, int]] = {}
        self._check_acyclic()
        self._depth = self._depths()

    # --- container protocol ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.concepts)

    def __contains__(self, concept_id: object) -> bool:
        return concept_id in self.concepts

    def __getitem__(self, concept_id: str) -> Concept:
        try:
            return self.concepts[concept_id]
        except KeyError:
            raise KeyError(f"no concept {concept_id!r} in this taxonomy") from None

    def __iter__(self) -> Iterator[Concept]:
        return iter(self.concepts.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Taxonomy):
            return NotImplemented
        return self.concepts == other.concepts

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Taxonomy({len(self)} concepts, {len(self.edges())} is-a edges, {len(self.roots())} roots)"

    # --- structure ------------------------------------------------------------------------------------

    def roots(self) -> list[str]:
        """Ids of the concepts without parents, in taxonomy order."""
        return [i for i, c in self.concepts.items() if not c.parents]

    def children(self, concept_id: str) -> list[str]:
        """Direct children of ``concept_id``, in taxonomy order."""
        self[concept_id]
        return list(self._children[concept_id])

    def parents(self, concept_id: str) -> list[str]:
        """Direct parents of ``concept_id``, in the concept's order."""
        return list(self[concept_id].parents)

    def ancestors(self, concept_id: str) -> dict[str, int]:
        """Every ancestor of ``concept_id`` -> the fewest is-a hops to it (1 = parent); itself excluded."""
        self[concept_id]
        if concept_id not in self._ancestors:
            self._ancestors[concept_id] = hop_distances(concept_id, lambda i: self.concepts[i].parents)
        return dict(self._ancestors[concept_id])

    def descendants(self, concept_id: str) -> dict[str, int]:
        """Every descendant of ``concept_id`` -> the fewest hops to it (1 = child); itself excluded."""
        self[concept_id]
        return hop_distances(concept_id, self._children.__getitem__)

    def depth(self, concept_id: str) -> int:
        """The fewest hops from ``concept_id`` up to a root (0 for a root)."""
        self[concept_id]
        return self._depth[concept_id]

    def edges(self) -> list[tuple[str, str]]:
        """Every direct is-a edge as ``(child, parent)``, in taxonomy order."""
        return [(i, p) for i, c in self.concepts.items() for p in c.parents]

    def where(self, concept_id: str) -> str:
        """Where ``concept_id`` was read (``file:line``), for messages; ``concept <id>`` when unknown."""
        return _where(self._source, concept_id)

    def restrict(self, ids: Iterable[str], *, reattach: bool = True) -> Taxonomy:
        """The sub-taxonomy on ``ids`` (taxonomy order kept).

        A kept concept whose parent is dropped is, with ``reattach=True``, attached to that parent's nearest
        kept ancestors instead (so the kept concepts keep every ancestor they had among the kept ones); a
        re-attached parent that is already an ancestor of another of the concept's parents is left out, so
        no redundant edge shortens hop counts. ``reattach=False`` just drops the parents outside ``ids``.
        """
        keep = set(ids)
        unknown = sorted(keep - self.concepts.keys())
        if unknown:
            raise KeyError(
                f"restrict: {len(unknown)} ids are not concepts of this taxonomy, e.g. {unknown[0]!r}"
            )
        out = []
        for concept_id, concept in self.concepts.items():
            if concept_id not in keep:
                continue
            if all(p in keep for p in concept.parents):
                out.append(concept)
                continue
            if reattach:
                parents = self._nearest_kept(concept.parents, keep)
            else:
                parents = tuple(p for p in concept.parents if p in keep)
            out.append(_replace_parents(concept, parents))
        return Taxonomy(out, source={i: s for i, s in self._source.items() if i in keep})

    # --- internals ------------------------------------------------------------------------------------

    def _nearest_kept(self, parents: Iterable[str], keep: set[str]) -> tuple[str, ...]:
        """The kept concepts nearest above ``parents`` (a kept parent itself, else its nearest kept
        ancestors), without any that is an ancestor of another."""
        found: list[str] = []
        queue = deque(parents)
        seen: set[str] = set()
        while queue:
            node = queue.popleft()
            if node in seen:
                continue
            seen.add(node)
            if node in keep:
                found.append(node)
            else:
                queue.extend(self.concepts[node].parents)
        redundant = {a for f in found for a in self.ancestors(f)}
        return tuple(f for f in found if f not in redundant)

    def _check_acyclic(self) -> None:
        """Raise :class:`TaxonomyError` naming a cycle ``a -> b -> ... -> a`` (child -> parent) if one exists."""
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        for start in self.concepts:
            if start in state:
                continue
            path: list[str] = []
            stack: list[tuple[str, Iterator[str]]] = [(start, iter(self.concepts[start].parents))]
            state[start] = 1
            path.append(start)
            while stack:
                node, parents = stack[-1]
                parent = next(parents, None)
                if parent is None:
                    stack.pop()
                    path.pop()
                    state[node] = 2
                elif state.get(parent) == 1:
                    cycle = [*path[path.index(parent) :], parent]
                    raise TaxonomyError(f"{_where(self._source, parent)}: is-a cycle {' -> '.join(cycle)}")
                elif parent not in state:
                    state[parent] = 1
                    path.append(parent)
                    stack.append((parent, iter(self.concepts[parent].parents)))

    def _depths(self) -> dict[str, int]:
        """Fewest hops to a root for every concept (breadth-first from all roots at once)."""
        depth = {r: 0 for r in self.roots()}
        queue = deque(depth)
        while queue:
            node = queue.popleft()
            for child in self._children[node]:
                if child not in depth:
                    depth[child] = depth[node] + 1
                    queue.append(child)
        return depth


def hop_distances(start: Hashable, step: Callable[[Any], Iterable[Any]], max_hops: int | None = None) -> dict:
    """``{node: fewest hops}`` reachable from ``start`` through ``step(node) -> neighbours`` within ``max_hops``
    (default: any number), ``start`` excluded. Breadth first, so each node gets its fewest hops."""
    hops: dict = {}
    queue = deque((n, 1) for n in step(start))
    while queue:
        node, h = queue.popleft()
        if node in hops or node == start or (max_hops is not None and h > max_hops):
            continue
        hops[node] = h
        queue.extend((n, h + 1) for n in step(node) if n not in hops)
    return hops


def _replace_parents(concept: Concept, parents: tuple[str, ...]) -> Concept:
    return Concept(concept.id, concept.name, concept.definition, concept.synonyms, parents)
