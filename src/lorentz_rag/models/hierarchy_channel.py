"""The hierarchy channel H: a small network over a frozen model's embeddings that places each text at a point
of a low-dimensional space where ``broader`` / ``narrower`` are one vector search.

A two-channel model keeps its similarity channel S (the frozen model, whose rankings stay those of the
model as loaded) and adds H. H maps S's embedding ``s`` of a text (``[D]``) to

    z = W2 gelu(W1 s + b1) + b2            (hidden width ``hidden_dim``, output ``dim + 1``)
    u = z[:dim] / |z[:dim]|                 the direction
    r = max_radius * sigmoid(z[dim])        the radius, in (0, max_radius)

and then to a point at distance ``r`` from the origin in direction ``u``:

- ``geometry="lorentz"``: ``expmap0(r u)`` on the hyperboloid ``H^dim_c`` (time first, ``dim + 1`` numbers),
  whose geodesic distance to the origin is ``r``;
- ``geometry="euclidean"`` (the fair twin: same network, loss, data and steps): ``y = r u`` in ``R^dim``.

Relation scores are :mod:`lorentz_rag.geometry.relation`'s, with the channel's own radius weight ``lam``:
``broader(q, x) = -d(q, x) - lam (r(x) - r(q))`` with the geodesic distance (Lorentz) or ``|q - x|``
(Euclidean). A two-channel search mixes S's similarity with H's score per query (each standardised over the
documents, :func:`lorentz_rag.search.graph_knn.mix_scores`) with one weight per relation, saved with the
channel (``weights``); weight 0 is plain S. How H is trained: :mod:`lorentz_rag.training.hierarchy_channel`.

On disk H is a subfolder ``hierarchy_channel/`` of the model folder (``config.json`` and
``model.safetensors``), so the folder stays a valid model folder of S (a sentence-transformers export of S
ignores it) and :func:`lorentz_rag.models.load_model` restores both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from lorentz_rag.atomic_files import write_bytes, write_json
from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry import similarity as similarity_fns
from lorentz_rag.geometry.relation import mix_scores, relation_pairwise

__all__ = [
    "CHANNEL_FOLDER",
    "GEOMETRIES",
    "HierarchyChannel",
    "HierarchyChannelConfig",
    "load_hierarchy_channel",
    "two_channel_search",
]

CHANNEL_FOLDER = "hierarchy_channel"
GEOMETRIES = ("lorentz", "euclidean")
_RELATIONS = ("broader", "narrower")
_FORMAT = 1


@dataclass
class HierarchyChannelConfig:
    """H's shape and scores. ``input_dim``: S's embedding length; ``dim``: H's (16, 32, 64, ...);
    ``weights``: the mixing weight of H with S per relation (``broader``, ``narrower``), each in ``[0, 1]``;
    ``graph_weights``: H's weight against graph-kNN's mixed score where a taxonomy is at hand (the model's own,
    or one attached to an index; :mod:`lorentz_rag.search.graph_knn`), 0 for graph-kNN alone;
    ``graph_relations``: the relations for which a taxonomy at hand is used at all (the recipe keeps a relation
    out where S + H beat every graph-kNN mixture on its validation concepts; that relation then ranks by S + H
    even with a taxonomy at hand)."""

    input_dim: int
    dim: int = 32
    geometry: str = "lorentz"
    hidden_dim: int = 512
    curvature: float = 1.0
    max_radius: float = 8.0
    radius_weight: float = 0.5
    weights: dict[str, float] = field(default_factory=lambda: {"broader": 1.0, "narrower": 1.0})
    graph_weights: dict[str, float] = field(default_factory=lambda: {"broader": 0.0, "narrower": 0.0})
    graph_relations: list[str] = field(default_factory=lambda: ["broader", "narrower"])

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, want: str) -> ValueError:
            return ValueError(f"hierarchy channel: {name} must be {want}, got {value!r}")

        for name in ("input_dim", "dim", "hidden_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, value, "an integer >= 1")
        if self.geometry not in GEOMETRIES:
            raise bad("geometry", self.geometry, f"one of {list(GEOMETRIES)}")
        for name in ("curvature", "max_radius"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise bad(name, value, "a finite number > 0")
        if not isinstance(self.radius_weight, (int, float)) or not 0.0 <= float(self.radius_weight) <= 1.0:
            raise bad("radius_weight", self.radius_weight, "a number in [0, 1]")
        for name in ("weights", "graph_weights"):
            weights = getattr(self, name)
            if not isinstance(weights, Mapping) or set(weights) != set(_RELATIONS):
                raise bad(name, weights, "a mapping with exactly the keys 'broader' and 'narrower'")
            for relation, w in weights.items():
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
                    raise bad(f"{name}[{relation!r}]", w, "a number in [0, 1]")
        self.curvature = float(self.curvature)
        self.max_radius = float(self.max_radius)
        self.radius_weight = float(self.radius_weight)
        self.weights = {r: float(self.weights[r]) for r in _RELATIONS}
        self.graph_weights = {r: float(self.graph_weights[r]) for r in _RELATIONS}
        if not isinstance(self.graph_relations, (list, tuple)) or not set(self.graph_relations) <= set(
            _RELATIONS
        ):
            raise bad("graph_relations", self.graph_relations, "a list of 'broader' / 'narrower'")
        self.graph_relations = [r for r in _RELATIONS if r in self.graph_relations]

    @property
    def output_dim(self) -> int:
        """Numbers per point: ``dim + 1`` on the hyperboloid (time first), ``dim`` in ``R^dim``."""
        return self.dim + 1 if self.geometry == "lorentz" else self.dim

    @property
    def kind(self) -> str:
        """The similarity kind whose distance H's scores use: ``geodesic`` or ``euclidean``."""
        return "geodesic" if self.geometry == "lorentz" else "euclidean"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], where: str = "hierarchy channel config"
    ) -> HierarchyChannelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; expected {sorted(known)}")
        if "input_dim" not in values:
            raise ValueError(f"{where}: input_dim is missing")
        return cls(**dict(values))


