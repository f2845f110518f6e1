"""The hierarchy objective: is-a edges of a taxonomy, trained alongside InfoNCE (multi-task).

The taxonomy is ``hierarchy_args.taxonomy_path`` in any format of :mod:`lorentz_rag.data.taxonomy` (the
``train.jsonl.gz`` that ``lorentz-rag taxonomy build`` writes), or a WordNet ``nouns.jsonl(.gz)``
(``wordnet_path``, default the bundled one), of which only its **train-split** synsets are read (held-out
synsets never appear). Each step samples ``edges_per_step`` (child, ancestor) pairs from the transitive
closure, plus one negative per edge: a random concept that is not an ancestor of the child, or a *sibling*
of the ancestor (a child of one of its parents; a hard negative, close in the tree but not above the
child). A child with no such concept (one below every other concept of the edges, e.g. the deepest of a
chain) is not sampled; a taxonomy where that leaves nothing is refused when it is loaded.
Texts are the concepts' definitions (their names when they have none), embedded as documents. With ``d`` the model's own distance (geodesic for hyperbolic models, ``|y - y'|`` for the
Euclidean-distance twin, ``1 - cos`` for the cosine twin, :func:`lorentz_rag.geometry.similarity.distance_rowwise`)
and ``r`` its radius (``d(o, x)`` or ``|y|``, :meth:`lorentz_rag.models.base.EmbeddingModel.radius`):

- clustering triplet (as in HiT): ``relu(margin + d(child, ancestor) - d(child, negative))``;
- centripetal hinge: ``relu(centripetal_margin + r(ancestor) - r(child))`` (general texts nearer the centre).

``loss = weight * triplet + centripetal_weight * centripetal`` is added to the contrastive loss.

``variant="cone"`` (an ablation) replaces the triplet by entailment cones (Ganea et al. 2018; MERU for the
Lorentz model): each ancestor ``a`` owns a cone of half-aperture ``psi(a)`` around its outward radial
direction, ``psi(a) = asin(min(1, 2K / (sqrt(c) |a_s|)))`` on the hyperboloid and ``asin(min(1, K / |a|))``
in Euclidean space; with ``xi(a, y)`` the angle at ``a`` between that direction and the geodesic (segment)
to ``y``, the loss is ``relu(xi(a, child) - psi(a)) + relu(psi(a) - xi(a, negative))``: children inside,
negatives outside.

Sampling is a pure function of (seed, rank, step, micro-batch), so an interrupted and resumed run samples
the same edges as an uninterrupted one, with no state to checkpoint.
"""

from __future__ import annotations

import functools
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lorentz_rag.data.bundled import wordnet_nouns_path
from lorentz_rag.data.taxonomy import Taxonomy, read_training_taxonomy
from lorentz_rag.geometry import similarity as similarity_fns

__all__ = [
    "HierarchyLoss",
    "TaxonomyHierarchy",
    "WordNetHierarchy",
    "cone_exterior_angle",
    "cone_half_aperture",
    "hierarchy_triplets",
]

_EPS = 1e-6
#: Rejected draws per pool member before a random negative is drawn from the explicit list of eligible ones.
_MAX_REJECTIONS = 64


def cone_half_aperture(a: Tensor, kind: str, c: Tensor | float | None, k: float) -> Tensor:
    """Half-aperture ``psi(a)`` ``[n]`` of the entailment cone at ``a: [n, D]`` (points, time first, when
    ``kind`` is hyperbolic; vectors otherwise): wide near the origin, narrow far from it."""
    if kind in similarity_fns.HYPERBOLIC_KINDS:
        norm = a[..., 1:].norm(dim=-1) * torch.as_tensor(c, dtype=a.dtype).sqrt()
        ratio = 2.0 * k / norm.clamp_min(_EPS)
    else:
        ratio = k / a.norm(dim=-1).clamp_min(_EPS)
    return torch.asin(ratio.clamp(max=1.0 - _EPS))


