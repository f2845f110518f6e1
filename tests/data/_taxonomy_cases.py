"""A synthetic taxonomy for the taxonomy tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from lorentz_rag.data.taxonomy import Concept, Taxonomy


def random_taxonomy(n: int = 400) -> Taxonomy:
    """``n`` concepts: ``c0`` the root, concept k's parents among the earlier ones (every fifth has two),
    each with a definition and a synonym; a deterministic DAG with inner nodes at several depths."""
    concepts = [Concept("c0", "root", "the root")]
    for k in range(1, n):
        parents = (f"c{(k * 7919) % k}",) if k % 5 else (f"c{(k * 7919) % k}", f"c{k // 3}")
        concepts.append(
            Concept(f"c{k}", f"name {k}", f"definition {k}", (f"syn {k}",), tuple(dict.fromkeys(parents)))
        )
    return Taxonomy(concepts)