class HierarchyChannel(nn.Module):
    """H: S's embeddings ``[n, input_dim]`` -> points ``[n, output_dim]`` (module docstring)."""

    def __init__(self, config: HierarchyChannelConfig) -> None:
        super().__init__()
        self.config = config
        self.net = nn.Sequential(
            nn.Linear(config.input_dim, config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.dim + 1),
        )

    def reset_parameters(self) -> None:
        """Draw fresh weights (from torch's global generator, as ``nn.Linear`` does)."""
        for module in self.net:
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    def polar(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(u [n, dim], r [n])``: unit directions and radii in ``(0, max_radius)``."""
        if features.ndim != 2 or features.shape[1] != self.config.input_dim:
            raise ValueError(
                f"hierarchy channel: expected embeddings [n, {self.config.input_dim}], got {tuple(features.shape)}"
            )
        weight = self.net[0].weight
        z = self.net(features.to(device=weight.device, dtype=weight.dtype))
        direction = z[:, :-1]
        u = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        r = self.config.max_radius * torch.sigmoid(z[:, -1])
        return u, r

    def forward(self, features: Tensor) -> Tensor:
        u, r = self.polar(features)
        v = r.unsqueeze(-1) * u
        if self.config.geometry == "lorentz":
            return lorentz.expmap0(v, self.config.curvature)
        return v

    def radius(self, points: Tensor) -> Tensor:
        """``r`` of points H produced: the geodesic distance to the origin, or the norm."""
        if self.config.geometry == "lorentz":
            return lorentz.radius(points, self.config.curvature)
        return points.norm(dim=-1)

    def relation_scores(self, queries: Tensor, candidates: Tensor, relation: str) -> Tensor:
        """``[n, m]`` scores of H's points ``queries [n, output_dim]`` against ``candidates [m, output_dim]``:
        ``broader`` / ``narrower`` (:func:`lorentz_rag.geometry.relation.relation_pairwise`, radius weight
        ``config.radius_weight``) or ``similar`` (``-d``)."""
        c = self.config.curvature if self.config.geometry == "lorentz" else None
        if relation == "similar":
            return relation_pairwise(queries, candidates, "broader", self.config.kind, c, 0.0)
        return relation_pairwise(
            queries, candidates, relation, self.config.kind, c, self.config.radius_weight
        )

    def weight(self, relation: str) -> float:
        """H's mixing weight for ``relation`` (``broader`` / ``narrower``)."""
        if relation not in _RELATIONS:
            raise ValueError(
                f"the hierarchy channel scores 'broader' and 'narrower', got relation {relation!r}"
            )
        return self.config.weights[relation]

    def graph_weight(self, relation: str) -> float:
        """H's mixing weight for ``relation`` against graph-kNN's score, where a taxonomy is at hand."""
        self.weight(relation)  # the same one-line refusal of an unknown relation
        return self.config.graph_weights[relation]

    def fingerprint(self) -> str:
        """A hash of the config and weights: two channels that score alike have the same fingerprint."""
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, model_folder: str | os.PathLike[str]) -> Path:
        """Write ``model_folder/hierarchy_channel/``: the weights, then the config, each atomically
        (:mod:`lorentz_rag.atomic_files`)."""
        folder = Path(model_folder) / CHANNEL_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_bytes(folder / "model.safetensors", save(weights))
        write_json(folder / "config.json", {"format": _FORMAT, **self.config.to_dict()}, indent=2)
        return folder