def cone_exterior_angle(a: Tensor, y: Tensor, kind: str, c: Tensor | float | None) -> Tensor:
    """``xi(a, y)`` ``[n]``: the angle at ``a`` between the outward radial direction and the way to ``y``
    (0 when ``y`` lies further out on ``a``'s ray, pi when it lies towards the origin).

    Hyperboloid, with ``l = <a, y>_L``: ``cos xi = (y0 + c l a0) / (|a_s| sqrt((c l)^2 - 1))``.
    Euclidean: ``cos xi = (|y|^2 - |a|^2 - |y - a|^2) / (2 |a| |y - a|)``.
    """
    if kind in similarity_fns.HYPERBOLIC_KINDS:
        cc = torch.as_tensor(c, dtype=a.dtype)
        cl = cc * (-(a[..., 0] * y[..., 0]) + (a[..., 1:] * y[..., 1:]).sum(-1))
        numer = y[..., 0] + cl * a[..., 0]
        denom = a[..., 1:].norm(dim=-1) * (cl.pow(2) - 1).clamp_min(_EPS).sqrt()
    else:
        diff = y - a
        numer = y.pow(2).sum(-1) - a.pow(2).sum(-1) - diff.pow(2).sum(-1)
        denom = 2.0 * a.norm(dim=-1) * diff.norm(dim=-1)
    return torch.acos((numer / denom.clamp_min(_EPS)).clamp(-1.0 + _EPS, 1.0 - _EPS))