def load_hierarchy_channel(model_folder: str | os.PathLike[str]) -> HierarchyChannel | None:
    """The channel saved in ``model_folder/hierarchy_channel/``, or ``None`` if the folder has none. A config
    that does not parse, or weights that do not match it exactly, raise with the file named."""
    folder = Path(model_folder) / CHANNEL_FOLDER
    config_path = folder / "config.json"
    if not folder.exists():
        return None
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: a hierarchy channel folder without config.json")
    try:
        values = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(values, dict) or values.pop("format", None) != _FORMAT:
        raise ValueError(f"{config_path}: not a hierarchy channel config of format {_FORMAT}")
    channel = HierarchyChannel(HierarchyChannelConfig.from_dict(values, str(config_path)))
    weights_path = folder / "model.safetensors"
    if not weights_path.is_file():
        raise FileNotFoundError(f"{folder}: model.safetensors is missing")
    state = load_file(str(weights_path))
    expected = channel.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = sorted(
        k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or extra or shapes:
        raise ValueError(
            f"{weights_path}: the weights do not match {config_path} (missing {missing}, unexpected {extra}, "
            f"wrong shape {shapes})"
        )
    channel.load_state_dict(state, strict=True)
    channel.eval()
    return channel


def two_channel_search(
    channel: HierarchyChannel,
    queries: Tensor,
    documents: Tensor,
    k: int,
    relation: str,
    similarity: str,
    curvature: float | Tensor | None = None,
    *,
    block_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` by the two channels: ``(1 - w) z(S similarity) + w z(H's relation score)`` per query
    over every document, ``w = channel.weight(relation)`` (:func:`lorentz_rag.geometry.relation.mix_scores`).
    ``queries [n, D]`` and ``documents [m, D]`` are S's embeddings (``similarity`` / ``curvature``: S's); H is
    applied to them here. Returns (scores float64 ``[n, k']``, positions int64 ``[n, k']``), best first, ties to
    the earlier document, float64 throughout."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    weight = channel.weight(relation)
    q = torch.as_tensor(queries).detach()
    d = torch.as_tensor(documents).detach()
    k_eff = min(k, len(d))
    scores = torch.empty(len(q), k_eff, dtype=torch.float64)
    positions = torch.empty(len(q), k_eff, dtype=torch.int64)
    if not len(q) or not len(d):
        return scores, positions
    with torch.no_grad():
        hq, hd = channel(q.float()).double(), channel(d.float()).double()
    c = float(curvature) if curvature is not None else None
    q64, d64 = q.double(), d.double()
    for start in range(0, len(q), block_size):
        stop = start + block_size
        s = similarity_fns.pairwise(q64[start:stop], d64, similarity, c)
        h = channel.relation_scores(hq[start:stop], hd, relation)
        top = torch.sort(mix_scores(s, h, weight), dim=1, descending=True, stable=True)
        scores[start:stop] = top.values[:, :k_eff]
        positions[start:stop] = top.indices[:, :k_eff]
    return scores, positions