@dataclass(frozen=True)
class TaxonomyHierarchy:
    """Concepts of a training taxonomy and their closure: ``texts[i]`` (definition, else name),
    ``parents[i]`` (direct parents), ``edges`` (child, ancestor, hops) over the chosen children, and
    ``ancestors[i]`` (a frozenset) for every chosen child."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    parents: tuple[tuple[int, ...], ...]
    children: tuple[tuple[int, ...], ...]
    edges: tuple[tuple[int, int, int], ...]
    direct_edges: tuple[tuple[int, int, int], ...]
    ancestors: dict[int, frozenset[int]]
    pool: tuple[int, ...]

    @classmethod
    @functools.lru_cache(maxsize=4)
    def load(
        cls, path: str | None = None, max_children: int | None = None, pool_seed: int = 0
    ) -> TaxonomyHierarchy:
        """Read a taxonomy in any format (:func:`lorentz_rag.data.taxonomy.read_training_taxonomy`; default:
        the bundled ``wordnet/nouns.jsonl.gz``, of which only the train split is read) and build the
        hierarchy with :meth:`from_taxonomy`."""
        source = path or wordnet_nouns_path()
        return cls.from_taxonomy(read_training_taxonomy(source), max_children, pool_seed, name=str(source))

    @classmethod
    def from_taxonomy(
        cls,
        taxonomy: Taxonomy,
        max_children: int | None = None,
        pool_seed: int = 0,
        *,
        name: str | None = None,
    ) -> TaxonomyHierarchy:
        """The hierarchy of every concept of ``taxonomy`` (pass a split's ``train`` taxonomy: every concept
        given here can be sampled). ``max_children``: take the closure of a seeded sample of that many
        concepts with parents (``None``: all of them), which bounds how many distinct texts a run embeds.
        ``name`` (the taxonomy's file) is what error messages call it.

        A ``ValueError`` when there is nothing to sample: no is-a edges, or no child with a negative (only one
        concept has parents, so every concept of the edges is it or one of its ancestors)."""
        if max_children is not None and max_children < 1:
            raise ValueError(f"hierarchy_args.max_children must be >= 1 (or null: all), got {max_children}")
        concepts = list(taxonomy)
        index = {c.id: i for i, c in enumerate(concepts)}
        parents = tuple(tuple(index[p] for p in c.parents) for c in concepts)
        children: list[list[int]] = [[] for _ in concepts]
        for child, ps in enumerate(parents):
            for p in ps:
                children[p].append(child)
        chosen = [i for i in range(len(concepts)) if parents[i]]
        what = name or repr(taxonomy)
        if not chosen:
            raise ValueError(
                f"{what}: the hierarchy taxonomy has no is-a edges to train on ({len(concepts)} concepts, all "
                "roots); use a taxonomy with parents, or turn the hierarchy objective off "
                "(hierarchy_args.weight=0, hierarchy_args.centripetal_weight=0)"
            )
        sampled = max_children is not None and max_children < len(chosen)
        if sampled:
            chosen = sorted(random.Random(f"hierarchy-pool-{pool_seed}").sample(chosen, max_children))
        edges: list[tuple[int, int, int]] = []
        ancestors: dict[int, frozenset[int]] = {}
        for child in chosen:
            hops = _ancestor_hops(child, parents)
            ancestors[child] = frozenset(hops)
            edges.extend((child, a, h) for a, h in sorted(hops.items()))
        pool = sorted({i for e in edges for i in e[:2]})
        if not any(_has_negative(len(pool), a) for a in ancestors.values()):
            # Two children cannot each have the other above them, so there is just one chosen child.
            raise ValueError(
                f"{what}: the hierarchy objective has no negative to sample: only {concepts[chosen[0]].id!r} "
                + ("of the hierarchy_args.max_children sampled concepts " if sampled else "")
                + "has parents, and a negative must be neither it nor one of its ancestors; use a taxonomy in "
                "which more concepts have parents"
                + (", or a larger hierarchy_args.max_children" if sampled else "")
                + ", or turn the hierarchy objective off (hierarchy_args.weight=0, "
                "hierarchy_args.centripetal_weight=0)"
            )
        return cls(
            ids=tuple(c.id for c in concepts),
            texts=tuple(c.text for c in concepts),
            parents=parents,
            children=tuple(tuple(c) for c in children),
            edges=tuple(edges),
            direct_edges=tuple(e for e in edges if e[2] == 1),
            ancestors=ancestors,
            pool=tuple(pool),
        )

    def sample(
        self, rng: random.Random, n: int, *, direct_fraction: float, sibling_fraction: float
    ) -> list[tuple[int, int, int]]:
        """``n`` (child, ancestor, negative) index triples: a direct hypernym edge with probability
        ``direct_fraction``, else any closure edge; a sibling-of-ancestor negative with probability
        ``sibling_fraction`` (when one exists), else a random synset of the pool; never an ancestor of the
        child or the child itself. Edges whose child has no such negative in the pool (a child below every
        other concept of the pool, e.g. the deepest of a chain) are never drawn, so every draw ends."""
        direct_edges, edges = self._sampled_edges
        out = []
        for _ in range(n):
            source = direct_edges if rng.random() < direct_fraction else edges
            child, ancestor, _ = source[rng.randrange(len(source))]
            excluded = self.ancestors[child] | {child}
            negative = None
            if rng.random() < sibling_fraction:
                siblings = [s for g in self.parents[ancestor] for s in self.children[g] if s not in excluded]
                if siblings:
                    negative = siblings[rng.randrange(len(siblings))]
            if negative is None:
                negative = self._random_negative(rng, excluded)
            out.append((child, ancestor, negative))
        return out

    @functools.cached_property
    def _sampled_edges(self) -> tuple[tuple[tuple[int, int, int], ...], tuple[tuple[int, int, int], ...]]:
        """``(direct_edges, edges)`` without the edges of children that have no negative in the pool: a child
        below every other concept of the pool. Usually none, and then the draws are the same as ever."""
        if all(_has_negative(len(self.pool), a) for a in self.ancestors.values()):
            return self.direct_edges, self.edges
        keep = {c for c, a in self.ancestors.items() if _has_negative(len(self.pool), a)}
        return (
            tuple(e for e in self.direct_edges if e[0] in keep),
            tuple(e for e in self.edges if e[0] in keep),
        )

    def _random_negative(self, rng: random.Random, excluded: frozenset[int]) -> int:
        """A uniform draw from the pool outside ``excluded`` (at least one must be, see
        :attr:`_sampled_edges`): rejection sampling, bounded so that it ends by construction; past the bound
        (at least one in ``len(pool)`` draws succeeds, so in practice never) a draw from the explicit list."""
        for _ in range(_MAX_REJECTIONS * len(self.pool)):
            negative = self.pool[rng.randrange(len(self.pool))]
            if negative not in excluded:
                return negative
        eligible = [i for i in self.pool if i not in excluded]
        return eligible[rng.randrange(len(eligible))]


#: The name of :class:`TaxonomyHierarchy` when it read only WordNet (kept: configs and code use it).
WordNetHierarchy = TaxonomyHierarchy


def _has_negative(pool_size: int, ancestors: frozenset[int]) -> bool:
    """Whether a child with these ``ancestors`` has a negative in a pool of ``pool_size`` concepts (the pool
    holds the child and every ancestor of it, so any further concept is one)."""
    return pool_size > len(ancestors) + 1


def _ancestor_hops(child: int, parents: Sequence[Sequence[int]]) -> dict[int, int]:
    """``{ancestor: shortest number of is-a hops}`` of ``child`` (breadth-first, itself excluded)."""
    hops: dict[int, int] = {}
    queue = deque((p, 1) for p in parents[child])
    while queue:
        node, h = queue.popleft()
        if node in hops:
            continue
        hops[node] = h
        queue.extend((p, h + 1) for p in parents[node] if p not in hops)
    return hops


def hierarchy_triplets(
    hierarchy: TaxonomyHierarchy,
    n: int,
    *,
    seed: int,
    rank: int,
    step: int,
    micro: int,
    direct_fraction: float,
    sibling_fraction: float,
) -> list[str]:
    """The texts of ``n`` sampled triples for one micro-batch: ``[children..., ancestors..., negatives...]``
    (``3n`` glosses), a pure function of its arguments."""
    rng = random.Random(f"hierarchy-{seed}-{rank}-{step}-{micro}")
    triples = hierarchy.sample(rng, n, direct_fraction=direct_fraction, sibling_fraction=sibling_fraction)
    return [hierarchy.texts[t[k]] for k in range(3) for t in triples]


class HierarchyLoss(nn.Module):
    """Triplet + centripetal loss on embeddings of ``[children; ancestors; negatives]`` (``[3n, D]``).

    ``forward(embeddings, radii, kind, c) -> (loss, stats)``; ``radii`` ``[3n]`` come from the model
    (:meth:`~lorentz_rag.models.base.EmbeddingModel.radius`), ``kind`` is its similarity.
    """

    def __init__(
        self,
        *,
        weight: float = 1.0,
        margin: float = 1.0,
        centripetal_weight: float = 1.0,
        centripetal_margin: float = 0.2,
        variant: str = "triplet",
        cone_k: float = 0.1,
    ) -> None:
        super().__init__()
        if variant not in ("triplet", "cone"):
            raise ValueError(f"hierarchy variant must be 'triplet' or 'cone', got {variant!r}")
        self.variant = variant
        self.cone_k = float(cone_k)
        self.weight = float(weight)
        self.margin = float(margin)
        self.centripetal_weight = float(centripetal_weight)
        self.centripetal_margin = float(centripetal_margin)

    def forward(
        self, embeddings: Tensor, radii: Tensor, kind: str, c: Tensor | float | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if embeddings.shape[0] % 3 or radii.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"expected [children; ancestors; negatives]: got {embeddings.shape[0]} embeddings and "
                f"{radii.shape[0]} radii"
            )
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            child, ancestor, negative = embeddings.float().chunk(3)
            r_child, r_ancestor, _ = radii.float().chunk(3)
            hyperbolic_c = c if kind in similarity_fns.HYPERBOLIC_KINDS else None
            if self.variant == "cone":
                psi = cone_half_aperture(ancestor, kind, hyperbolic_c, self.cone_k)
                inside = cone_exterior_angle(ancestor, child, kind, hyperbolic_c)
                outside = cone_exterior_angle(ancestor, negative, kind, hyperbolic_c)
                triplet = (torch.relu(inside - psi) + torch.relu(psi - outside)).mean()
            else:
                d_pos = similarity_fns.distance_rowwise(child, ancestor, kind, hyperbolic_c)
                d_neg = similarity_fns.distance_rowwise(child, negative, kind, hyperbolic_c)
                triplet = torch.relu(self.margin + d_pos - d_neg).mean()
            centripetal = torch.relu(self.centripetal_margin + r_ancestor - r_child).mean()
            loss = self.weight * triplet + self.centripetal_weight * centripetal
        stats = {
            "hierarchy/triplet": triplet.detach(),
            "hierarchy/centripetal": centripetal.detach(),
            "hierarchy/ancestor_inside": (r_ancestor < r_child).float().mean().detach(),
        }
        return loss, stats

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant}, weight={self.weight}, margin={self.margin}, "
            f"centripetal_weight={self.centripetal_weight}, centripetal_margin={self.centripetal_margin}"
        )


def resolve_wordnet_path(path: str | None, *, key: str = "hierarchy_args.wordnet_path") -> str | None:
    """``None`` (the bundled file) or an existing file; a clear error otherwise."""
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"{key}: no such file {path}")
    return path


def resolve_hierarchy_path(taxonomy_path: str | None, wordnet_path: str | None) -> str | None:
    """The file the hierarchy objective reads: ``taxonomy_path`` or the older ``wordnet_path`` (not both);
    ``None`` means the bundled WordNet."""
    if taxonomy_path is not None and wordnet_path is not None:
        raise ValueError("hierarchy_args: give taxonomy_path or wordnet_path, not both")
    if taxonomy_path is not None:
        return resolve_wordnet_path(taxonomy_path, key="hierarchy_args.taxonomy_path")
    return resolve_wordnet_path(wordnet_path)
